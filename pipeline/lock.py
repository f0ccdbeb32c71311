"""The per-edit lock: of several candidates for one edit, keep the one that changes the expression least.

An editor's mean behaviour does not promise anything about one face. The lock renders K
candidates per (source, edit), at strengths spread along the editor's path (multiples of the
edit's strength between `edits.lock.scales`), measures each with the in-pipeline scorers, and
keeps, among the candidates that reach the attribute, the one whose emotion distribution moved
least (Jensen-Shannon divergence of the ensemble's distributions). When no candidate reaches the
attribute the lock cannot help: the candidate at the edit's own strength is kept. Either way
the edit is kept and flagged (`expression_locked`: the kept change is at most `max_change`),
never dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import LockConfig

# scale -> edited latents; latents -> rendered images; images -> (change (N,), reached (N,))
EditAt = Callable[[float], torch.Tensor]
Render = Callable[[torch.Tensor], torch.Tensor]
Measure = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]


def candidate_scales(lock: LockConfig) -> np.ndarray:
    """The K multiples of the edit's strength the candidates use, ascending."""
    low, high = lock.scales
    if lock.candidates == 1:
        return np.ones(1)
    return np.linspace(low, high, lock.candidates)


def nominal_index(scales: np.ndarray) -> int:
    """The candidate closest to the edit's own strength (scale 1)."""
    return int(np.abs(scales - 1.0).argmin())


@dataclass(frozen=True)
class LockedEdit:
    """The kept candidate of each source in a batch."""

    latents: torch.Tensor
    images: torch.Tensor
    chosen: np.ndarray  # (N,) index into the candidate scales
    scales: np.ndarray  # (N,) the kept candidate's multiple of the strength
    change: np.ndarray  # (N,) its emotion change as the lock measured it
    locked: np.ndarray  # (N,) change <= max_change


def lock_edit(edit_at: EditAt, render: Render, measure: Measure, lock: LockConfig) -> LockedEdit:
    """Render every candidate of a batch and keep, per source, the one the lock prefers.

    Candidates are visited one at a time and only the best so far is held, so memory does not
    grow with K.
    """
    scales = candidate_scales(lock)
    nominal = nominal_index(scales)
    best: dict[str, torch.Tensor | np.ndarray] = {}
    fallback: dict[str, torch.Tensor | np.ndarray] = {}
    for index, scale in enumerate(scales):
        latents = edit_at(float(scale))
        with torch.no_grad():
            images = render(latents)
        change, reached = (np.asarray(a) for a in measure(images))
        count = len(change)
        candidate = {"latents": latents, "images": images, "change": change, "chosen": np.full(count, index)}
        if index == nominal:
            fallback = candidate
        if not best:
            best = {**candidate, "change": np.where(reached, change, np.inf)}
            continue
        better = reached & (change < best["change"])
        best = _take(best, {**candidate, "change": np.where(reached, change, np.inf)}, better)
    none_reached = ~np.isfinite(best["change"])
    kept = _take(best, fallback, none_reached)
    chosen = np.asarray(kept["chosen"], dtype=np.int64)
    change = np.asarray(kept["change"], dtype=np.float64)
    return LockedEdit(
        latents=kept["latents"],
        images=kept["images"],
        chosen=chosen,
        scales=scales[chosen],
        change=change,
        locked=change <= lock.max_change,
    )


def _take(current: dict, other: dict, mask: np.ndarray) -> dict:
    """Per sample, `other`'s values where `mask` holds, else `current`'s."""
    rows = torch.from_numpy(mask)
    merged = {}
    for name, value in current.items():
        if isinstance(value, torch.Tensor):
            where = rows.to(value.device).view(-1, *([1] * (value.ndim - 1)))
            merged[name] = torch.where(where, other[name], value)
        else:
            merged[name] = np.where(mask, other[name], value)
    return merged
