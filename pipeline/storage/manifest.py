"""Writing and reading the Parquet shards of a run's manifest.

A shard file is committed by an atomic rename: rows go to a dot-prefixed temporary file in the
final directory, which is flushed, fsynced and read back before `os.replace` gives it its final
name. Readers (and pyarrow's dataset discovery) skip dot-prefixed names, so a crash never shows
a half-written shard, and a finished shard is never rewritten.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import pipeline
from data_schemas import SCHEMA_METADATA_KEY, Col, manifest_schema, schema_for_version
from pipeline.errors import ManifestError, naming
from pipeline.images import fsync_directory
from pipeline.storage.splits import assign_splits

MANIFEST_DIR = "manifest"


def shard_filename(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


def to_table(rows: Mapping[str, Sequence], *, run_id: str) -> pa.Table:
    """Columns to a table of the current schema; fails naming the column that does not fit.

    Nullable columns left out are written as nulls, except the split, which follows from the
    seeds; required ones must be given.
    """
    schema = manifest_schema(run_id=run_id, creator_version=pipeline.__version__)
    count = len(next(iter(rows.values()), []))
    rows = {**{f.name: [None] * count for f in schema if f.nullable}, **rows}
    missing = [f.name for f in schema if f.name not in rows]
    extra = sorted(set(rows) - set(schema.names))
    if missing or extra:
        raise ManifestError(f"manifest rows: missing columns {missing}, unexpected columns {extra}")
    arrays = []
    for field in schema:
        if field.name == Col.SPLIT and all(split is None for split in rows[Col.SPLIT]):
            seeds = arrays[schema.get_field_index(Col.SEED)]  # converted (and checked) before the split
            rows = {**rows, Col.SPLIT: assign_splits(seeds.to_numpy(zero_copy_only=False)).tolist()}
        try:
            arrays.append(pa.array(rows[field.name], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as error:
            raise ManifestError(f"manifest column {field.name!r}: expected {field.type} ({error})") from None
        if not field.nullable and arrays[-1].null_count:
            raise ManifestError(f"manifest column {field.name!r}: {arrays[-1].null_count} nulls in a required column")
    return pa.Table.from_arrays(arrays, schema=schema)


def write_shard(table: pa.Table, path: Path) -> Path:
    """Write `table` to `path` atomically; refuse to overwrite a finished shard."""
    path = Path(path)
    if path.exists():
        raise ManifestError(f"{path}: shard already exists; finished shards are never rewritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with naming(temp), open(temp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd", write_page_checksum=True)
            handle.flush()
            os.fsync(handle.fileno())
        written = pq.read_table(temp)
        if written.num_rows != table.num_rows or not written.schema.equals(table.schema):
            raise ManifestError(f"{temp}: read-back does not match what was written")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return path


def read_shard(path: Path) -> pa.Table:
    """One shard, validated against the schema version recorded in its metadata."""
    path = Path(path)
    schema, _ = _checked_schema(path)
    return pq.read_table(path, schema=schema)


def read_manifest(run_dir: Path) -> pa.Table:
    """All finished shards of a run, in shard order; older-version shards gain null columns."""
    files = shard_files(run_dir)
    if not files:
        raise ManifestError(f"{Path(run_dir) / MANIFEST_DIR}: no manifest shards found")
    return pa.concat_tables([read_shard(f) for f in files], promote_options="default")


def open_manifest(run_dir: Path) -> tuple[ds.Dataset, str]:
    """A pyarrow dataset over the run's finished shards, and their schema version.

    Every shard's schema is checked against its declared version first, so a foreign or
    half-migrated file is refused by name instead of surfacing as a confusing read error. A run
    resumed by a newer exprlock holds shards of two versions; they are read as the newest (older
    shards' missing columns as nulls) when the newer version only adds columns, and refused when
    a column changed its meaning.
    """
    files = shard_files(run_dir)
    if not files:
        raise ManifestError(f"{Path(run_dir) / MANIFEST_DIR}: no manifest shards found; is this a run directory?")
    checked = {path: _checked_schema(path) for path in files}
    versions = sorted({version for _, version in checked.values()}, key=_version_key)
    newest = schema_for_version(versions[-1])
    for older in versions[:-1]:
        if not all(newest.field(field.name).equals(field, check_metadata=True) for field in schema_for_version(older)):
            raise ManifestError(
                f"{Path(run_dir) / MANIFEST_DIR}: shards of schema versions {versions}, whose columns differ in "
                "meaning; finish the run with the exprlock version that started it, or start it afresh in another --out"
            )
    schema = next(schema for schema, version in checked.values() if version == versions[-1])
    return ds.dataset([str(p) for p in files], format="parquet", schema=schema), versions[-1]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def shard_files(run_dir: Path) -> list[Path]:
    """Finished shard files (temporary dot-files excluded), sorted by name."""
    directory = Path(run_dir) / MANIFEST_DIR
    return sorted(p for p in directory.glob("shard-*.parquet") if not p.name.startswith("."))


def validate_schema(schema: pa.Schema, *, source: str) -> str:
    """Check a file's schema against the one its version declares; return the version."""
    raw = (schema.metadata or {}).get(SCHEMA_METADATA_KEY)
    if raw is None:
        raise ManifestError(f"{source}: no exprlock schema metadata; not an exprlock manifest")
    version = json.loads(raw).get("schema_version", "?")
    try:
        expected = schema_for_version(version)
    except KeyError:
        raise ManifestError(f"{source}: unknown manifest schema version {version!r}") from None
    for field in expected:
        if field.name not in schema.names:
            raise ManifestError(f"{source}: column {field.name!r} is missing (schema {version})")
        found = schema.field(field.name).type
        if found != field.type:
            raise ManifestError(f"{source}: column {field.name!r} has type {found}, expected {field.type}")
    extra = sorted(set(schema.names) - set(expected.names))
    if extra:
        raise ManifestError(f"{source}: unexpected columns {extra} for schema {version}")
    return version


def _checked_schema(path: Path) -> tuple[pa.Schema, str]:
    """A shard's schema and version, validated; an unreadable file is refused by name."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise ManifestError(f"{path}: not a readable Parquet file ({error})") from None
    return schema, validate_schema(schema, source=str(path))
