"""The image view: each source face once, each edit once, labelled, grouped and self-describing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from data_schemas import EMOTION_LABELS, PROBABILITY_COLUMNS, SCHEMA_METADATA_KEY, Col
from pipeline.errors import ConfigError, ManifestError
from pipeline.images import read_png
from pipeline.storage.dataset import ManifestDataset, hf_label_filters
from pipeline.storage.image_view import read_image_table, select
from pipeline.storage.splits import SPLITS


def test_the_image_view_yields_each_image_exactly_once_and_no_face_in_two_splits(scored: tuple[Path, pd.DataFrame]) -> None:
    run_dir, frame = scored
    parts = {split: ManifestDataset(run_dir, split=split) for split in SPLITS}
    paths = [path for part in parts.values() for path in part.table.column("image").to_pylist()]
    expected = set(frame[Col.IMAGE_SOURCE]) | set(frame[Col.IMAGE_EDIT])
    assert len(paths) == len(set(paths)) == len(expected) and set(paths) == expected
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not parts[a].seeds & parts[b].seeds
    whole = ManifestDataset(run_dir)
    roles = whole.table.column("role").to_pylist()
    assert roles.count("source") == frame[Col.SEED].nunique() and roles.count("edit") == len(frame)
    assert whole.label_columns == ["group", "label", "role"]  # attribute is null on sources, so not a default label


def test_items_carry_the_label_read_on_that_very_image(
    scored: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, frame = scored
    monkeypatch.chdir(run_dir.parent)
    dataset = ManifestDataset(run_dir.name, roles=["edit"], attributes=["age"])  # a relative path...
    monkeypatch.chdir(tmp_path)  # ...still loads after the working directory changes
    assert len(dataset) == 40
    image, labels = dataset[5]
    row = frame[frame[Col.IMAGE_EDIT] == dataset.table.column("image")[5].as_py()].iloc[0]
    expected = torch.from_numpy(read_png(run_dir / row[Col.IMAGE_EDIT]).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(image, expected) and dataset.paths[5] == run_dir / row[Col.IMAGE_EDIT]
    assert labels == {"group": row[Col.SEED], "label": EMOTION_LABELS.index(row[Col.EMOTION_EDIT]), "role": "edit",
                      "attribute": "age", "strength": 2.0, "method": "editor_hfld",
                      "expression_locked": row[Col.EXPRESSION_LOCKED]}  # fmt: skip
    source = ManifestDataset(run_dir, roles=["source"])
    first = frame.drop_duplicates(Col.SEED).set_index(Col.SEED)
    for index in (0, 7):
        _, labels = source[index]
        assert labels["label"] == EMOTION_LABELS.index(first.loc[labels["group"], Col.EMOTION_SOURCE])


def test_lock_and_edit_filters_select_edits_and_keep_sources(scored: tuple[Path, pd.DataFrame]) -> None:
    run_dir, frame = scored
    table = read_image_table(run_dir)
    sources = frame[Col.SEED].nunique()
    locked = select(table, expression_locked=True)
    assert locked.column("role").to_pylist().count("source") == sources
    assert sorted(locked.filter(locked.column("role").to_numpy(zero_copy_only=False) == "edit").column("image").to_pylist()) == sorted(
        frame.loc[frame[Col.EXPRESSION_LOCKED], Col.IMAGE_EDIT]
    )
    only = ManifestDataset(run_dir, roles=["edit"], expression_locked=True)
    assert len(only) == int(frame[Col.EXPRESSION_LOCKED].sum()) > 0
    pairs = ManifestDataset(run_dir, view="pairs", image="edit", expression_locked=False)
    assert len(pairs) == int((~frame[Col.EXPRESSION_LOCKED]).sum())
    assert hf_label_filters(expression_locked=True) == [(Col.EXPRESSION_LOCKED, "==", True)]
    confident = select(table, min_confidence=0.5, roles=["edit"])
    assert confident.num_rows == int((frame[Col.EMOTION_CONFIDENCE_EDIT] >= 0.5).sum())  # the edit's own confidence
    assert select(table, attributes=["gender"]).num_rows == sources + 40
    with pytest.raises(ConfigError, match="roles: expected source and/or edit"):
        select(table, roles=["sources"])
    with pytest.raises(ConfigError, match="identity_range: a filter of view='pairs'"):
        ManifestDataset(run_dir, identity_range=(0.5, 1.0))


def test_lock_filters_on_a_run_without_the_lock_are_refused(unscored: Path) -> None:
    with pytest.raises(ManifestError, match="filter expression_locked: 'expression_locked' is not scored"):
        ManifestDataset(unscored, expression_locked=True, roles=["source", "edit"])
    with pytest.raises(ManifestError, match="filter expression_locked: column 'expression_locked' is not scored"):
        ManifestDataset(unscored, view="pairs", expression_locked=True)


def test_the_parquet_says_what_its_numbers_mean_and_keeps_nullable_integers(scored: tuple[Path, pd.DataFrame]) -> None:
    run_dir, _ = scored
    shard = next((run_dir / "manifest").glob("shard-*.parquet"))
    record = json.loads(pq.read_schema(shard).metadata[SCHEMA_METADATA_KEY])
    assert record["class_order"] == dict.fromkeys(PROBABILITY_COLUMNS, list(EMOTION_LABELS))
    assert record["label_vocabulary"][Col.EMOTION_SOURCE] == list(EMOTION_LABELS)
    frame = pd.read_parquet(run_dir / "manifest")  # the documented reader, without options
    assert str(frame[Col.LOCK_CHOSEN].dtype) == "Int32" and str(frame[Col.EXPRESSION_STEPS].dtype) == "Int32"
    assert str(frame[Col.EXPRESSION_LOCKED].dtype) == "boolean" and str(frame[Col.FACE_DETECTED_EDIT].dtype) == "boolean"
    images = read_image_table(run_dir).to_pandas()
    assert str(images["label"].dtype) == "Int64" and str(images["expression_locked"].dtype) == "boolean"
    assert images.loc[images["role"] == "source", "expression_locked"].isna().all()
    np.testing.assert_allclose(np.stack(images["emotion_probs"]).sum(axis=1), 1.0, atol=1e-5)
