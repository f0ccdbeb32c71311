"""One thread budget reaches torch, OpenCV and onnxruntime."""

from __future__ import annotations

import cv2
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.threads import ENV_VAR, available_cores, configure_threads, session_options, thread_budget


@pytest.fixture
def restore_pools() -> None:
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


def test_the_budget_is_exprlock_threads_then_omp_then_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_budget() == available_cores() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # what Dask's nanny sets in each worker
    assert thread_budget() == 3
    monkeypatch.setenv(ENV_VAR, "1")
    assert thread_budget() == 1


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_budget_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(ConfigError, match=rf"{ENV_VAR}='{value}': expected a positive number of threads"):
        thread_budget()


def test_every_runtime_gets_the_budget(monkeypatch: pytest.MonkeyPatch, restore_pools: None) -> None:
    monkeypatch.setenv(ENV_VAR, "1")
    assert configure_threads() == 1
    assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    options = session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
