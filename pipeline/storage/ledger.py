"""The run ledger: what every committed shard's Parquet file and images must be.

When a shard commits, a record of it is added to `RUN/ledger/`: the Parquet file's SHA-256 and
size, its row count and the SHA-256 of every image it references. Each record is a file of its
own (`ledger/shard-00003/<nanoseconds>.json`), written atomically and never changed afterwards,
so workers on a shared filesystem never write the same file and a crash leaves no torn record;
a shard that is made again gets a newer record, and a shard's newest record is what it must be.
Finding one shard's records lists only its own folder, however large the run.
The row count and image digests also go into the shard's own Parquet metadata.

Nothing here imports torch: the command line checks finished shards against the ledger before
it decides that a run has nothing left to do.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from data_schemas import Col
from pipeline.images import write_atomic
from pipeline.models.assets import file_sha256

LEDGER_DIR = "ledger"
SHARD_METADATA_KEY = b"exprlock.shard"


@dataclass(frozen=True)
class ShardRecord:
    shard: int
    file: str  # relative to the run directory
    sha256: str
    size: int
    rows: int
    images: dict[str, str]  # image path (relative to the run directory) -> SHA-256


def table_images(table: pa.Table) -> dict[str, str]:
    """Every image a shard's rows reference, with the digest the rows recorded for it."""
    images: dict[str, str] = {}
    for path_column, hash_column in ((Col.IMAGE_SOURCE, Col.IMAGE_SOURCE_SHA256), (Col.IMAGE_EDIT, Col.IMAGE_EDIT_SHA256)):
        paths, hashes = table.column(path_column).to_pylist(), table.column(hash_column).to_pylist()
        images.update((path, digest) for path, digest in zip(paths, hashes, strict=True) if path is not None)
    return images


def with_shard_metadata(table: pa.Table) -> pa.Table:
    """The table with its row count and image digests in its own schema metadata."""
    record = json.dumps({"rows": table.num_rows, "images": table_images(table)}, sort_keys=True)
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SHARD_METADATA_KEY: record.encode()})


def record_shard(run_dir: Path, index: int, path: Path, table: pa.Table) -> ShardRecord:
    """Add the committed shard at `path` to the ledger."""
    run_dir, path = Path(run_dir), Path(path)
    record = ShardRecord(
        shard=index,
        file=path.relative_to(run_dir).as_posix(),
        sha256=file_sha256(path),
        size=path.stat().st_size,
        rows=table.num_rows,
        images=table_images(table),
    )
    target = _records_dir(run_dir, index) / f"{time.time_ns()}.json"
    write_atomic((json.dumps(asdict(record), sort_keys=True) + "\n").encode(), target)
    return record


def shard_record(run_dir: Path, index: int) -> ShardRecord | None:
    """The shard's newest record; None for a shard committed without one (before exprlock kept a
    ledger, or by a worker that died between the commit and the record)."""
    folder = _records_dir(run_dir, index)
    stamps = [int(p.stem) for p in folder.glob("*.json")] if folder.is_dir() else []
    if not stamps:
        return None
    return ShardRecord(**json.loads((folder / f"{max(stamps)}.json").read_text()))


def _records_dir(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / LEDGER_DIR / f"shard-{index:05d}"


def file_mismatch(run_dir: Path, record: ShardRecord) -> str | None:
    """Why the shard's file is not the one the ledger recorded (size, then digest); None if it is."""
    path = Path(run_dir) / record.file
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != record.size:
        return f"has {size} bytes, the ledger recorded {record.size}"
    digest = file_sha256(path)
    if digest != record.sha256:
        return f"has SHA-256 {digest[:16]}..., the ledger recorded {record.sha256[:16]}..."
    return None


def record_mismatch(run_dir: Path, record: ShardRecord) -> str | None:
    """The cheap check of a committed shard: its file as recorded, and every image it lists
    present (their digests are `exprlock verify`'s job). A line naming the file, or None."""
    mismatch = file_mismatch(run_dir, record)
    if mismatch:
        return f"{Path(run_dir) / record.file}: {mismatch}"
    absent = next((name for name in record.images if not (Path(run_dir) / name).is_file()), None)
    return f"{Path(run_dir) / absent}: missing" if absent else None
