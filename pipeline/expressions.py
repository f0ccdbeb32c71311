"""Target expressions: sources steered to a requested expression, accepted only when labelled so.

A run may ask for faces that show given expressions in given shares (`sources.expressions`).
Each source slot gets a target (`plan_targets`: exact counts by largest remainder, interleaved
so every shard holds a mix). A slot's candidates are the seeds `first_seed + slot`,
`first_seed + slot + count`, `first_seed + slot + 2 * count`, ... (`candidate_seed`), so the
first candidate is the seed the slot would have without targets and no two slots ever share a
seed. Each candidate is moved along the discovered direction of its target emotion, one
`sources.expression_step` at a time for up to `sources.expression_steps` steps, and the first
image that the face detector still finds a face in and that the emotion ensemble labels with
the target, with its models agreeing and confidence at least `sources.min_confidence`, is
accepted. (Far along some directions the generator stops drawing faces, and an emotion model
asked about a non-face still answers.) A candidate that never gets there is rejected and
the slot's next seed is tried, up to `sources.max_candidates`; a slot that runs out fails its
shard with a message naming the expression, rather than writing a face whose label is not the
one asked for. Everything depends on the slot alone, so a shard re-made after a crash is
identical and the run keeps its class counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data_schemas import EMOTION_LABELS
from pipeline.config import RunConfig
from pipeline.editing.directions import Direction
from pipeline.errors import ConfigError
from pipeline.generators.base import FaceGenerator
from pipeline.scoring import emotion_agreement, ensemble_probs


def target_counts(config: RunConfig) -> dict[str, int]:
    """How many sources of each requested expression: shares times count, largest remainder."""
    shares = config.sources.expressions
    total = sum(shares.values())
    exact = {label: config.sources.count * share / total for label, share in shares.items()}
    counts = {label: int(np.floor(value)) for label, value in exact.items()}
    by_remainder = sorted(shares, key=lambda label: (-(exact[label] - counts[label]), EMOTION_LABELS.index(label)))
    for label in by_remainder[: config.sources.count - sum(counts.values())]:
        counts[label] += 1
    return counts


def plan_targets(config: RunConfig) -> list[str]:
    """The target expression of every source slot, in slot order; empty without targets.

    The j-th face of a class sits at position (j + 1/2) / count of the run, so classes are
    spread evenly over the slots (and the shards) instead of coming in blocks.
    """
    if not config.sources.expressions:
        return []
    positions = [
        ((j + 0.5) / n, EMOTION_LABELS.index(label), label)
        for label, n in target_counts(config).items()
        for j in range(n)
    ]
    return [label for _, _, label in sorted(positions)]


def candidate_seed(config: RunConfig, slot: int, attempt: int) -> int:
    """The seed of a slot's `attempt`-th candidate (0: the slot's own seed)."""
    return config.sources.first_seed + slot + attempt * config.sources.count


@dataclass(frozen=True)
class SteeredSources:
    """The accepted face of each slot of a batch (slots that ran out of candidates left out)."""

    slots: list[int]
    seeds: list[int]  # the accepted candidate's seed
    latents: torch.Tensor  # its latent after steering
    targets: list[str]
    steps: list[int]  # steps along the target's direction (0: the face showed it already)
    rejected: list[int]  # candidates tried and rejected before it
    failed: list[int]  # slots with no accepted candidate (only when not `strict`)


ExpressionScorer = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]
"""Images `(N, 3, H, W)` in [-1, 1] to each ensemble model's probabilities `(N, M, 7)` and
whether a face is found in each `(N,)` (`FaceScorer.expressions`)."""


def accepted_step(model_probs: np.ndarray, face_found: np.ndarray, target: str, min_confidence: float) -> int | None:
    """The first step (row of `model_probs`, `(steps + 1, M, 7)`) that shows a face labelled
    `target` with agreeing models and confidence at least `min_confidence`; None when none."""
    probs = ensemble_probs(model_probs)
    index = EMOTION_LABELS.index(target)
    ok = face_found & (probs.argmax(axis=1) == index) & emotion_agreement(model_probs) & (probs[:, index] >= min_confidence)
    hits = np.flatnonzero(ok)
    return int(hits[0]) if len(hits) else None


def steer_sources(
    config: RunConfig,
    generator: FaceGenerator,
    expressions: ExpressionScorer,
    directions: dict[str, Direction],
    slots: Sequence[int],
    targets: Sequence[str],
    *,
    strict: bool = True,
) -> SteeredSources:
    """Accepted faces for `slots` (with their `targets`), trying candidates in order.

    With `strict`, a slot that runs out of candidates fails the call with a message naming the
    expression; otherwise it is listed in `failed` (reachability probes use that).
    """
    settings = config.sources
    offsets = torch.arange(settings.expression_steps + 1, dtype=torch.float32) * settings.expression_step
    found: dict[int, tuple[int, torch.Tensor, int, int]] = {}
    failed: list[int] = []
    attempt = dict.fromkeys(slots, 0)
    pending = list(zip(slots, targets, strict=True))
    while pending:
        seeds = [candidate_seed(config, slot, attempt[slot]) for slot, _ in pending]
        latents = generator.sample_latents(seeds)
        paths = torch.cat([
            directions[target].edit(latents[i : i + 1].expand(len(offsets), *latents.shape[1:]), offsets.to(latents.device))
            for i, (_, target) in enumerate(pending)
        ])
        scored, detected = _in_batches(expressions, generator, paths, config.batch_size_on(generator.device.type))
        probs = scored.reshape(len(pending), len(offsets), *scored.shape[1:])
        faces = detected.reshape(len(pending), len(offsets))
        still = []
        for i, (slot, target) in enumerate(pending):
            step = accepted_step(probs[i], faces[i], target, settings.min_confidence)
            if step is not None:
                found[slot] = (seeds[i], paths[i * len(offsets) + step], step, attempt[slot])
                continue
            attempt[slot] += 1
            if attempt[slot] < settings.max_candidates:
                still.append((slot, target))
            elif strict:
                raise ConfigError(
                    f"sources.expressions: no face labelled {target!r} with confidence at least "
                    f"{settings.min_confidence:g} in {settings.max_candidates} candidates of slot {slot}; "
                    "lower its share, sources.min_confidence, or raise sources.max_candidates / expression_steps"
                )
            else:
                failed.append(slot)
        pending = still
    kept = [(slot, target) for slot, target in zip(slots, targets, strict=True) if slot in found]
    ordered = [found[slot] for slot, _ in kept]
    return SteeredSources(
        slots=[slot for slot, _ in kept],
        seeds=[seed for seed, _, _, _ in ordered],
        latents=torch.stack([latent for _, latent, _, _ in ordered]) if ordered else torch.empty(0),
        targets=[target for _, target in kept],
        steps=[step for _, _, step, _ in ordered],
        rejected=[rejected for _, _, _, rejected in ordered],
        failed=sorted(failed),
    )


def _in_batches(
    expressions: ExpressionScorer, generator: FaceGenerator, latents: torch.Tensor, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    probs, found = [], []
    for start in range(0, len(latents), batch_size):
        with torch.no_grad():
            batch_probs, batch_found = expressions(generator.synthesize(latents[start : start + batch_size]))
        probs.append(batch_probs)
        found.append(batch_found)
    return np.concatenate(probs), np.concatenate(found)
