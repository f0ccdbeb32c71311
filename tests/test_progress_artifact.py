"""The progress artifact: sent at most once per interval, and always when the work is done."""

from __future__ import annotations

import pytest

import flows.artifacts
from flows.artifacts import Progress


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Progress values sent to the API, in order (the artifact's creation sends 0)."""
    values: list[float] = []
    clock = iter(range(0, 1000, 1))  # one second passes at each reading
    monkeypatch.setattr(flows.artifacts.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(flows.artifacts, "create_progress_artifact", lambda progress, **_: values.append(progress) or "id")
    monkeypatch.setattr(flows.artifacts, "update_progress_artifact", lambda _id, progress, **_: values.append(progress))
    return values


def test_updates_wait_for_the_interval_but_the_last_is_always_sent(sent: list[float]) -> None:
    progress = Progress("key", 10, "shards", interval=3.0)
    for _ in range(10):
        progress.advance()
    # Readings at 1, 2, ... seconds after creation at 0: an update every third second, then 100.
    assert sent == [0.0, 30.0, 60.0, 90.0, 100.0]


def test_every_unit_is_sent_when_units_are_slower_than_the_interval(sent: list[float]) -> None:
    progress = Progress("key", 4, "shards", interval=0.5)
    for _ in range(4):
        progress.advance()
    assert sent == [0.0, 25.0, 50.0, 75.0, 100.0]
