"""Verifying a run against its ledger, and repairing what is damaged.

`verify_run` checks every shard of the plan: its file against the ledger (size and SHA-256), that
it decodes completely (every page, with the page checksums it was written with), that its rows
hold each planned seed exactly as often as the config's edits say, and that every image it
references exists with the digest its rows recorded. Each problem is one line naming the file.

`quarantine_shard` moves a damaged shard and its images aside into `RUN/quarantine/<time>/`
(never deleting them); `pipeline.stages.shards.repair_run` then renders them again.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_schemas import Col
from pipeline.config import RunConfig, parse_config
from pipeline.editing.plan import plan_edits
from pipeline.errors import ManifestError
from pipeline.storage.layout import CONFIG_FILE, shard_count, shard_images, shard_path, shard_seeds
from pipeline.storage.ledger import ShardRecord, file_mismatch, record_mismatch, record_shard, shard_record, table_images
from pipeline.storage.manifest import shard_files, validate_schema
from pipeline.models.assets import file_sha256

QUARANTINE_DIR = "quarantine"
REPAIR_HINT = "`exprlock verify RUN --repair` makes it again"


@dataclass(frozen=True)
class Problem:
    shard: int
    path: Path
    message: str
    missing: bool = False  # a shard not committed yet (an unfinished run), rather than a damaged one

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Verification:
    shards: int = 0
    images: int = 0
    unrecorded: list[int] = field(default_factory=list)  # committed before the ledger kept records
    problems: list[Problem] = field(default_factory=list)

    @property
    def damaged(self) -> list[int]:
        return sorted({problem.shard for problem in self.problems})


def run_config(run_dir: Path) -> RunConfig:
    """The config a run was made with, from its record. A record written before the gender and
    age scorer could be chosen means the Adience nets, which every run used then."""
    record = Path(run_dir) / CONFIG_FILE
    try:
        config = json.loads(record.read_text())["config"]
        config.setdefault("scoring", {}).setdefault("age_gender", "adience")
        return parse_config(config, source=str(record))
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise ManifestError(f"{record}: not a readable run record ({error}); is {run_dir} a run directory?") from None


def verify_run(run_dir: Path, *, images: bool = True) -> Verification:
    """Every shard of the run's plan checked; `images=False` leaves out the image digests. A
    manifest without its run record (copied on its own) has its shard files checked, not its plan."""
    run_dir = Path(run_dir)
    require_run_dir(run_dir)
    config = run_config(run_dir) if (run_dir / CONFIG_FILE).exists() else None
    indices = range(shard_count(config)) if config else [int(p.stem.split("-")[1]) for p in shard_files(run_dir)]
    report = Verification()
    for index in indices:
        report.shards += 1
        problems, checked, recorded = check_shard(config, run_dir, index, images=images)
        report.problems += problems
        report.images += checked
        if not recorded and shard_path(run_dir, index).exists():
            report.unrecorded.append(index)
    return report


def require_run_dir(run_dir: Path) -> None:
    """Refuse a path that is not a run, so that a check never passes on nothing (a typo, say)."""
    if not run_dir.is_dir():
        raise ManifestError(f"{run_dir}: no such directory; give the folder `exprlock generate --out` wrote")
    if not (run_dir / CONFIG_FILE).is_file() and not shard_files(run_dir):
        raise ManifestError(
            f"{run_dir}: not a run directory (no {CONFIG_FILE} and no manifest shards); "
            "give the folder `exprlock generate --out` wrote"
        )


def check_shard(
    config: RunConfig | None, run_dir: Path, index: int, *, images: bool = True
) -> tuple[list[Problem], int, bool]:
    """(problems, images checked, whether the ledger has a record) of one shard; without the
    run's config its seeds are not checked against the plan."""
    path = shard_path(run_dir, index)
    if not path.exists():
        seeds = shard_seeds(config, index) if config else range(0)
        message = f"missing: seeds {seeds.start}-{seeds.stop - 1} are not committed; {REPAIR_HINT}"
        return [Problem(index, path, message, missing=True)], 0, False
    record = shard_record(run_dir, index)
    if record is not None:
        mismatch = file_mismatch(run_dir, record)
        if mismatch:
            return [Problem(index, path, f"{mismatch}; {REPAIR_HINT}")], 0, True
    try:
        table = read_whole(path)
    except ManifestError as error:
        return [Problem(index, path, f"{error}; {REPAIR_HINT}")], 0, record is not None
    problems = _row_problems(config, index, path, table, record)
    referenced = table_images(table)
    if images:
        problems += [Problem(index, run_dir / name, message) for name, message in _image_problems(run_dir, referenced)]
    return problems, len(referenced) if images else 0, record is not None


def shard_damage(config: RunConfig, run_dir: Path, index: int) -> str | None:
    """Why a committed shard cannot be trusted, found cheaply: its file against its ledger record
    (size, then SHA-256) and the presence of every image the record lists. A shard without a
    record is checked in full (decoded, its seeds, its images) and recorded when sound, so runs
    made before the ledger gain one."""
    path = shard_path(run_dir, index)
    record = shard_record(run_dir, index)
    if record is not None:
        return record_mismatch(run_dir, record)
    problems, _, _ = check_shard(config, run_dir, index)
    if problems:
        return str(problems[0])
    record_shard(run_dir, index, path, read_whole(path))
    return None


def read_whole(path: Path) -> pa.Table:
    """Every page of a shard decoded, checksums verified where it has them; one error naming it."""
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ManifestError(f"does not decode ({first})") from None
    validate_schema(table.schema, source=str(path))
    return table


def _row_problems(
    config: RunConfig | None, index: int, path: Path, table: pa.Table, record: ShardRecord | None
) -> list[Problem]:
    problems = []
    if record is not None and table.num_rows != record.rows:
        problems.append(Problem(index, path, f"holds {table.num_rows} rows, the ledger recorded {record.rows}; {REPAIR_HINT}"))
    if config is None:
        return problems
    planned = list(shard_seeds(config, index))
    per_seed = max(1, len(plan_edits(config)))
    column = Col.SEED_ORIGINAL if Col.SEED_ORIGINAL in table.column_names and table.column(Col.SEED_ORIGINAL).null_count == 0 else Col.SEED
    counts = Counter(table.column(column).to_pylist())
    missing = [seed for seed in planned if counts[seed] < per_seed]
    extra = sorted(seed for seed in counts if seed not in set(planned) or counts[seed] > per_seed)
    if missing or extra:
        problems.append(Problem(
            index, path, f"seeds {_short(missing)} have fewer than {per_seed} rows and {_short(extra)} are unplanned "
            f"or repeated; {REPAIR_HINT}",
        ))
    return problems


def _image_problems(run_dir: Path, referenced: dict[str, str]) -> list[tuple[str, str]]:
    problems = []
    for name, expected in referenced.items():
        path = run_dir / name
        if not path.is_file():
            problems.append((name, f"missing; {REPAIR_HINT}"))
            continue
        found = file_sha256(path)
        if found != expected:
            problems.append((name, f"has SHA-256 {found[:16]}..., its row recorded {expected[:16]}...; {REPAIR_HINT}"))
    return problems


def _short(values: list[int]) -> str:
    if not values:
        return "none"
    return ", ".join(map(str, values[:5])) + (f" and {len(values) - 5} more" if len(values) > 5 else "")


def quarantine_shard(run_dir: Path, index: int, *, stamp: str | None = None) -> Path:
    """Move a shard's Parquet file and its image folder under `RUN/quarantine/<stamp>/`."""
    run_dir = Path(run_dir)
    stamp = stamp or quarantine_stamp()
    destination = run_dir / QUARANTINE_DIR / stamp
    for source in (shard_path(run_dir, index), run_dir / shard_images(index)):
        if source.exists():
            target = destination / source.relative_to(run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
    return destination


def quarantine_stamp() -> str:
    """A quarantine folder name: the UTC time to the microsecond, so repairs never collide."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
