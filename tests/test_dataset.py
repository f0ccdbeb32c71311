"""Loading a run: five readers agree on the manifest; the torch Dataset filters, splits and yields images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import torch

from data_schemas import COLUMNS, EMOTION_LABELS, Col
from pipeline.storage.dataset import ManifestDataset, hf_label_filters
from pipeline.storage.splits import SPLITS, assign_splits, seed_unit
from pipeline.errors import ConfigError, ManifestError
from pipeline.images import read_png


def _read_with_every_engine(manifest: Path, cache: Path) -> dict[str, tuple[int, list[str], list[int]]]:
    """(rows, columns, sorted seeds) as each reader sees the manifest directory."""
    import duckdb
    import polars as pl
    from datasets import load_dataset

    pattern = str(manifest / "*.parquet")
    frame = pd.read_parquet(manifest)
    table = ds.dataset(manifest, format="parquet").to_table()
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{pattern}')")
    polars = pl.read_parquet(pattern)
    hugging = load_dataset("parquet", data_files=pattern, split="train", cache_dir=str(cache))
    return {
        "pandas": (len(frame), list(frame.columns), sorted(frame[Col.SEED])),
        "pyarrow": (table.num_rows, table.column_names, sorted(table.column(Col.SEED).to_pylist())),
        "duckdb": (relation.shape[0], relation.columns, sorted(r[0] for r in relation.select(Col.SEED).fetchall())),
        "polars": (polars.height, polars.columns, sorted(polars[Col.SEED].to_list())),
        "datasets": (hugging.num_rows, hugging.column_names, sorted(hugging[Col.SEED])),
    }


@pytest.mark.parametrize("which", ["unscored", "scored"])
def test_five_readers_agree_on_rows_and_columns(
    which: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fixture = request.getfixturevalue(which)
    run_dir = fixture[0] if isinstance(fixture, tuple) else fixture
    # A crashed writer's leftover must be invisible to every reader.
    (run_dir / "manifest" / ".shard-00001.parquet.deadbeef.tmp").write_bytes(b"PAR1 half written")
    seen = _read_with_every_engine(run_dir / "manifest", tmp_path / "hf-cache")
    expected_rows = 8 if which == "unscored" else 120
    for engine, (rows, columns, seeds) in seen.items():
        assert rows == expected_rows, engine
        assert columns == list(COLUMNS), engine
        assert seeds == seen["pandas"][2], engine


def test_seed_splits_are_fixed_by_the_seed_alone() -> None:
    seeds = np.arange(10_000)
    splits = assign_splits(seeds)
    np.testing.assert_array_equal(assign_splits(seeds[::-1]), splits[::-1])  # order does not matter
    np.testing.assert_array_equal(assign_splits(seeds[5000:]), splits[5000:])  # nor which other seeds exist
    shares = {name: float(np.mean(splits == name)) for name in SPLITS}
    assert shares == pytest.approx({"train": 0.8, "validation": 0.1, "test": 0.1}, abs=0.02)
    assert not np.array_equal(assign_splits(seeds, salt="other"), splits)  # the salt reshuffles
    units = seed_unit(seeds)
    assert units.min() >= 0.0 and units.max() < 1.0
    assert abs(np.corrcoef(units[:-1], units[1:])[0, 1]) < 0.05  # consecutive seeds are not correlated


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(ConfigError, match="summing to 1"):
        assign_splits([1, 2], fractions=(0.8, 0.3, 0.1))


def test_splits_never_share_a_source_seed(scored: tuple[Path, pd.DataFrame]) -> None:
    run_dir, frame = scored
    parts = {name: ManifestDataset(run_dir, view="pairs", split=name, labels=[Col.ATTRIBUTE]) for name in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not parts[a].seeds & parts[b].seeds, (a, b)
    assert set().union(*(p.seeds for p in parts.values())) == set(frame[Col.SEED])
    assert sum(len(p) for p in parts.values()) == len(frame)
    for part in parts.values():  # every edit of a seed goes where its source goes
        assert len(part) == 3 * len(part.seeds)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"emotion_kept": True}, lambda f: ~f[Col.EMOTION_FLIPPED]),
        ({"emotion_kept": False}, lambda f: f[Col.EMOTION_FLIPPED]),
        ({"face_detected": True}, lambda f: f[Col.FACE_DETECTED_SOURCE] & f[Col.FACE_DETECTED_EDIT]),
        ({"face_detected": False}, lambda f: ~(f[Col.FACE_DETECTED_SOURCE] & f[Col.FACE_DETECTED_EDIT])),
        ({"identity_range": (0.5, 0.8)}, lambda f: f[Col.IDENTITY_COSINE].between(0.5, 0.8)),
        ({"attributes": ["age", "hair_lightness"]}, lambda f: f[Col.ATTRIBUTE].isin(["age", "hair_lightness"])),
        (
            {"emotion_kept": True, "face_detected": True, "attributes": ["gender"]},
            lambda f: ~f[Col.EMOTION_FLIPPED] & f[Col.FACE_DETECTED_EDIT] & (f[Col.ATTRIBUTE] == "gender"),
        ),
    ],
)
def test_filters_select_the_rows_pandas_selects(scored: tuple[Path, pd.DataFrame], options: dict, expected) -> None:
    run_dir, frame = scored
    dataset = ManifestDataset(run_dir, view="pairs", **options)
    chosen = frame[expected(frame)]
    assert len(dataset) == len(chosen) > 0
    assert sorted(dataset.table.column(Col.IMAGE_SOURCE).to_pylist()) == sorted(chosen[Col.IMAGE_SOURCE])


def test_items_are_image_tensors_with_labels(scored: tuple[Path, pd.DataFrame]) -> None:
    run_dir, frame = scored
    dataset = ManifestDataset(run_dir, view="pairs", image="edit", attributes=["age"])
    image, labels = dataset[3]
    row = frame[frame[Col.IMAGE_EDIT] == dataset.table.column(Col.IMAGE_EDIT)[3].as_py()].iloc[0]
    expected = torch.from_numpy(read_png(run_dir / row[Col.IMAGE_EDIT]).copy()).permute(2, 0, 1).float() / 255
    assert image.dtype == torch.float32 and torch.equal(image, expected)
    assert labels[Col.SEED] == row[Col.SEED] and labels[Col.ATTRIBUTE] == "age"
    assert labels[Col.EMOTION_EDIT] == EMOTION_LABELS.index(row[Col.EMOTION_EDIT])
    assert labels[Col.EMOTION_FLIPPED] == row[Col.EMOTION_FLIPPED]
    images, batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 8, 8) and batch[Col.SEED].dtype == torch.int64


def test_an_unscored_run_loads_source_images_and_refuses_score_filters(unscored: Path) -> None:
    dataset = ManifestDataset(unscored, view="pairs")
    assert len(dataset) == 8 and dataset.label_columns == [Col.SEED]  # all-null columns are not labels
    image, labels = dataset[0]
    assert image.shape == (3, 64, 64) and image.min() >= 0.0 and image.max() <= 1.0
    with pytest.raises(ManifestError, match="filter emotion_kept: column 'emotion_flipped' is not scored"):
        ManifestDataset(unscored, view="pairs", emotion_kept=True)
    with pytest.raises(ManifestError, match="labels: columns \\['nope'\\]"):
        ManifestDataset(unscored, view="pairs", labels=["nope"])


def test_label_filters_keep_what_the_ensemble_vouches_for(scored: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets import load_dataset

    run_dir, frame = scored
    wanted = frame[(frame[Col.EMOTION_CONFIDENCE_SOURCE] >= 0.5) & frame[Col.EMOTION_AGREEMENT_SOURCE]]
    assert 0 < len(wanted) < len(frame) / 2
    dataset = ManifestDataset(run_dir, view="pairs", min_confidence=0.5, emotion_agreement=True, labels=[Col.EMOTION_SOURCE])
    assert len(dataset) == len(wanted) and dataset.seeds == set(wanted[Col.SEED])
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    hugging = load_dataset(
        "parquet",
        data_files=str(run_dir / "manifest" / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
        filters=hf_label_filters(min_confidence=0.5, emotion_agreement=True),
    )
    assert sorted(hugging[Col.SEED]) == sorted(wanted[Col.SEED])
    assert hf_label_filters() is None
    with pytest.raises(ConfigError, match=r"min_confidence: expected a probability in \[0, 1\], got 1.5"):
        ManifestDataset(run_dir, view="pairs", min_confidence=1.5)
    with pytest.raises(ConfigError, match=r"min_confidence: expected a probability"):
        hf_label_filters(min_confidence=-0.1)


def test_label_filters_on_an_unscored_run_are_refused(unscored: Path) -> None:
    with pytest.raises(ManifestError, match=r"filter min_confidence: column 'emotion_confidence_source' is not scored"):
        ManifestDataset(unscored, view="pairs", min_confidence=0.6)
    with pytest.raises(ManifestError, match=r"filter emotion_agreement: column 'emotion_agreement_source' is not scored"):
        ManifestDataset(unscored, view="pairs", emotion_agreement=True)
