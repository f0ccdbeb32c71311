"""Target expressions: exact class counts, faces the ensemble vouches for, and resumable shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data_schemas import EMOTION_LABELS, Col
from pipeline.storage.card import write_card
from pipeline.config import parse_config
from pipeline.stages.discovery import collect_samples_on_disk, discover, ensure_sample_shard
from pipeline.editing.directions import load_direction
from pipeline.errors import ConfigError
from pipeline.expressions import accepted_step, candidate_seed, plan_targets, target_counts
from pipeline.images import read_png
from pipeline.storage.manifest import read_manifest
from pipeline.generators.dcgan import load_dcgan
from pipeline.generators.base import to_uint8
from pipeline.storage.layout import prepare_run, shard_path
from pipeline.stages.generate import generate_shard
from pipeline.scoring import load_scorer
from pipeline.storage.summary import RunManifest, summarize


def test_counts_follow_the_shares_exactly() -> None:
    config = parse_config({"sources": {"count": 10, "expressions": {"happy": 0.5, "sad": 0.3, "neutral": 0.2}}})
    assert target_counts(config) == {"happy": 5, "sad": 3, "neutral": 2}
    targets = plan_targets(config)
    assert sorted(targets) == sorted(["happy"] * 5 + ["sad"] * 3 + ["neutral"] * 2)
    assert targets[:3] != ["happy"] * 3  # interleaved, so every shard gets a mix
    thirds = parse_config({"sources": {"count": 7, "expressions": {"happy": 1, "sad": 1, "surprise": 1}}})
    assert sum(target_counts(thirds).values()) == 7 and max(target_counts(thirds).values()) == 3
    assert plan_targets(parse_config({})) == []
    # Every slot's candidates are its own: no seed is shared between slots.
    seeds = {candidate_seed(config, slot, attempt) for slot in range(10) for attempt in range(5)}
    assert len(seeds) == 50 and candidate_seed(config, 3, 0) == config.sources.first_seed + 3


def test_acceptance_needs_the_target_agreement_and_confidence() -> None:
    happy, neutral = np.eye(7)[3], np.eye(7)[6]
    steps = np.stack([
        np.stack([neutral, neutral]),  # step 0: neutral
        np.stack([happy * 0.9 + neutral * 0.1, neutral]),  # models disagree
        np.stack([happy * 0.55 + neutral * 0.45, happy * 0.55 + neutral * 0.45]),  # agree, 0.55
        np.stack([happy * 0.8 + neutral * 0.2, happy]),  # agree, 0.9
    ])
    faces = np.ones(4, dtype=bool)
    assert accepted_step(steps, faces, "happy", 0.6) == 3
    assert accepted_step(steps, faces, "happy", 0.5) == 2
    assert accepted_step(steps, faces, "neutral", 0.6) == 0
    assert accepted_step(steps, faces, "sad", 0.1) is None
    # An image the detector finds no face in is never accepted, whatever the emotion models say.
    assert accepted_step(steps, np.array([True, True, False, True]), "happy", 0.5) == 3


def test_shares_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"sources.expressions: shares must be positive numbers, got \{'sad': 0.0\}"):
        parse_config({"sources": {"expressions": {"happy": 1.0, "sad": 0.0}}})
    with pytest.raises(ConfigError, match=r"sources.expressions.joy.\[key\]: input should be 'angry'"):
        parse_config({"sources": {"expressions": {"joy": 1.0}}})
    with pytest.raises(ConfigError, match="scoring.enabled: target expressions need"):
        parse_config({"sources": {"expressions": {"happy": 1.0}}, "scoring": {"enabled": False}})
    # A run without targets keeps the id it had before target expressions existed.
    assert parse_config({}).run_id == parse_config({"sources": {"min_confidence": 0.9}}).run_id


@pytest.mark.slow
def test_a_run_writes_the_requested_counts_and_resumes_unchanged(tmp_path: Path) -> None:
    config = parse_config({
        "sources": {
            "count": 6, "shard_size": 3, "first_seed": 700,
            "expressions": {"happy": 0.5, "neutral": 0.5},
            "min_confidence": 0.5, "expression_steps": 6, "max_candidates": 40,
        },
        "discovery": {"samples": 400, "shard_size": 400},
        "training": {"classifier_epochs": 2},
        "edits": {"directory": str(tmp_path / "models"), "attributes": ["hair_lightness"], "strengths": [3.0], "methods": ["linear"], "lock": {"candidates": 1}},
        "scoring": {"attributes": False},
        "device": "cpu",
    })  # fmt: skip
    generator = load_dcgan()
    ensure_sample_shard(config, 0, generator, load_scorer("cpu", False))
    discover(config, collect_samples_on_disk(config), provenance={"generator": "test"})
    run_dir = prepare_run(config, tmp_path / "run")
    for index in (0, 1):
        generate_shard(config, run_dir, index)
    frame = read_manifest(run_dir).to_pandas()
    sources = frame.drop_duplicates(Col.SEED).set_index(Col.SEED_ORIGINAL).sort_index()
    assert sources[Col.EXPRESSION_TARGET].value_counts().to_dict() == {"happy": 3, "neutral": 3}
    assert sources.index.tolist() == list(range(700, 706))
    assert (sources[Col.EMOTION_SOURCE] == sources[Col.EXPRESSION_TARGET]).all()
    assert sources[Col.EMOTION_AGREEMENT_SOURCE].all() and (sources[Col.EMOTION_CONFIDENCE_SOURCE] >= 0.5).all()
    assert sources[Col.FACE_DETECTED_SOURCE].all()
    step = config.sources.expression_step
    for original, row in sources.iterrows():
        slot = original - 700
        assert row[Col.SEED] == candidate_seed(config, slot, row[Col.EXPRESSION_REJECTED])
        direction = load_direction(tmp_path / "models" / "directions" / f"emotion_{row[Col.EXPRESSION_TARGET]}.safetensors")
        expected = direction.edit(generator.sample_latents([row[Col.SEED]]), row[Col.EXPRESSION_STEPS] * step)
        np.testing.assert_allclose(row[Col.LATENT], expected.reshape(-1).numpy(), atol=1e-5)
        with torch.no_grad():
            rendered = to_uint8(generator.synthesize(torch.from_numpy(np.asarray(row[Col.LATENT])).view(1, -1))).numpy()[0]
        assert (read_png(run_dir / row[Col.IMAGE_SOURCE]) == rendered).all()
    # The appearance edit starts from the accepted face.
    hair = load_direction(tmp_path / "models" / "directions" / "hair_lightness.safetensors")
    for _, row in frame.iterrows():
        moved = np.asarray(row[Col.LATENT_EDIT]) - np.asarray(row[Col.LATENT])
        assert abs(abs(float(moved @ hair.vector.numpy())) - 3.0) < 1e-4

    # A shard lost to a crash is made again identically; the counts do not change.
    before = read_manifest(run_dir).to_pandas().set_index([Col.SEED, Col.ATTRIBUTE])
    shard_path(run_dir, 1).unlink()
    generate_shard(config, run_dir, 1)
    after = read_manifest(run_dir).to_pandas().set_index([Col.SEED, Col.ATTRIBUTE])
    assert after.index.sort_values().tolist() == before.index.sort_values().tolist()
    for column in (Col.EXPRESSION_TARGET, Col.EXPRESSION_STEPS, Col.EXPRESSION_REJECTED, Col.IMAGE_SOURCE_SHA256, Col.IMAGE_EDIT_SHA256):
        assert after.loc[before.index, column].tolist() == before[column].tolist(), column

    yields = summarize(RunManifest.read(run_dir))["expressions"]
    assert {label: y["faces"] for label, y in yields.items()} == {"happy": 3, "neutral": 3}
    for label, y in yields.items():
        tried = 3 + int(sources.loc[sources[Col.EXPRESSION_TARGET] == label, Col.EXPRESSION_REJECTED].sum())
        assert y["candidates"] == tried and y["acceptance_rate"] == pytest.approx(3 / tried)
    card = write_card(run_dir).read_text()
    assert "## Target expressions" in card and "| happy | 0.500 | 3 |" in card


@pytest.mark.slow
def test_the_label_report_judges_free_and_targeted_sources(tmp_path: Path) -> None:
    from pipeline.stages.label_report import free_config, write_label_report

    config = parse_config({
        "sources": {"count": 4, "shard_size": 4, "first_seed": 900, "expressions": {"happy": 1, "neutral": 1},
                    "min_confidence": 0.5, "expression_steps": 6, "max_candidates": 40},
        "discovery": {"samples": 400, "shard_size": 400},
        "training": {"classifier_epochs": 2},
        "edits": {"directory": str(tmp_path / "models")},
        "scoring": {"attributes": False},
        "device": "cpu",
    })  # fmt: skip
    free = free_config(config)
    assert free.sources.expressions == {} and free.sources.first_seed == 900 + 4 * 40
    report = write_label_report(config, tmp_path / "docs", runs=tmp_path / "runs", probe_slots=2, probe_candidates=2)
    text = report.read_text()
    for section in ("## Which expressions the generator can be steered to", "## Agreement of the held-out judge",
                    "## Acceptance of target expressions", "## Accepted faces per target"):  # fmt: skip
        assert section in text
    reach = pd.read_csv(tmp_path / "docs" / "labels-reachability.csv")
    assert reach["expression"].tolist() == list(EMOTION_LABELS) and (reach["probe_sources"] == 2).all()
    agreement = pd.read_csv(tmp_path / "docs" / "labels-agreement.csv")
    targeted = agreement[agreement["sources_set"] == "target-expression sources (accepted)"]
    assert set(targeted["pipeline_label"]) <= {"all", "happy", "neutral"}
    assert ((agreement["low"] <= agreement["agreement"]) & (agreement["agreement"] <= agreement["high"])).all()
    assert (tmp_path / "docs" / "labels-happy.png").is_file() and (tmp_path / "docs" / "labels-neutral.png").is_file()
    assert "## What the judge says instead" in text
    targets = read_manifest(tmp_path / "runs" / "labels-targets").to_pandas()
    assert targets[Col.EXPRESSION_TARGET].value_counts().to_dict() == {"happy": 2, "neutral": 2}
    assert read_manifest(tmp_path / "runs" / "labels-free").to_pandas()[Col.EXPRESSION_TARGET].isna().all()
