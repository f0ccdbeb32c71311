"""A run folder as a Hugging Face dataset: `load_dataset(RUN_DIR)` offline, and a valid card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.dataset as ds
import pytest

from data_schemas import EMOTION_LABELS, Col
from pipeline.storage.card import model_provenance, write_card
from pipeline.storage.dataset import ManifestDataset
from pipeline.storage.huggingface import VIEW_FILES, licence_fields, size_category, write_views
from pipeline.images import read_png
from pipeline.storage.layout import CARD_FILE
from pipeline.models.assets import REGISTRY
from pipeline.storage.splits import SPLITS, assign_splits
from pipeline.storage.summary import RunManifest


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Hugging Face offline, and a working directory that is not the run's (paths must not depend on it)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path / "hf-cache"


@pytest.fixture
def carded(scored: tuple[Path, pd.DataFrame], tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    run_dir = tmp_path / "run"
    shutil.copytree(scored[0], run_dir)
    write_card(run_dir)
    return run_dir, scored[1]


def _keys(rows: list[dict]) -> list[tuple]:
    return sorted((r["group"], r["role"], r["attribute"] or "", r["label"]) for r in rows)


def test_load_dataset_of_a_run_folder_gives_each_image_once_with_its_label_and_split(
    carded: tuple[Path, pd.DataFrame], offline: Path
) -> None:
    from datasets import ClassLabel, Image, load_dataset

    run_dir, frame = carded
    data = load_dataset(str(run_dir), cache_dir=str(offline))
    assert set(data) == set(SPLITS)
    sources, edits = frame[Col.SEED].nunique(), len(frame)
    assert sum(part.num_rows for part in data.values()) == sources + edits  # each source once, not once per edit
    expected = dict(zip(frame[Col.SEED], assign_splits(frame[Col.SEED].to_numpy()), strict=False))
    for split, part in data.items():
        assert {expected[group] for group in part["group"]} == {split} and set(part[Col.SPLIT]) == {split}
        assert isinstance(part.features["image"], Image)
        assert part.features["label"] == ClassLabel(names=list(EMOTION_LABELS))
        assert Col.LATENT not in part.column_names
        loader = ManifestDataset(run_dir, split=split)
        assert _keys(part.to_list()) == _keys(loader.table.to_pylist())  # the same rows as the torch loader
    by_image = {row[Col.IMAGE_EDIT]: row for _, row in frame.iterrows()}
    sources_by_seed = frame.drop_duplicates(Col.SEED).set_index(Col.SEED)
    for record in (data["train"][0], data["train"][1], data["validation"][-1], data["test"][2]):
        if record["role"] == "source":
            row = sources_by_seed.loc[record["group"]]
            path, label = row[Col.IMAGE_SOURCE], row[Col.EMOTION_SOURCE]
        else:
            row = next(r for r in by_image.values() if r[Col.SEED] == record["group"] and r[Col.ATTRIBUTE] == record["attribute"])
            path, label = row[Col.IMAGE_EDIT], row[Col.EMOTION_EDIT]
            assert record[Col.IDENTITY_COSINE] == pytest.approx(row[Col.IDENTITY_COSINE])
        np.testing.assert_array_equal(np.asarray(record["image"]), read_png(run_dir / path))
        assert data["train"].features["label"].int2str(record["label"]) == label == record["label_name"]
        assert record["label_source"] == "ensemble"


def test_the_manifest_carries_the_same_split_for_other_engines(carded: tuple[Path, pd.DataFrame]) -> None:
    import duckdb

    run_dir, _ = carded
    table = ds.dataset(run_dir / "manifest", format="parquet").to_table(columns=[Col.SEED, Col.SPLIT])
    np.testing.assert_array_equal(table.column(Col.SPLIT).to_numpy(zero_copy_only=False), assign_splits(table.column(Col.SEED).to_numpy()))
    counts = dict(duckdb.sql(f"SELECT split, count(*) FROM read_parquet('{run_dir}/manifest/*.parquet') GROUP BY 1").fetchall())
    assert counts == {split: len(ManifestDataset(run_dir, view="pairs", split=split)) for split in SPLITS}
    images = dict(duckdb.sql(f"SELECT split, count(*) FROM read_parquet('{run_dir}/images-*.parquet') GROUP BY 1").fetchall())
    assert images == {split: len(ManifestDataset(run_dir, split=split)) for split in SPLITS}


def test_a_source_only_run_loads_without_edits_and_drops_empty_splits(unscored: Path, tmp_path: Path, offline: Path) -> None:
    from datasets import load_dataset

    run_dir = tmp_path / "run"
    shutil.copytree(unscored, run_dir)
    write_card(run_dir)
    present = {split for split in SPLITS if ManifestDataset(run_dir, split=split).seeds}
    assert present != set(SPLITS)  # 8 seeds leave a split empty: `datasets` refuses empty splits
    assert {split for split, name in VIEW_FILES.items() if (run_dir / name).exists()} == present
    data = load_dataset(str(run_dir), cache_dir=str(offline))
    assert set(data) == present and sum(part.num_rows for part in data.values()) == 8
    record = next(iter(data.values()))[0]
    assert np.asarray(record["image"]).shape == (64, 64, 3)
    assert record["role"] == "source" and record["label"] is None and record[Col.ATTRIBUTE] is None


def test_the_card_is_a_valid_hugging_face_dataset_card(carded: tuple[Path, pd.DataFrame]) -> None:
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    run_dir, frame = carded
    assert CARD_FILE == "README.md" and not (run_dir / "dataset_card.md").exists()
    card = DatasetCard.load(run_dir / CARD_FILE, ignore_metadata_errors=False)
    data = card.data.to_dict()
    digiface = REGISTRY["dcgan-digiface"]
    assert (data["license"], data["license_link"]) == ("other", "LICENSE.md") and (run_dir / "LICENSE.md").is_file()
    assert data["restricted_assets"] == [f"dcgan:{digiface.name}"]  # every restricting model, by name
    assert digiface.licence in (run_dir / "LICENSE.md").read_text()
    assert data["task_categories"] == ["image-classification"]
    sizes = json.loads((Path(__import__("datasets").__file__).parent / "utils/resources/size_categories.json").read_text())
    assert data["size_categories"] == ["n<1K"] and data["size_categories"][0] in sizes
    assert data["pretty_name"] == f"exprlock {frame_run_id(run_dir)}" and "exprlock" in data["tags"]
    (config,) = MetadataConfigs.from_dataset_card_data(card.data).values()
    for entry in config["data_files"]:
        view, images = entry["path"]
        assert view == VIEW_FILES[entry["split"]] and (run_dir / view).is_file()
        assert list(run_dir.glob(images))
    assert "## Loading" in card.text and 'load_dataset(".")' in card.text
    assert "**split**" in card.text


def test_the_declared_licence_is_the_most_restrictive_one(carded: tuple[Path, pd.DataFrame]) -> None:
    run_dir, _ = carded
    models = model_provenance(RunManifest.read(run_dir))
    permissive = [m for m in models if m["asset"] is not None and m["asset"].licence_id != "other"]
    assert {m["asset"].licence_id for m in permissive} == {"mit", "apache-2.0"}
    assert licence_fields(permissive) == {"license": "apache-2.0"}
    assert licence_fields([m for m in permissive if m["asset"].licence_id == "mit"]) == {"license": "mit"}
    user_supplied = {"role": "generator", "name": "stylegan2:ffhq.pkl", "sha256": "0" * 64, "licence": None, "asset": None}
    assert licence_fields([*permissive, user_supplied]) == {"license": "unknown"}
    assert licence_fields([*models, user_supplied])["license"] == "other"
    adience = {"role": "age", "name": "adience-age-net", "sha256": "1" * 64, "licence": None, "asset": REGISTRY["adience-age-net"]}
    fields = licence_fields([*models, adience], also_restricted=["tddfa-mobilenet"])
    assert fields["restricted_assets"] == sorted(["adience-age-net", "dcgan:dcgan-digiface", "tddfa-mobilenet"])
    assert {a.licence_id for a in REGISTRY.values()} <= {"cc0-1.0", "mit", "apache-2.0", "other"}
    assert all("non-commercial" not in a.licence.lower() or a.licence_id == "other" for a in REGISTRY.values())


def test_size_categories_follow_hugging_face_buckets() -> None:
    known = json.loads((Path(__import__("datasets").__file__).parent / "utils/resources/size_categories.json").read_text())
    counts = (0, 999, 1000, 99_999, 100_000, 2_000_000, 50_000_000, 10**9)
    named = [size_category(n) for n in counts]
    assert named == ["n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "1B<n<10B"]
    assert set(named) <= set(known)


def test_rewriting_the_card_replaces_stale_views(carded: tuple[Path, pd.DataFrame]) -> None:
    run_dir, _ = carded
    before = {name: (run_dir / name).read_bytes() for name in VIEW_FILES.values()}
    (run_dir / VIEW_FILES["test"]).write_bytes(b"PAR1 a view of rows that are gone")
    (run_dir / "dataset_card.md").write_text("an old card")
    write_card(run_dir)
    assert not (run_dir / "dataset_card.md").exists()
    assert {name: (run_dir / name).read_bytes() for name in VIEW_FILES.values()} == before  # derived from the manifest alone


def test_views_are_written_one_shard_at_a_time_with_the_rows_of_the_image_view(
    carded: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    """A large run never holds its whole manifest in memory: each shard adds its own row group."""
    import pyarrow.parquet as pq

    from pipeline.storage.image_view import read_image_table

    run_dir, frame = carded
    streamed_dir = tmp_path / "streamed"
    streamed_dir.mkdir()
    manifest = RunManifest.read(run_dir).dataset
    rows = write_views(streamed_dir, manifest)
    whole = read_image_table(run_dir)
    assert sum(rows.values()) == whole.num_rows == frame[Col.SEED].nunique() + len(frame)
    for split, name in VIEW_FILES.items():
        view = pq.read_table(streamed_dir / name)
        expected = whole.filter(pa.compute.equal(whole.column(Col.SPLIT), split))
        assert view.num_rows == rows[split] == expected.num_rows
        assert view.column("file_name").to_pylist() == expected.column("image").to_pylist()
        assert pq.ParquetFile(streamed_dir / name).metadata.num_row_groups == len(manifest.files)
        assert json.loads(view.schema.metadata[b"exprlock"])["class_order"]["emotion_probs"] == list(EMOTION_LABELS)
    assert not list(streamed_dir.glob(".*.tmp"))


def frame_run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "config.json").read_text())["run_id"]
