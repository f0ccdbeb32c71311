"""Whole editing runs, on the demo DCGAN and on a StyleGAN2 checkpoint: discover, train, generate."""

from __future__ import annotations

import hashlib
import json
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data_schemas import Col
from pipeline.storage.card import write_card
from pipeline.storage.dataset import ManifestDataset
from pipeline.config import LockConfig, PreservationWeights, RunConfig, parse_config
from pipeline.stages.discovery import collect_samples_on_disk, discover, ensure_sample_shard
from pipeline.editing.files import read_report
from pipeline.editing.editor import load_editor
from pipeline.edits import edit_directions
from pipeline.stages.evaluation import cost_table, load_edits, summarise
from pipeline.images import read_png
from pipeline.storage.manifest import read_manifest
from pipeline.generators.dcgan import load_dcgan
from pipeline.generators.factory import load_generator
from pipeline.generators.base import FaceGenerator
from pipeline.storage.layout import GENERATOR_FILE, prepare_run
from pipeline.stages.generate import generate_shard, write_contact_sheet
from pipeline.scoring import load_scorer
from pipeline.editing.files import editor_path
from pipeline.stages.train_editors import required_editors, train_editor
from nvidia_fixtures import dump_nvidia, nvidia_stylegan3, stylegan3_config
from pipeline.generators.stylegan3 import StyleGAN3Generator
from stylegan2_fixtures import save_rosinality, small_config, small_generator

ALL_METHODS = ["linear", "linear_projected", "editor", "editor_hfld", "refined"]


def small_edit_config(models: Path, attribute: str, strength: float, **settings: object) -> RunConfig:
    """Every method on a few sources, with discovery and training cut to a few seconds."""
    return parse_config(
        {
            "discovery": {"samples": 120, "shard_size": 120},
            "training": {"steps": 2, "classifier_epochs": 2, "batch_size": 8},
            "edits": {
                "directory": str(models),
                "attributes": [attribute],
                "strengths": [strength],
                "methods": ALL_METHODS,
                "refine_steps": 2,
                "lock": {"candidates": 1},
            },
            "scoring": {"attributes": False},
            "device": "cpu",
            **settings,
        }
    )


def train_models(config: RunConfig, generator: FaceGenerator) -> None:
    """Discovery on one shard of samples, then every editor the config's methods need."""
    ensure_sample_shard(config, 0, generator, load_scorer("cpu", config.scoring.attributes))
    samples = collect_samples_on_disk(config)
    discover(config, samples, provenance={"generator": "test"})
    for attribute, weights in required_editors(config):
        train_editor(config, generator, samples.latents, attribute, weights)


@pytest.mark.slow
def test_every_method_produces_scored_edits(tmp_path: Path) -> None:
    config = small_edit_config(
        tmp_path / "models", "hair_lightness", 4.0, sources={"count": 2, "first_seed": 500}
    )
    train_models(config, load_dcgan())
    run_dir = prepare_run(config, tmp_path / "run")
    generate_shard(config, run_dir, 0)
    frame = read_manifest(run_dir).to_pandas()
    assert len(frame) == 2 * 5
    assert sorted(frame[Col.EDITOR].unique()) == sorted(ALL_METHODS)
    linear = frame[frame[Col.EDITOR] == "linear"].iloc[0]
    moved = np.asarray(linear[Col.LATENT_EDIT]) - np.asarray(linear[Col.LATENT])
    assert np.linalg.norm(moved) == pytest.approx(4.0, rel=1e-5)
    assert frame[Col.IDENTITY_COSINE].between(-1, 1).all() and (frame[Col.IDENTITY_COSINE] < 1).all()
    assert (frame[Col.LANDMARK_NME] > 0).all()
    assert frame[Col.EMOTION_PROBS_EDIT].map(len).eq(7).all()
    assert (frame[Col.EDIT_SECONDS] > 0).all()  # what each edit cost, for the report's price per method
    threshold = read_report(tmp_path / "models")["success_thresholds"]["hair_lightness"]
    before, after = frame[Col.ATTRIBUTE_SCORE_SOURCE], frame[Col.ATTRIBUTE_SCORE_EDIT]
    crossed = ((before < threshold) & (after > threshold)) | ((before >= threshold) & (after < threshold))
    assert frame[Col.ATTRIBUTE_REACHED].tolist() == crossed.tolist()
    first = frame.iloc[0]
    assert read_png(run_dir / first[Col.IMAGE_EDIT]).shape == (64, 64, 3)
    assert summarise(frame)["edits"].sum() == 10
    images = ManifestDataset(run_dir).table.to_pandas()  # the image view of a real run: 2 faces, 10 edits, each once
    assert len(images) == 12 and images["image"].is_unique
    assert set(images["image"]) == set(frame[Col.IMAGE_SOURCE]) | set(frame[Col.IMAGE_EDIT])
    by_edit = frame.set_index(Col.IMAGE_EDIT)
    for row in images[images["role"] == "edit"].itertuples():
        assert row.label_name == by_edit.at[row.image, Col.EMOTION_EDIT] and row.method == by_edit.at[row.image, Col.EDITOR]
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report" / "hfld-evaluation.md").read_text()
    assert f"| hair_lightness | 4.000 | editor_hfld | {config.edits.hfld_lambdas[0]:.3f} |" in report
    assert (tmp_path / "report" / "hfld-evaluation-hair_lightness-sheet.png").is_file()
    # The held-out judges scored every source and edit, and their reductions carry intervals.
    assert "## Methods compared (held-out judges)" in report
    assert "## Agreement of the held-out emotion judge" in report
    reduced = pd.read_csv(tmp_path / "report" / "hfld-evaluation-reductions.csv")
    assert {"pipeline", "pyemotion", "dlib68"} <= set(reduced["scorer"])
    assert {"base", "matched", "reduction", "low", "high"} <= set(reduced.columns)
    long = pd.read_csv(tmp_path / "report" / "hfld-evaluation.csv")
    assert set(long["metric"]) == {"emotion_js", "emotion_flip", "landmark_nme", "identity_cosine", "attribute_success"}
    assert set(long["scorer"]) == {"pipeline", "pyemotion", "dlib68", "dlib68_aligned"}
    # What each method cost per edit, and the emotion judge's own noise on mirrored sources.
    assert "## Cost per edit" in report and "### Each emotion scorer against itself" in report
    costs = cost_table(load_edits([run_dir])).set_index([Col.ATTRIBUTE, Col.EDITOR]).loc["hair_lightness"]
    assert costs.at["editor", "seconds_per_edit"] == pytest.approx(frame.loc[frame[Col.EDITOR] == "editor", Col.EDIT_SECONDS].mean())
    assert costs.at["editor", "relative_to_editor"] == pytest.approx(1.0)


@pytest.mark.slow
def test_w_plus_editing_runs_unchanged_on_a_stylegan2_checkpoint(tmp_path: Path) -> None:
    """The same config on a StyleGAN2 file: directions, per-layer editors and edits live in W+."""
    checkpoint = save_rosinality(small_generator(small_config(resolution=32)), tmp_path / "stylegan2.pt")
    config = small_edit_config(
        tmp_path / "models",
        "skin_lightness",
        2.0,
        generator={"kind": "stylegan2", "checkpoint": str(checkpoint)},
        sources={"count": 3, "first_seed": 500},
    )
    generator, _, _ = load_generator("stylegan2", str(checkpoint), 1.0, "cpu")
    num_ws, w_dim = generator.latent_shape
    train_models(config, generator)
    weights = PreservationWeights(landmarks=config.edits.hfld_lambdas[0])
    editor = load_editor(editor_path(tmp_path / "models", "skin_lightness", weights), latent_shape=(num_ws, w_dim))
    assert editor.mode == "per_layer"

    run_dir = prepare_run(config, tmp_path / "run")
    generate_shard(config, run_dir, 0)
    frame = read_manifest(run_dir).to_pandas()
    assert len(frame) == 3 * len(ALL_METHODS)
    assert all(list(shape) == [num_ws, w_dim] for shape in frame[Col.LATENT_SHAPE])
    # The card says which StyleGAN2 it was and where its W average came from.
    record = json.loads((run_dir / GENERATOR_FILE).read_text())
    assert (record["family"], record["format"], record["config"]["resolution"]) == ("StyleGAN2", "rosinality", 32)
    assert record["w_avg"] == "checkpoint" and record["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    card = write_card(run_dir).read_text()
    assert "- **StyleGAN2** `stylegan2:stylegan2.pt`" in card and "- W average (the truncation centre): checkpoint" in card
    threshold = read_report(tmp_path / "models")["success_thresholds"]["skin_lightness"]
    for _, row in frame[frame[Col.EDITOR] == "editor_hfld"].iterrows():
        source = torch.tensor(row[Col.LATENT]).view(1, num_ws, w_dim)
        sign = edit_directions(np.array([row[Col.ATTRIBUTE_SCORE_SOURCE]]), threshold)
        with torch.no_grad():
            expected = editor(source, sign * row[Col.STRENGTH])
        edited = torch.tensor(row[Col.LATENT_EDIT]).view(1, num_ws, w_dim)
        torch.testing.assert_close(edited, expected)
        moved = edited - source
        assert not torch.allclose(moved[0, 0], moved[0, -1]), "a per-layer editor moves W+ layers differently"
        rendered = generator.render(edited).numpy()[0]
        # The run rendered a batch of three; float sums in another batch shape can round a
        # pixel the other way, never by more than one level.
        difference = np.abs(read_png(run_dir / row[Col.IMAGE_EDIT]).astype(int) - rendered.astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    refined = frame[frame[Col.EDITOR] == "refined"]
    assert (refined[Col.LANDMARK_NME] >= 0).all() and refined[Col.EMOTION_PROBS_EDIT].map(len).eq(7).all()


def random_stylegan3_pickle(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small conditional StyleGAN3-T (32 px, 2 classes) with random weights, as an NVIDIA pickle."""
    options = {"z_dim": 32, "w_dim": 32, "c_dim": 2, "img_resolution": 32, "img_channels": 3,
               "mapping_kwargs": {"num_layers": 2}, "channel_base": 512, "channel_max": 16}  # fmt: skip
    torch.manual_seed(3)
    generator = StyleGAN3Generator(stylegan3_config({"options": options}), class_index=0)
    with torch.no_grad():
        generator.synthesis.input.affine.weight.normal_(0, 0.3)
        generator.mapping.w_avg.normal_()
    g_ema = nvidia_stylegan3({"options": options}, generator.state_dict())
    return dump_nvidia(path, {"G_ema": g_ema, "G": None, "D": None}, monkeypatch)


@pytest.mark.slow
def test_w_plus_editing_runs_unchanged_on_a_conditional_stylegan3_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discovery, editor training and generate on a StyleGAN3 pickle, rendering class 1."""
    checkpoint = random_stylegan3_pickle(tmp_path / "stylegan3.pkl", monkeypatch)
    config = small_edit_config(
        tmp_path / "models",
        "skin_lightness",
        2.0,
        generator={"kind": "stylegan3", "checkpoint": str(checkpoint), "class_index": 1},
        sources={"count": 3, "first_seed": 500},
    )
    generator, name, _ = load_generator("stylegan3", str(checkpoint), 1.0, "cpu", 1)
    assert isinstance(generator, StyleGAN3Generator) and name == "stylegan3:stylegan3.pkl"
    train_models(config, generator)
    run_dir = prepare_run(config, tmp_path / "run")
    generate_shard(config, run_dir, 0)
    frame = read_manifest(run_dir).to_pandas()
    assert len(frame) == 3 * len(ALL_METHODS)
    assert all(list(shape) == list(generator.latent_shape) for shape in frame[Col.LATENT_SHAPE])
    assert frame[Col.GENERATOR_CLASS].eq(1).all()
    sources = generator.sample_latents([500, 501, 502])
    first = frame[frame[Col.SEED] == 500].iloc[0]
    torch.testing.assert_close(torch.tensor(first[Col.LATENT]).view(sources.shape[1:]), sources[0])
    assert frame[Col.EMOTION_PROBS_EDIT].map(len).eq(7).all()
    record = json.loads((run_dir / GENERATOR_FILE).read_text())
    assert (record["family"], record["format"], record["class_index"], record["classes"]) == ("StyleGAN3-T", "nvidia", 1, 2)
    card = write_card(run_dir).read_text()
    assert "- **StyleGAN3-T** `stylegan3:stylegan3.pkl`" in card and "- class rendered (one-hot c): 1" in card
    with pytest.raises(Exception, match=r"holds a StyleGAN3 generator but generator.kind is 'stylegan2'; set generator.kind: stylegan3"):
        load_generator("stylegan2", str(checkpoint), 1.0, "cpu", 1)


@pytest.mark.slow
def test_the_contact_sheet_gives_each_preserving_editor_its_own_column(tmp_path: Path) -> None:
    """Two `edits.preserve` entries with the same HFLD lambda are two methods, not one."""
    config = small_edit_config(tmp_path / "models", "hair_lightness", 3.0, sources={"count": 2, "first_seed": 900})
    preserve = [{"landmarks": 1000.0, "emotion": 30.0}, {"landmarks": 1000.0, "emotion": 0.0, "expression": 1.0}]
    config = parse_config({**config.model_dump(mode="json"), "edits": {
        **config.edits.model_dump(mode="json"), "methods": ["editor_preserve"], "preserve": preserve,
    }})  # fmt: skip
    train_models(config, load_dcgan())
    run_dir = prepare_run(config, tmp_path / "run")
    generate_shard(config, run_dir, 0)
    sheet = read_png(write_contact_sheet(run_dir))
    assert sheet.shape[1] == 3 * (64 * 2 + 2) + 2  # the source and one column per editor


@pytest.mark.slow
def test_the_lock_keeps_a_reaching_candidate_that_changes_the_emotion_least(tmp_path: Path) -> None:
    """The lock's choice, run against the same edits without it: where the plain edit reaches the
    attribute the kept one changes the emotion no more, and the flags match the manifest."""
    settings = {"sources": {"count": 3, "first_seed": 700}}
    plain = small_edit_config(tmp_path / "models", "hair_lightness", 3.0, **settings)
    edits = plain.edits.model_copy(update={"methods": ["editor_preserve"]})
    plain = plain.model_copy(update={"edits": edits})
    locked = plain.model_copy(update={"edits": edits.model_copy(update={"lock": LockConfig(candidates=3, max_change=0.05)})})
    train_models(plain, load_dcgan())
    frames = []
    for config, name in ((plain, "plain"), (locked, "locked")):
        run_dir = prepare_run(config, tmp_path / name)
        generate_shard(config, run_dir, 0)
        frames.append(read_manifest(run_dir).to_pandas().set_index(Col.SEED))
    plain_rows, locked_rows = frames

    weights = plain.edits.preserve[0].weights("hair_lightness")
    assert locked_rows[Col.PRESERVATION].tolist() == [dataclasses.asdict(weights)] * 3
    assert (locked_rows[Col.SHARD] == 0).all()
    assert plain_rows[Col.LOCK_CANDIDATES].isna().all() and (locked_rows[Col.LOCK_CANDIDATES] == 3).all()
    assert set(locked_rows[Col.LOCK_STRENGTH]) <= {1.5, 3.0, 4.5}
    assert locked_rows[Col.EXPRESSION_LOCKED].tolist() == (locked_rows[Col.EMOTION_JS] <= 0.05).tolist()
    reached = plain_rows[Col.ATTRIBUTE_REACHED]
    assert reached.any()
    assert (locked_rows.loc[reached, Col.EMOTION_JS] <= plain_rows.loc[reached, Col.EMOTION_JS] + 1e-6).all()
    assert locked_rows.loc[reached, Col.ATTRIBUTE_REACHED].all()
    kept_plain = locked_rows[Col.LOCK_STRENGTH] == 3.0
    assert (locked_rows.loc[kept_plain, Col.IMAGE_EDIT_SHA256] == plain_rows.loc[kept_plain, Col.IMAGE_EDIT_SHA256]).all()
    # The contact sheet: a header, then per source its face and the edit, each captioned.
    sheet = read_png(write_contact_sheet(tmp_path / "locked"))
    assert sheet.shape == (14 + 2 + 3 * (64 * 2 + 2 + 12), 2 * (64 * 2 + 2) + 2, 3)
    card = write_card(tmp_path / "locked").read_text()
    assert f"| hair_lightness | {locked_rows[Col.EXPRESSION_LOCKED].mean():.3f} |" in card
    assert "Off: each edit is the editor's output" in write_card(tmp_path / "plain").read_text()
