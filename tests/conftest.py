"""Shared test set-up: the asset cache, an isolated Prefect home, an offline guard, runs to read, small helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from network_guard import refuse_network

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("EXPRLOCK_HOME", str(REPO / ".exprlock"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session", autouse=True)
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each test session gets its own Prefect home (database, settings), never the user's."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    return home


@pytest.fixture
def one_thread() -> Iterator[None]:
    """For tests of tiny tensors: on a shared CPU, thread hand-offs cost more than the arithmetic."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets refused: a test that tries to download fails with `network_guard.NetworkAttempt`."""
    refuse_network(monkeypatch)


# Module scope: each test module builds its own runs, since some tests add files to them. The
# builders are imported inside the fixtures so that sessions without them skip `pipeline.stages.generate`.
@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A run of 40 sources x 3 edits with drawn scores, and its rows."""
    from manifest_fixtures import make_scored_run

    run_dir = tmp_path_factory.mktemp("scored")
    return run_dir, make_scored_run(run_dir)


@pytest.fixture(scope="module")
def unscored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real demo run of 8 sources, neither edited nor scored."""
    from manifest_fixtures import make_source_run

    return make_source_run(tmp_path_factory.mktemp("unscored"))
