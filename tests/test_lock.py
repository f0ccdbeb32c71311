"""The per-edit lock: which candidate it keeps, and what it records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import LockConfig, parse_config
from pipeline.errors import ConfigError
from pipeline.lock import candidate_scales, lock_edit, nominal_index


def run_lock(changes: np.ndarray, reached: np.ndarray, lock: LockConfig):
    """Lock a batch whose candidate k has `changes[k]` and `reached[k]`; latents carry their scale."""
    scales = candidate_scales(lock)
    visited = []

    def edit_at(scale: float) -> torch.Tensor:
        visited.append(scale)
        return torch.full((changes.shape[1], 2), scale)

    def measure(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        k = int(np.argmin(np.abs(scales - float(images[0, 0]))))
        return changes[k], reached[k]

    return lock_edit(edit_at, lambda latents: latents * 1.0, measure, lock), visited


def test_candidates_span_the_scales_and_include_the_edit_itself() -> None:
    lock = LockConfig(candidates=5, scales=(0.5, 1.5))
    np.testing.assert_allclose(candidate_scales(lock), [0.5, 0.75, 1.0, 1.25, 1.5])
    assert nominal_index(candidate_scales(lock)) == 2
    assert candidate_scales(LockConfig(candidates=1)).tolist() == [1.0]
    assert LockConfig().candidates == 5  # on by default: the best method of docs/expression-lock.md


def test_the_least_change_among_candidates_that_reach_the_attribute_is_kept() -> None:
    lock = LockConfig(candidates=3, scales=(0.5, 1.5), max_change=0.1)
    changes = np.array([[0.01, 0.30, 0.20, 0.05], [0.05, 0.20, 0.30, 0.06], [0.09, 0.10, 0.40, 0.07]])
    reached = np.array([[False, True, False, False], [True, True, False, False], [True, True, False, False]])

    locked, visited = run_lock(changes, reached, lock)

    assert visited == [0.5, 1.0, 1.5]
    # Source 0: the weakest candidate changes least but does not reach; the middle one does.
    # Source 1: the strongest reaches with the least change. Sources 2, 3: none reaches, so the
    # edit at its own strength (scale 1) is kept, even where another candidate changed less.
    assert locked.chosen.tolist() == [1, 2, 1, 1]
    assert locked.scales.tolist() == [1.0, 1.5, 1.0, 1.0]
    np.testing.assert_allclose(locked.change, [0.05, 0.10, 0.30, 0.06])
    assert locked.locked.tolist() == [True, True, False, True]
    assert torch.equal(locked.latents[:, 0], torch.tensor([1.0, 1.5, 1.0, 1.0]))
    assert torch.equal(locked.images, locked.latents)


def test_one_candidate_is_the_plain_edit() -> None:
    changes, reached = np.array([[0.2, 0.01]]), np.array([[False, True]])
    locked, visited = run_lock(changes, reached, LockConfig(candidates=1, max_change=0.05))
    assert visited == [1.0] and locked.chosen.tolist() == [0, 0]
    assert locked.locked.tolist() == [False, True]


def test_bad_lock_settings_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"edits.lock.scales: expected 0 < low <= 1 <= high"):
        parse_config({"edits": {"lock": {"candidates": 3, "scales": [1.2, 2.0]}}})
    with pytest.raises(ConfigError, match=r"edits.lock.candidates"):
        parse_config({"edits": {"lock": {"candidates": 0}}})


def test_the_lock_and_unused_preservation_settings_leave_the_run_id_alone() -> None:
    def run_id(edits: dict) -> str:
        return parse_config({"edits": edits}).run_id

    plain = {"attributes": ["age"], "methods": ["editor_hfld"], "lock": {"candidates": 1}}
    assert run_id(plain) == run_id({**plain, "preserve": [{"emotion": 1.0}], "lock": {"candidates": 1, "max_change": 0.2}})
    # Without attributes nothing is edited: neither the lock nor the methods' settings matter.
    assert run_id({"lock": {"candidates": 3}, "preserve": [{"emotion": 2.0}]}) == run_id({"lock": {"candidates": 1}})
    locked = {**plain, "lock": {"candidates": 3}}
    preserving = {**plain, "methods": ["editor_preserve"]}
    assert len({run_id(plain), run_id(locked), run_id(preserving)}) == 3
