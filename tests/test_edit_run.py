"""A whole editing run on the demo models: discover, train, generate with every method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_schemas import Col
from pipeline.config import parse_config
from pipeline.discovery import collect_samples_on_disk, discover, ensure_sample_shard, read_report
from pipeline.evaluation import summarise
from pipeline.images import read_png
from pipeline.manifest import read_manifest
from pipeline.models.dcgan import load_dcgan
from pipeline.run import generate_shard, prepare_run
from pipeline.scoring import load_scorer
from pipeline.train_editors import required_editors, train_editor


@pytest.mark.slow
def test_every_method_produces_scored_edits(tmp_path: Path) -> None:
    config = parse_config(
        {
            "sources": {"count": 2, "first_seed": 500},
            "discovery": {"samples": 120, "shard_size": 120},
            "training": {"steps": 2, "classifier_epochs": 2, "batch_size": 8},
            "edits": {
                "directory": str(tmp_path / "models"),
                "attributes": ["hair_lightness"],
                "strengths": [4.0],
                "methods": ["linear", "linear_projected", "editor", "editor_hfld", "refined"],
                "refine_steps": 2,
            },
            "scoring": {"attributes": False},
            "device": "cpu",
        }
    )
    generator = load_dcgan()
    ensure_sample_shard(config, 0, generator, load_scorer("cpu", False))
    samples = collect_samples_on_disk(config)
    discover(config, samples, provenance={"generator": "dcgan"})
    for attribute, hfld_lambda in required_editors(config):
        train_editor(config, generator, samples, attribute, hfld_lambda)

    run_dir = prepare_run(config, tmp_path / "run")
    generate_shard(config, run_dir, 0)
    frame = read_manifest(run_dir).to_pandas()
    assert len(frame) == 2 * 5
    assert sorted(frame[Col.EDITOR].unique()) == ["editor", "editor_hfld", "linear", "linear_projected", "refined"]
    linear = frame[frame[Col.EDITOR] == "linear"].iloc[0]
    moved = np.asarray(linear[Col.LATENT_EDIT]) - np.asarray(linear[Col.LATENT])
    assert np.linalg.norm(moved) == pytest.approx(4.0, rel=1e-5)
    assert frame[Col.IDENTITY_COSINE].between(-1, 1).all() and (frame[Col.IDENTITY_COSINE] < 1).all()
    assert (frame[Col.LANDMARK_NME] > 0).all()
    assert frame[Col.EMOTION_PROBS_EDIT].map(len).eq(7).all()
    threshold = read_report(tmp_path / "models")["success_thresholds"]["hair_lightness"]
    before, after = frame[Col.ATTRIBUTE_SCORE_SOURCE], frame[Col.ATTRIBUTE_SCORE_EDIT]
    crossed = ((before < threshold) & (after > threshold)) | ((before >= threshold) & (after < threshold))
    assert frame[Col.ATTRIBUTE_REACHED].tolist() == crossed.tolist()
    first = frame.iloc[0]
    assert read_png(run_dir / first[Col.IMAGE_EDIT]).shape == (64, 64, 3)
    assert summarise(frame)["edits"].sum() == 10
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report" / "hfld-evaluation.md").read_text()
    assert f"| hair_lightness | 4.000 | editor_hfld | {config.edits.hfld_lambdas[0]:.3f} |" in report
    assert (tmp_path / "report" / "hfld-evaluation-hair_lightness-sheet.png").is_file()
