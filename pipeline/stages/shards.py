"""One shard made exactly once, and damaged shards made again.

`generate_shard_once` is how every worker makes a shard: under the shard's claim
(`pipeline.storage.shard_claim`), skipping one already committed as its ledger recorded it, and
quarantining (`pipeline.storage.integrity`) one that does not match before rendering it again.
`repair_run` does the same for every shard `verify_run` found damaged. Rendering is
deterministic, so a repaired run holds the rows and images of a clean one. Both import the
renderer (and torch) only when they render.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.storage.integrity import Verification, quarantine_shard, quarantine_stamp, run_config, shard_damage
from pipeline.storage.layout import run_complete, shard_path
from pipeline.storage.shard_claim import DEFAULT_HEARTBEAT, Claim, claim


class ShardStatus(StrEnum):
    """What happened to one shard in one worker."""

    WRITTEN = "written"  # this worker rendered and committed it
    REMADE = "remade"  # it was committed but damaged: quarantined, then rendered and committed again
    DONE = "done"  # it was already committed, as the ledger recorded it
    BUSY = "busy"  # another live worker holds its claim


@dataclass(frozen=True)
class ShardOutcome:
    index: int
    path: Path
    rows: int
    status: ShardStatus
    note: str | None = None  # the owner of a busy shard; what was wrong with a remade one


def generate_shard_once(
    config: RunConfig,
    run_dir: Path,
    index: int,
    *,
    stale_after: float | None = None,
    heartbeat: float = DEFAULT_HEARTBEAT,
) -> ShardOutcome:
    """`pipeline.stages.generate.generate_shard` under the shard's claim; a shard held elsewhere is BUSY, a
    committed one that does not match its ledger record is quarantined and made again."""
    from pipeline.stages.generate import generate_shard  # imports torch: only where shards are made

    path = shard_path(run_dir, index)
    if path.exists() and shard_damage(config, run_dir, index) is None:
        return ShardOutcome(index, path, 0, ShardStatus.DONE)
    with claim(path, stale_after=stale_after, heartbeat=heartbeat) as held:
        if not isinstance(held, Claim):
            return ShardOutcome(index, path, 0, ShardStatus.BUSY, held.describe() if held else "an unreadable claim")
        damage = shard_damage(config, run_dir, index) if path.exists() else None
        if path.exists() and damage is None:
            return ShardOutcome(index, path, 0, ShardStatus.DONE)  # another worker made it meanwhile
        if damage is not None:
            quarantine_shard(run_dir, index)
        result = generate_shard(config, run_dir, index)
    status = ShardStatus.WRITTEN if damage is None else ShardStatus.REMADE
    return ShardOutcome(index, path, result.rows, status, damage)


def repair_run(run_dir: Path, report: Verification) -> list[int]:
    """Quarantine every damaged shard and render it again (under its claim), then, once every
    shard is there, the contact sheet and card (they show the shards' images); the shards made."""
    from pipeline.stages.generate import write_contact_sheet
    from pipeline.storage.card import write_card

    run_dir = Path(run_dir)
    config = run_config(run_dir)
    stamp = quarantine_stamp()
    made = []
    for index in report.damaged:
        quarantine_shard(run_dir, index, stamp=stamp)
        if generate_shard_once(config, run_dir, index).status == ShardStatus.WRITTEN:
            made.append(index)
    if run_complete(config, run_dir):
        write_contact_sheet(run_dir)
        write_card(run_dir)
    return made
