"""`exprlock inspect` and the dataset card, on a scored run with known values and a real unscored run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from data_schemas import COLUMNS, CURRENT_VERSION, SCHEMA_METADATA_KEY, Col, schema_for_version
from flows.cli import app
from pipeline.storage.card import model_provenance, write_card
from pipeline.storage.layout import CARD_FILE
from pipeline.errors import ManifestError
from pipeline.storage.splits import SPLITS, assign_splits
from pipeline.storage.summary import NOT_SCORED, RunManifest, summarize, write_plots
from pipeline.models.assets import REGISTRY

runner = CliRunner()


def test_summary_of_a_scored_run_matches_its_rows(scored: tuple[Path, pd.DataFrame]) -> None:
    run_dir, frame = scored
    summary = summarize(RunManifest.read(run_dir))
    assert (summary["rows"], summary["shards"], summary["schema_version"]) == (len(frame), 2, CURRENT_VERSION)
    assert summary["columns"] == list(COLUMNS)
    assert summary["seeds"] == {"min": 0, "max": 39, "unique": 40}
    assert summary["flip_rate"] == pytest.approx(frame[Col.EMOTION_FLIPPED].mean(), abs=1e-6)
    by_attribute = frame.groupby(Col.ATTRIBUTE)[Col.EMOTION_FLIPPED].mean().to_dict()
    assert summary["flip_rate_by_attribute"] == pytest.approx(by_attribute)
    sources = frame.drop_duplicates(Col.SEED)
    assert summary[Col.EMOTION_SOURCE] == sources[Col.EMOTION_SOURCE].value_counts().to_dict()  # faces, not rows
    images = summary["images"]
    assert (images["sources"], images["edits"], images["images"]) == (40, 120, 160)
    splits = assign_splits(sources[Col.SEED].to_numpy())
    assert {s: c["faces"] for s, c in images["by_split"].items()} == {s: int((splits == s).sum()) for s in SPLITS}
    assert {s: c["images"] for s, c in images["by_split"].items()} == {s: 4 * int((splits == s).sum()) for s in SPLITS}
    labels = pd.concat([sources[Col.EMOTION_SOURCE], frame[Col.EMOTION_EDIT]]).value_counts()
    assert images["labels"] == labels.to_dict()
    assert summary[Col.ATTRIBUTE] == {"age": 40, "gender": 40, "hair_lightness": 40}
    identity = frame[Col.IDENTITY_COSINE].to_numpy(np.float64)
    stats = summary["metrics"][Col.IDENTITY_COSINE]
    assert stats["mean"] == pytest.approx(identity.mean()) and stats["p95"] == pytest.approx(np.quantile(identity, 0.95))
    assert Col.STRENGTH not in summary["metrics"]  # an edit parameter, not a score
    assert f"{Col.ATTRIBUTES_SOURCE}.age" in summary["metrics"]  # struct fields are flattened
    no_face = int((~frame[Col.FACE_DETECTED_EDIT]).sum())
    assert summary["failures"][f"no face ({Col.FACE_DETECTED_EDIT})"] == no_face > 0
    assert summary["failures"][f"missing {Col.LANDMARK_NME}"] == no_face
    assert summary["failures"][f"no face ({Col.FACE_DETECTED_SOURCE})"] == 0
    assert f"missing {Col.IDENTITY_COSINE}" not in summary["failures"]  # only columns with gaps


def test_an_unscored_run_is_reported_as_not_scored(unscored: Path) -> None:
    summary = summarize(RunManifest.read(unscored))
    assert summary["rows"] == 8 and summary["schema_version"] == CURRENT_VERSION
    for key in (Col.ATTRIBUTE, Col.EMOTION_SOURCE, "flip_rate", "failures", "metrics", "rates"):
        assert summary[key] == NOT_SCORED, key
    assert summary["generators"] == [
        {Col.GENERATOR: "dcgan:dcgan-digiface", Col.GENERATOR_SHA256: REGISTRY["dcgan-digiface"].sha256, "rows": 8}
    ]
    assert write_plots(RunManifest.read(unscored)) == []


def test_an_older_schema_without_score_columns_is_summarised(unscored: Path, tmp_path: Path) -> None:
    """A schema 1.0 manifest has none of the score columns: still summarised, all 'not scored'."""
    old = schema_for_version("1.0")
    for path in sorted((unscored / "manifest").glob("shard-*.parquet")):
        table = pq.read_table(path).select(old.names)
        record = {"schema_version": "1.0", "creator": "exprlock 0.1.0", "run_id": "old"}
        table = table.cast(old).replace_schema_metadata({SCHEMA_METADATA_KEY: json.dumps(record).encode()})
        (tmp_path / "manifest").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "manifest" / path.name)
    summary = summarize(RunManifest.read(tmp_path))
    assert summary["schema_version"] == "1.0" and summary["columns"] == old.names
    assert summary["flip_rate"] == summary["metrics"] == summary[Col.EMOTION_EDIT] == NOT_SCORED


def test_plots_show_each_score_distribution(scored: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    run_dir, frame = scored
    written = write_plots(RunManifest.read(run_dir), out_dir=tmp_path)
    names = {p.stem for p in written}
    assert {Col.IDENTITY_COSINE, Col.EMOTION_JS, Col.LANDMARK_NME, "emotions", "flip_rate_by_attribute"} <= names
    for path in written:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 5, f"{path.name} is blank"


def test_cli_inspect_json_has_rows_columns_version_and_plots(scored: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    run_dir, frame = scored
    result = runner.invoke(app, ["inspect", str(run_dir), "--json", "--plots", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["rows"], report["columns"], report["schema_version"]) == (len(frame), list(COLUMNS), CURRENT_VERSION)
    assert sorted(Path(p).name for p in report["plots"]) == sorted(p.name for p in tmp_path.glob("*.png"))


def test_cli_inspect_text_says_not_scored(unscored: Path) -> None:
    result = runner.invoke(app, ["inspect", str(unscored), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "8 (8 source faces, 0 edits)" in result.output and "8 (source, edit) pairs in 2 shards" in result.output
    assert f"flip rate       {NOT_SCORED}" in result.output


def test_cli_inspect_of_a_directory_without_a_manifest_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a run directory (no config.json and no manifest shards)" in result.output and "Traceback" not in result.output


def test_a_foreign_parquet_file_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "manifest").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "manifest" / "shard-00000.parquet")
    with pytest.raises(ManifestError, match="shard-00000.parquet: no exprlock schema metadata"):
        summarize(RunManifest.read(tmp_path))


def test_card_names_models_licences_counts_and_metrics(scored: tuple[Path, pd.DataFrame]) -> None:
    run_dir, frame = scored
    card = write_card(run_dir)
    assert card == run_dir / CARD_FILE
    text = card.read_text()
    for name in ("dcgan-digiface", "fer-mini-xception", "sface"):
        asset = REGISTRY[name]
        assert asset.sha256 in text and asset.licence in text
    assert "`gan-face-generate==1.1.1`" in text  # registry source found by digest
    assert "Use is restricted by the terms of" in text and "non-commercial" in text
    identity = frame[Col.IDENTITY_COSINE].to_numpy(np.float64)
    assert f"| {Col.IDENTITY_COSINE} | {len(frame)} | 0 | {identity.mean():.4f} |" in text
    for line in text.splitlines():
        if line.startswith("![") and "](" in line:
            assert (run_dir / line.split("](")[1].rstrip(")")).is_file(), line
    assert f"| 160 | 40 | 120 | {len(frame)} | 2 | 0..39 | {CURRENT_VERSION} |" in text  # images, faces, edits, pair rows
    assert "sources:\n  count: 40" in text  # the config that made it
    assert "## Generator\n\nNot recorded" in text  # written by the manifest writer alone, not by a shard


def test_provenance_keeps_a_user_supplied_model_apart(scored: tuple[Path, pd.DataFrame]) -> None:
    run_dir, _ = scored
    models = {m["name"]: m for m in model_provenance(RunManifest.read(run_dir))}
    assert models["dcgan:dcgan-digiface"]["asset"] is REGISTRY["dcgan-digiface"]
    assert models["sface"]["role"] == "identity" and models["sface"]["licence"] == REGISTRY["sface"].licence


def test_card_of_an_unscored_run_states_what_is_missing(unscored: Path) -> None:
    text = write_card(unscored).read_text()
    assert "carries no expression, identity or landmark scores" in text
    assert "64x64 faces learned from DigiFace-1M" in text
    assert "- **DCGAN** `dcgan:dcgan-digiface`" in text and "- latent space: z ~ N(0, I) in R^100" in text
    assert "- W average (the truncation centre): none: no mapping network" in text


def test_card_names_the_terms_of_a_model_behind_the_editors_loss(scored: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    """Editors trained on 3DDFA_V2's coefficients carry the Basel Face Model's terms into the card."""
    run_dir = tmp_path / "run"
    shutil.copytree(scored[0], run_dir)
    record = json.loads((run_dir / "config.json").read_text())
    text = write_card(run_dir).read_text()
    licence = REGISTRY["tddfa-mobilenet"].licence
    assert licence not in text
    record["config"]["edits"].update(methods=["editor_preserve"], preserve=[{"landmarks": 0.0, "expression": 1.0}])
    (run_dir / "config.json").write_text(json.dumps(record))
    assert licence in write_card(run_dir).read_text()


def test_card_says_when_the_classifiers_ran_in_reduced_precision(scored: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(scored[0], run_dir)
    statement = "The torch classifiers (emotion, identity, gender and age) ran in bfloat16"
    assert statement not in write_card(run_dir).read_text()
    record = json.loads((run_dir / "config.json").read_text())
    record["config"]["scoring"]["precision"] = "bfloat16"
    (run_dir / "config.json").write_text(json.dumps(record))
    assert statement in write_card(run_dir).read_text()
