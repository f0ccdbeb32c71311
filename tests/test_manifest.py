"""Manifest shards: schema-checked writes, atomic commits, validated reads."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from data_schemas import COLUMNS, CURRENT_VERSION, EMOTION_LABELS, SCHEMA_METADATA_KEY, Col, schema_for_version
from pipeline.errors import ManifestError
from pipeline.storage.manifest import open_manifest, read_manifest, read_shard, shard_files, to_table, write_shard


def _rows(n: int, shard: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(shard)
    return {
        Col.RUN_ID: ["demo-abc"] * n,
        Col.SHARD: [shard] * n,
        Col.SEED: list(range(shard * n, shard * n + n)),
        Col.LATENT: [rng.standard_normal(4).astype(np.float32) for _ in range(n)],
        Col.LATENT_SHAPE: [[4]] * n,
        Col.GENERATOR: ["dcgan:dcgan-digiface"] * n,
        Col.GENERATOR_SHA256: ["0" * 64] * n,
        Col.IMAGE_SOURCE: [f"images/seed-{i}.png" for i in range(n)],
        Col.IMAGE_SOURCE_SHA256: ["f" * 64] * n,
        Col.SCHEMA_VERSION: [CURRENT_VERSION] * n,
        Col.CREATED_AT: [datetime(2026, 1, 1, tzinfo=timezone.utc)] * n,
    }


def test_round_trip_with_pyarrow_and_pandas(tmp_path: Path) -> None:
    rows = _rows(5)
    path = write_shard(to_table(rows, run_id="demo-abc"), tmp_path / "manifest" / "shard-00000.parquet")
    table = read_shard(path)
    assert table.column_names == list(COLUMNS)
    assert table.column(Col.SEED).to_pylist() == rows[Col.SEED]
    np.testing.assert_array_equal(np.stack(table.column(Col.LATENT).to_pylist()), np.stack(rows[Col.LATENT]))
    frame = pd.read_parquet(path)
    assert frame[Col.IMAGE_SOURCE].tolist() == rows[Col.IMAGE_SOURCE]
    assert str(frame[Col.CREATED_AT].dt.tz) == "UTC"
    metadata = json.loads(pq.read_schema(path).metadata[SCHEMA_METADATA_KEY])
    assert metadata["schema_version"] == CURRENT_VERSION and metadata["run_id"] == "demo-abc"
    field = pq.read_schema(path).field(Col.SEED)
    assert b"seed" in field.metadata[b"description"]


def test_pyarrow_dataset_discovery_skips_temporary_files(tmp_path: Path) -> None:
    directory = tmp_path / "manifest"
    write_shard(to_table(_rows(3, 0), run_id="demo-abc"), directory / "shard-00000.parquet")
    (directory / ".shard-00001.parquet.1234.tmp").write_bytes(b"half a file")
    assert ds.dataset(directory, format="parquet").count_rows() == 3
    assert [p.name for p in shard_files(tmp_path)] == ["shard-00000.parquet"]
    assert read_manifest(tmp_path).num_rows == 3


def test_a_wrong_value_type_names_the_column() -> None:
    rows = _rows(2)
    rows[Col.SEED] = ["one", "two"]
    with pytest.raises(ManifestError, match="manifest column 'seed': expected int64"):
        to_table(rows, run_id="demo-abc")


def test_missing_and_extra_columns_are_named() -> None:
    rows = _rows(2)
    del rows[Col.IMAGE_SOURCE]
    rows["colour"] = ["red", "blue"]
    with pytest.raises(ManifestError, match=r"missing columns \['image_source'\], unexpected columns \['colour'\]"):
        to_table(rows, run_id="demo-abc")


def test_finished_shard_is_never_overwritten(tmp_path: Path) -> None:
    path = write_shard(to_table(_rows(2), run_id="demo-abc"), tmp_path / "shard-00000.parquet")
    before = path.read_bytes()
    with pytest.raises(ManifestError, match="already exists"):
        write_shard(to_table(_rows(3), run_id="demo-abc"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.parquet"]


def test_file_with_a_retyped_column_is_refused(tmp_path: Path) -> None:
    table = to_table(_rows(2), run_id="demo-abc")
    retyped = table.set_column(
        table.schema.get_field_index(Col.SHARD), pa.field(Col.SHARD, pa.string()), pa.array(["0", "0"])
    ).replace_schema_metadata(table.schema.metadata)
    pq.write_table(retyped, tmp_path / "bad.parquet")
    with pytest.raises(ManifestError, match="column 'shard' has type string, expected int32"):
        read_shard(tmp_path / "bad.parquet")


def test_foreign_and_unknown_version_files_are_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(ManifestError, match="not an exprlock manifest"):
        read_shard(tmp_path / "foreign.parquet")
    table = to_table(_rows(1), run_id="demo-abc")
    future = table.replace_schema_metadata({SCHEMA_METADATA_KEY: json.dumps({"schema_version": "9.0"}).encode()})
    pq.write_table(future, tmp_path / "future.parquet")
    with pytest.raises(ManifestError, match="unknown manifest schema version '9.0'"):
        read_shard(tmp_path / "future.parquet")
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(ManifestError, match="garbage.parquet: not a readable Parquet file"):
        read_shard(tmp_path / "garbage.parquet")


def test_missing_column_is_named(tmp_path: Path) -> None:
    table = to_table(_rows(1), run_id="demo-abc")
    pq.write_table(table.drop_columns([Col.LATENT_SHAPE]).replace_schema_metadata(table.schema.metadata), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="column 'latent_shape' is missing"):
        read_shard(tmp_path / "m.parquet")


def test_required_columns_refuse_nulls() -> None:
    rows = _rows(2)
    rows[Col.IMAGE_SOURCE] = ["images/a.png", None]
    with pytest.raises(ManifestError, match="'image_source': 1 nulls in a required column"):
        to_table(rows, run_id="demo-abc")


def test_schema_fields_all_documented() -> None:
    for field in schema_for_version(CURRENT_VERSION):
        assert field.metadata[b"description"], field.name


def test_version_1_0_shards_stay_readable_beside_current_ones(tmp_path: Path) -> None:
    old_rows = _rows(2, shard=0)
    old_rows[Col.SCHEMA_VERSION] = ["1.0"] * 2
    old_schema = schema_for_version("1.0").with_metadata({SCHEMA_METADATA_KEY: json.dumps({"schema_version": "1.0"}).encode()})
    old = pa.table({f.name: pa.array(old_rows[f.name], f.type) for f in old_schema}, schema=old_schema)
    (tmp_path / "manifest").mkdir()
    pq.write_table(old, tmp_path / "manifest" / "shard-00000.parquet")
    assert read_shard(tmp_path / "manifest" / "shard-00000.parquet").column_names == list(old_schema.names)

    new_rows = _rows(3, shard=1)
    new_rows[Col.EMOTION_PROBS_SOURCE] = [[1 / len(EMOTION_LABELS)] * len(EMOTION_LABELS)] * 3
    write_shard(to_table(new_rows, run_id="demo-abc"), tmp_path / "manifest" / "shard-00001.parquet")
    table = read_manifest(tmp_path)
    assert table.num_rows == 5
    assert table.column(Col.EMOTION_PROBS_SOURCE).null_count == 2
    assert table.column(Col.SCHEMA_VERSION).to_pylist() == ["1.0", "1.0", CURRENT_VERSION, CURRENT_VERSION, CURRENT_VERSION]


def _old_shard(path: Path, version: str, rows: dict[str, list]) -> None:
    schema = schema_for_version(version).with_metadata({SCHEMA_METADATA_KEY: json.dumps({"schema_version": version}).encode()})
    rows = {**rows, Col.SCHEMA_VERSION: [version] * len(rows[Col.SEED])}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({f.name: pa.array(rows.get(f.name, [None] * len(rows[Col.SEED])), f.type) for f in schema}, schema=schema), path)


def test_a_run_resumed_by_a_newer_version_reads_as_the_newest(tmp_path: Path) -> None:
    """Shards of 1.3 (no split column) beside shards of 1.4: one dataset, the old split null."""
    from pipeline.storage.dataset import ManifestDataset
    from pipeline.storage.splits import assign_splits

    _old_shard(tmp_path / "manifest" / "shard-00000.parquet", "1.3", _rows(4, shard=0))
    write_shard(to_table(_rows(4, shard=1), run_id="demo-abc"), tmp_path / "manifest" / "shard-00001.parquet")
    dataset, version = open_manifest(tmp_path)
    assert version == CURRENT_VERSION and dataset.schema.names == list(COLUMNS)
    table = dataset.to_table(columns=[Col.SEED, Col.SPLIT])
    assert table.column(Col.SPLIT).to_pylist()[:4] == [None] * 4
    assert table.column(Col.SPLIT).to_pylist()[4:] == assign_splits(list(range(4, 8))).tolist()
    every = sorted(seed for split in ("train", "validation", "test") for seed in ManifestDataset(tmp_path, split=split).seeds)
    assert every == list(range(8))


def test_shards_whose_columns_changed_meaning_are_not_mixed(tmp_path: Path) -> None:
    """1.2 redefined the emotion columns (one model -> the ensemble): a 1.1 shard cannot join a current run."""
    _old_shard(tmp_path / "manifest" / "shard-00000.parquet", "1.1", _rows(2, shard=0))
    write_shard(to_table(_rows(2, shard=1), run_id="demo-abc"), tmp_path / "manifest" / "shard-00001.parquet")
    with pytest.raises(ManifestError, match=rf"shards of schema versions \['1.1', '{CURRENT_VERSION}'\], whose columns differ in meaning"):
        open_manifest(tmp_path)


def test_emotion_probabilities_must_have_one_value_per_label() -> None:
    rows = _rows(1)
    rows[Col.EMOTION_PROBS_SOURCE] = [[0.5, 0.5]]
    with pytest.raises(ManifestError, match="manifest column 'emotion_probs_source'"):
        to_table(rows, run_id="demo-abc")
