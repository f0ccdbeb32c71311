"""Batches that fit the device: a batch that runs out of memory is halved and run again, and
the run's rows are those of a run made with the smaller batch from the start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.stages.generate
from data_schemas import Col
from pipeline.batching import fitting_batch_size, forget_batch_sizes, halve_batch_size
from pipeline.config import parse_config
from pipeline.errors import RunError
from pipeline.generators.dcgan import load_dcgan
from pipeline.stages.generate import generate_shard
from pipeline.storage.layout import prepare_run
from pipeline.storage.manifest import read_manifest

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_sizes() -> Iterator[None]:
    forget_batch_sizes()
    yield
    forget_batch_sizes()


def test_auto_batch_size_depends_on_the_device() -> None:
    auto = parse_config({})
    assert (auto.batch_size, auto.batch_size_on("cpu"), auto.batch_size_on("cuda")) == ("auto", 32, 128)
    assert parse_config({"batch_size": 8}).batch_size_on("cuda") == 8
    for bad in (0, 5000, "big", 2.5, True):
        with pytest.raises(Exception, match=r"batch_size: expected a whole number from 1 to 4096, or 'auto' \(got "):
            parse_config({"batch_size": bad})


def test_halving_is_remembered_per_device_and_a_single_face_is_refused() -> None:
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    assert fitting_batch_size(CPU, 32) == 32
    halve_batch_size(CPU, 32, error)
    assert fitting_batch_size(CPU, 32) == 16 and fitting_batch_size(CPU, 8) == 8
    assert fitting_batch_size(torch.device("meta"), 32) == 32
    with pytest.raises(RunError, match=r"^cpu: out of memory with a batch of one face \(CUDA out of memory. Tried to allocate 2.00 GiB\); free"):
        halve_batch_size(CPU, 1, error)


@pytest.mark.slow
def test_a_batch_out_of_memory_mid_edit_is_run_again_in_halves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The edit of a 4-face batch fails after its sources' PNGs were queued; the shard goes on
    in batches of 2 and its rows equal those of a run with batches of 2 from the start."""
    from test_edit_run import train_models

    def config(batch_size: int):  # noqa: ANN202
        return parse_config({
            "sources": {"count": 6, "first_seed": 500, "shard_size": 6},
            "discovery": {"samples": 120, "shard_size": 120},
            "training": {"classifier_epochs": 2},
            "edits": {"directory": str(tmp_path / "models"), "attributes": ["hair_lightness"], "strengths": [4.0],
                      "methods": ["linear"], "lock": {"candidates": 1}},
            "scoring": {"attributes": False},
            "device": "cpu",
            "batch_size": batch_size,
        })  # fmt: skip

    train_models(config(2), load_dcgan())
    halves = prepare_run(config(2), tmp_path / "halves")
    generate_shard(config(2), halves, 0)

    make_edit = pipeline.stages.generate.make_edit
    attempts: list[int] = []

    def short_of_memory(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        attempts.append(len(args[5]))  # the batch's latents
        if len(args[5]) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return make_edit(*args, **kwargs)

    monkeypatch.setattr(pipeline.stages.generate, "make_edit", short_of_memory)
    retried = prepare_run(config(4), tmp_path / "retried")
    generate_shard(config(4), retried, 0)
    assert attempts == [4, 2, 2, 2]  # halved once, then remembered
    frames = [read_manifest(run).to_pandas().sort_values(Col.SEED).reset_index(drop=True) for run in (halves, retried)]
    assert frames[1][Col.SEED].tolist() == list(range(500, 506))
    for column in (Col.IMAGE_SOURCE_SHA256, Col.IMAGE_EDIT_SHA256, Col.ATTRIBUTE_SCORE_EDIT, Col.EMOTION_JS):
        assert frames[1][column].tolist() == frames[0][column].tolist(), column
    np.testing.assert_array_equal(np.stack(frames[1][Col.LATENT_EDIT]), np.stack(frames[0][Col.LATENT_EDIT]))
