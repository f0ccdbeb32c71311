"""Edit methods on a planted latent space, and the comparison table's arithmetic."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data_schemas import Col
from pipeline.config import PreservationWeights, parse_config
from pipeline.stages.discovery import collect_samples_on_disk, discover, ensure_sample_shard, training_latents
from pipeline.editing.plan import EditSpec, plan_edits
from pipeline.edits import Editing, attribute_reached, edit_directions
from pipeline.editing.editor import load_editor, save_editor
from pipeline.editing.hfld import HFLDLoss
from pipeline.editing.preservation import PreservationLoss
from pipeline.editing.refine import RefinementResult
from pipeline.editing.synthetic import TinyGenerator
from pipeline.errors import CheckpointError, ConfigError
from pipeline.stages.evaluation import (
    change_at_success,
    lock_table,
    long_table,
    method_label,
    method_reductions,
    reductions,
    summarise,
)
from pipeline.editing.files import editor_path
from pipeline.stages.train_editors import required_editors, train_editor
from test_discovery import LATENT_DIM, PlantedScorer


BASE = PreservationWeights()


@pytest.fixture(scope="module")
def editing(tmp_path_factory: pytest.TempPathFactory) -> Editing:
    directory = tmp_path_factory.mktemp("models")
    config = parse_config(
        {
            "discovery": {"samples": 400, "shard_size": 400},
            "training": {"steps": 30, "classifier_epochs": 5},
            "edits": {"directory": str(directory), "attributes": ["gender"], "methods": ["linear", "linear_projected", "editor"]},
        }
    )
    generator = TinyGenerator((LATENT_DIM,), resolution=4)
    ensure_sample_shard(config, 0, generator, PlantedScorer(generator))
    samples = collect_samples_on_disk(config)
    discover(config, samples, provenance={})
    assert required_editors(config) == [("gender", BASE)]
    train_editor(config, generator, samples.latents, "gender", BASE)
    assert editor_path(directory, "gender", BASE).is_file()
    return Editing(config, generator)


def test_plan_covers_every_combination_attribute_major() -> None:
    config = parse_config(
        {"edits": {"attributes": ["age", "gender"], "methods": ["linear", "editor_hfld"], "strengths": [2, 4], "hfld_lambdas": [1, 10]}}
    )
    specs = plan_edits(config)
    assert len(specs) == 2 * (2 + 2 * 2)
    assert [s.attribute for s in specs[:6]] == ["age"] * 6
    assert EditSpec("age", "linear", 2.0, 0.0) in specs and EditSpec("gender", "editor_hfld", 4.0, 10.0) in specs
    assert specs[0].slug == "age-linear-s2-l0"


def test_edits_head_for_the_other_side_and_success_is_crossing_it() -> None:
    signs = edit_directions(np.array([0.2, 0.7, np.nan]), 0.5)
    assert signs.tolist() == [1.0, -1.0, 1.0]
    reached = attribute_reached(signs, np.array([0.6, 0.6, np.nan]), 0.5)
    assert reached.tolist() == [True, False, False]


def test_linear_edit_moves_along_the_direction(editing: Editing) -> None:
    latents = torch.randn(5, LATENT_DIM)
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])
    edited = editing.apply(EditSpec("gender", "linear", 3.0, 0.0), latents, signs)
    direction = editing.direction("gender").vector
    np.testing.assert_allclose((edited - latents).numpy(), (3.0 * signs[:, None] * direction).numpy(), atol=1e-6)


def test_projected_edit_leaves_the_emotion_directions_alone(editing: Editing) -> None:
    latents = torch.randn(4, LATENT_DIM)
    edited = editing.apply(EditSpec("gender", "linear_projected", 2.0, 0.0), latents, torch.ones(4))
    for label in ("happy", "surprise"):
        emotion = editing.direction(f"emotion_{label}").vector
        assert torch.allclose((edited - latents) @ emotion, torch.zeros(4), atol=1e-5)


def test_trained_editor_reaches_the_target_more_often_than_it_started(editing: Editing) -> None:
    latents = torch.randn(200, LATENT_DIM, generator=torch.Generator().manual_seed(3))
    before = torch.sigmoid(editing.classifier(latents)[:, editing.classifier.index("gender")]).detach().numpy()
    signs = edit_directions(before, 0.5)
    edited = editing.apply(EditSpec("gender", "editor", 3.0, 0.0), latents, signs)
    after = torch.sigmoid(editing.classifier(edited)[:, editing.classifier.index("gender")]).detach().numpy()
    assert attribute_reached(signs, after, 0.5).mean() > 0.8


def test_each_method_names_the_editors_it_needs() -> None:
    def needed(methods: list[str], attribute: str = "gender") -> list[tuple[str, float, float, float]]:
        edits = {
            "attributes": [attribute],
            "methods": methods,
            "hfld_lambdas": [100.0, 1000.0],
            "preserve": [{"landmarks": 1000.0, "emotion": 2.0, "identity": 3.0, "expression": 0.0}, {"landmarks": 0.0, "emotion": 5.0, "identity": 0.0, "expression": 0.0}],
        }
        return [(a, w.landmarks, w.emotion, w.identity) for a, w in required_editors(parse_config({"edits": edits}))]

    assert needed(["linear", "linear_projected"]) == []
    assert needed(["editor"]) == [("gender", 0.0, 0.0, 0.0)]
    assert needed(["refined"]) == needed(["editor_hfld"]) == [("gender", 100.0, 0.0, 0.0), ("gender", 1000.0, 0.0, 0.0)]
    assert needed(["editor", "refined"])[0] == ("gender", 0.0, 0.0, 0.0)
    # Identity is off for gender by default, on for age; one editor per distinct weights.
    assert needed(["editor_preserve", "refined_preserve"]) == [("gender", 1000.0, 2.0, 0.0), ("gender", 0.0, 5.0, 0.0)]
    assert needed(["editor_preserve"], "age") == [("age", 1000.0, 2.0, 3.0), ("age", 0.0, 5.0, 0.0)]
    assert needed(["editor_hfld", "editor_preserve"], "gender")[1:] == [
        ("gender", 1000.0, 0.0, 0.0), ("gender", 1000.0, 2.0, 0.0), ("gender", 0.0, 5.0, 0.0)
    ]


def test_a_saved_editor_is_kept_only_if_trained_as_the_config_says(editing: Editing) -> None:
    config, generator = editing.config, editing.generator
    samples = collect_samples_on_disk(config)
    path = editor_path(editing.directory, "gender", BASE)
    before = path.read_bytes()
    assert train_editor(config, generator, samples.latents, "gender", BASE) == path
    assert path.read_bytes() == before
    longer = config.model_copy(update={"training": config.training.model_copy(update={"steps": 31})})
    with pytest.raises(CheckpointError, match=r"gender-lambda0.safetensors: this editor was trained with other inputs than "
                       r"this config and its discovery results give: training.steps is 30 in the editor, 31 here; delete it"):
        train_editor(longer, generator, samples.latents, "gender", BASE)
    fewer = dataclasses.replace(samples, latents=samples.latents[:-1], seeds=samples.seeds[:-1])
    with pytest.raises(CheckpointError, match=r"inputs.latents is SHA-256 [0-9a-f]{12}\.\.\. in the editor, SHA-256 [0-9a-f]{12}\.\.\. here"):
        train_editor(config, generator, fewer.latents, "gender", BASE)
    low, high = config.edits.strengths[0], config.edits.strengths[-1]
    inside = config.model_copy(update={"edits": config.edits.model_copy(update={"strengths": [(low + high) / 2]})})
    assert train_editor(inside, generator, samples.latents, "gender", BASE) == path  # a strength it was trained for
    beyond = config.model_copy(update={"edits": config.edits.model_copy(update={"strengths": [high * 2]})})
    with pytest.raises(CheckpointError, match=r"training.strength_range is \[.*\] in the editor, \[.*\] here"):
        train_editor(beyond, generator, samples.latents, "gender", BASE)
    assert training_latents(config, generator).tobytes() == samples.latents.tobytes()  # drawn again, no samples read
    other = config.model_copy(update={"discovery": config.discovery.model_copy(update={"samples": config.discovery.samples + 1})})
    with pytest.raises(ConfigError, match=rf"discovery.samples: {config.discovery.samples + 1} in this config, but .*discovery.json "
                       rf"was fitted on samples {config.discovery.samples}; set discovery.samples: {config.discovery.samples}"):
        training_latents(other, generator)
    assert path.read_bytes() == before


def test_refinement_starts_from_the_hfld_editor_of_its_lambda(
    editing: Editing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hfld_editor = load_editor(editor_path(editing.directory, "gender", BASE))
    with torch.no_grad():
        hfld_editor.bias.mul_(-2.0)
    save_editor(hfld_editor, editor_path(editing.directory, "gender", PreservationWeights(7.0)))
    started_from = {}

    def record(edited: torch.Tensor, source: torch.Tensor, **options: object) -> RefinementResult:
        started_from.update(edited=edited, lam=options["preservation"].hfld.weight)
        unchanged = torch.zeros(len(edited))
        return RefinementResult(edited + 1.0, unchanged, unchanged, unchanged, unchanged)

    monkeypatch.setattr("pipeline.edits.refine_edits", record)
    monkeypatch.setattr(
        "pipeline.edits.preservation_loss",
        lambda config, generator, weights: PreservationLoss(HFLDLoss(generator, lambda x: x, weight=weights.landmarks)),
    )
    latents, signs = torch.randn(3, LATENT_DIM), torch.tensor([1.0, -1.0, 1.0])
    try:
        refined = editing.apply(EditSpec("gender", "refined", 2.0, 7.0), latents, signs)
    finally:
        editor_path(editing.directory, "gender", PreservationWeights(7.0)).unlink()
    with torch.no_grad():
        expected = hfld_editor(latents, 2.0 * signs)
    torch.testing.assert_close(started_from["edited"], expected)
    assert started_from["lam"] == 7.0
    torch.testing.assert_close(refined, expected + 1.0)


def _summary_rows(sources: int = 10, *, js_noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for method, (success, js) in {"editor": ((0.4, 0.8), (0.10, 0.20)), "editor_hfld": ((0.5, 0.9), (0.05, 0.12))}.items():
        for strength, s, j in zip((3.0, 6.0), success, js):
            for i in range(sources):
                rows.append({
                    Col.RUN_ID: "run", Col.SEED: i, Col.IMAGE_SOURCE_SHA256: f"face-{i}",
                    Col.ATTRIBUTE: "age", Col.STRENGTH: strength, Col.EDITOR: method,
                    Col.HFLD_LAMBDA: 10.0 if method == "editor_hfld" else 0.0,
                    Col.ATTRIBUTE_REACHED: i < round(sources * s), Col.EMOTION_FLIPPED: False,
                    Col.EMOTION_JS: j + js_noise * rng.standard_normal(),
                    Col.LANDMARK_NME: 0.1, Col.IDENTITY_COSINE: 0.5, Col.FACE_DETECTED_EDIT: True,
                })
    return pd.DataFrame(rows)


def test_summary_and_reduction_at_equal_success() -> None:
    rows = _summary_rows()
    summary = summarise(rows)
    assert summary[Col.EDITOR].tolist()[:2] == ["editor", "editor_hfld"]  # METHOD_ORDER, not alphabetical
    row = summary[(summary[Col.EDITOR] == "editor") & (summary[Col.STRENGTH] == 6.0)].iloc[0]
    assert row["attribute_success"] == pytest.approx(0.8) and row["emotion_js"] == pytest.approx(0.2)
    assert row["edits"] == 10
    # editor_hfld's curve: (0, 0), (0.5, 0.05), (0.9, 0.12). At success 0.4: 0.04; at 0.8: 0.1025.
    assert change_at_success(summary, attribute="age", editor="editor_hfld", hfld_lambda=10.0, success=0.4, metric="emotion_js") == pytest.approx(0.04)
    # Past the curve's end (0.9): along the last segment for at most 0.05 of success, then NaN.
    extended = change_at_success(summary, attribute="age", editor="editor_hfld", hfld_lambda=10.0, success=0.93, metric="emotion_js")
    assert extended == pytest.approx(0.12 + (0.12 - 0.05) / 0.4 * 0.03)
    assert np.isnan(change_at_success(summary, attribute="age", editor="editor_hfld", hfld_lambda=10.0, success=0.96, metric="emotion_js"))
    table = reductions(rows, draws=200)
    js = table[table["metric"] == "emotion_js"].set_index(Col.STRENGTH)
    assert (js["scorer"] == "pipeline").all()
    assert js.loc[3.0, "base"] == pytest.approx(0.10) and js.loc[3.0, "matched"] == pytest.approx(0.04)
    assert js.loc[3.0, "reduction"] == pytest.approx((0.10 - 0.04) / 0.10)
    assert js.loc[6.0, "reduction"] == pytest.approx((0.20 - 0.1025) / 0.20)
    # Resampling sources moves the success each method reached, so the interval has width.
    assert (js["low"] < js["reduction"]).all() and (js["reduction"] < js["high"]).all()
    flips = table[table["metric"] == "emotion_flip_rate"].set_index(Col.STRENGTH)
    assert np.isnan(flips.loc[6.0, "reduction"])  # nothing flipped: no base to reduce


def test_bootstrap_intervals_follow_the_data() -> None:
    def width(table: pd.DataFrame) -> float:
        js = table[(table["metric"] == "emotion_js") & (table[Col.STRENGTH] == 3.0)].iloc[0]
        assert js["low"] <= js["reduction"] <= js["high"]
        return js["high"] - js["low"]

    # All sources alike: every resampling gives the same numbers.
    same = _summary_rows(sources=10).assign(**{Col.ATTRIBUTE_REACHED: True})
    collapsed = reductions(same, draws=200)
    js = collapsed[collapsed["metric"] == "emotion_js"]
    np.testing.assert_allclose(js["low"], js["reduction"]) and np.testing.assert_allclose(js["high"], js["reduction"])
    # Noisy sources: sixteen times the sources, about a quarter of the width.
    few, many = (reductions(_summary_rows(n, js_noise=0.03), draws=400) for n in (25, 400))
    assert 0.15 < width(many) / width(few) < 0.45
    # The same seed draws the same resamplings.
    pd.testing.assert_frame_equal(reductions(_summary_rows(25, js_noise=0.03), draws=400), few)


def test_the_refinement_is_compared_with_the_base_editor_too() -> None:
    rows = _summary_rows()
    refined = rows[rows[Col.EDITOR] == "editor_hfld"].assign(**{Col.EDITOR: "refined", Col.EMOTION_JS: lambda f: f[Col.EMOTION_JS] / 2})
    table = method_reductions(pd.concat([rows, refined]), draws=100)
    table = table[table["metric"] == "emotion_js"]
    assert table[Col.EDITOR].tolist() == ["editor_hfld", "editor_hfld", "refined", "refined"]
    by_method = table.set_index([Col.EDITOR, Col.STRENGTH])["reduction"]
    assert by_method["editor_hfld", 3.0] == pytest.approx((0.10 - 0.04) / 0.10)
    assert by_method["refined", 3.0] == pytest.approx((0.10 - 0.02) / 0.10)
    assert method_reductions(rows[rows[Col.EDITOR] == "editor"]).empty


def test_the_long_table_holds_every_value_and_the_reductions_beside_them() -> None:
    rows = _summary_rows()
    summary, reduced = summarise(rows), method_reductions(rows, draws=100)
    table = long_table(summary, reduced)
    assert list(table.columns) == ["attribute", "strength", "method", "scorer", "metric", "value", "reduction", "low", "high"]
    # Five pipeline metrics per (strength, method); no judge columns in these rows.
    assert len(table) == 2 * 2 * 5 and set(table["scorer"]) == {"pipeline"}
    js = table[(table["metric"] == "emotion_js") & (table["strength"] == 3.0)].set_index("method")
    assert js.loc["editor", "value"] == pytest.approx(0.10) and np.isnan(js.loc["editor", "reduction"])
    assert js.loc["editor_hfld l10", "value"] == pytest.approx(0.05)
    assert js.loc["editor_hfld l10", "reduction"] == pytest.approx((0.10 - 0.04) / 0.10)
    flips = table[(table["metric"] == "emotion_flip") & (table["method"] == "editor")]
    assert (flips["value"] == 0).all()


def test_preserving_and_locked_edits_are_methods_of_their_own() -> None:
    weights = {"landmarks": 1000.0, "emotion": 30.0, "identity": 0.0}
    row = {Col.EDITOR: "editor_preserve", Col.PRESERVATION: weights, Col.LOCK_CANDIDATES: None}
    assert method_label(row) == "editor_preserve l1000-e30"
    assert method_label({**row, Col.LOCK_CANDIDATES: 5}) == "editor_preserve l1000-e30+lock"
    assert method_label({Col.EDITOR: "editor_hfld", Col.PRESERVATION: {**weights, "emotion": 0.0}}) == "editor_hfld"
    rows = _summary_rows()
    base, hfld = rows[rows[Col.EDITOR] == "editor"], rows[rows[Col.EDITOR] == "editor_hfld"]
    locked = hfld.assign(**{
        Col.EDITOR: "editor_preserve l10-e30+lock", Col.EMOTION_JS: hfld[Col.EMOTION_JS] / 4,
        Col.EXPRESSION_LOCKED: hfld[Col.SEED] % 2 == 0,
    })
    table = method_reductions(pd.concat([base, hfld, locked]), draws=100)
    js = table[(table["metric"] == "emotion_js") & (table[Col.STRENGTH] == 3.0)].set_index(Col.EDITOR)["reduction"]
    assert js["editor_preserve l10-e30+lock"] == pytest.approx((0.10 - 0.01) / 0.10)
    assert summarise(pd.concat([locked, hfld, base]))[Col.EDITOR].tolist()[:3] == ["editor", "editor_hfld", "editor_preserve l10-e30+lock"]
    shares = lock_table(pd.concat([base, locked]))
    assert shares["locked_share"].tolist() == [0.5, 0.5] and shares["edits"].tolist() == [10, 10]


def test_an_attribute_without_a_direction_is_named(editing: Editing) -> None:

    config = parse_config({"edits": {"directory": str(editing.directory), "attributes": ["gender", "yaw"]}})
    report = editing.report
    unscored = dict(report, success_thresholds={"gender": 0.5})
    (editing.directory / "discovery.json").write_text(json.dumps(unscored))
    try:
        with pytest.raises(ConfigError, match=r"no direction for \['yaw'\]"):
            Editing(config, editing.generator)
    finally:
        (editing.directory / "discovery.json").write_text(json.dumps(report))


def test_a_user_supplied_interfacegan_boundary_replaces_the_discovered_direction(editing: Editing, tmp_path: Path) -> None:
    boundary = np.zeros((1, LATENT_DIM), np.float32)
    boundary[0, 2] = 1.0
    np.save(tmp_path / "boundary_gender.npy", boundary)
    config = editing.config.model_copy(
        update={"edits": editing.config.edits.model_copy(update={"direction_files": {"gender": str(tmp_path / "boundary_gender.npy")}})}
    )
    supplied = Editing(config, editing.generator)
    latents = torch.zeros(2, LATENT_DIM)
    edited = supplied.apply(EditSpec("gender", "linear", 2.0, 0.0), latents, torch.tensor([1.0, -1.0]))
    assert edited[:, 2].tolist() == [2.0, -2.0] and edited[:, [0, 1, 3, 4, 5]].abs().max() == 0


def test_w_plus_latents_are_edited_per_layer(tmp_path: Path) -> None:
    shape = (3, 4)
    config = parse_config(
        {
            "discovery": {"samples": 300, "shard_size": 300},
            "training": {"steps": 5, "classifier_epochs": 2},
            "edits": {"directory": str(tmp_path), "attributes": ["gender"], "methods": ["linear", "editor"]},
        }
    )
    generator = TinyGenerator(shape, resolution=8)
    scorer = PlantedScorer(generator)
    ensure_sample_shard(config, 0, generator, scorer)
    samples = collect_samples_on_disk(config)
    assert samples.latents.shape == (300, *shape)
    discover(config, samples, provenance={})
    train_editor(config, generator, samples.latents, "gender", BASE)
    editing = Editing(config, generator)
    latents = generator.sample_latents(range(4))
    direction = editing.direction("gender")
    assert float(direction.vector.reshape(-1)[0]) > 0.9  # planted in the first layer's first coordinate
    linear = editing.apply(EditSpec("gender", "linear", 2.0, 0.0), latents, torch.ones(4))
    assert torch.allclose(linear - latents, 2.0 * direction.displacement().expand(4, *shape), atol=1e-6)
    assert editing.editor("gender", BASE).mode == "per_layer"
    edited = editing.apply(EditSpec("gender", "editor", 2.0, 0.0), latents, torch.ones(4))
    gender = editing.classifier.index("gender")
    with torch.no_grad():
        assert (editing.classifier(edited)[:, gender] > editing.classifier(latents)[:, gender]).all()


def test_an_edit_restricted_to_layers_moves_only_those(tmp_path: Path) -> None:
    shape = (3, 4)
    settings = {
        "discovery": {"samples": 300, "shard_size": 300},
        "training": {"steps": 5, "classifier_epochs": 2},
        "edits": {"directory": str(tmp_path), "attributes": ["gender"], "methods": ["linear", "editor"], "layers": {"gender": [0, 2]}},
    }
    config = parse_config(settings)
    generator = TinyGenerator(shape, resolution=8)
    ensure_sample_shard(config, 0, generator, PlantedScorer(generator))
    samples = collect_samples_on_disk(config)
    discover(config, samples, provenance={})
    train_editor(config, generator, samples.latents, "gender", BASE)
    editing = Editing(config, generator)
    latents = generator.sample_latents(range(4))
    for method in ("linear", "editor"):
        moved = (editing.apply(EditSpec("gender", method, 2.0, 0.0), latents, torch.ones(4)) - latents).abs().sum(dim=2)
        assert (moved[:, 1] == 0).all() and (moved[:, 0] > 0).all()
    editor = editing.editor("gender", BASE)
    assert editor.layers == (0, 2) and editor.config["layers"] == [0, 2]
    # The editor was trained with the mask: it never moved layer 1, and its file says so.
    assert (editor.displacement(latents)[:, 1] == 0).all()
    unrestricted = parse_config({**settings, "edits": {**settings["edits"], "layers": {}}})
    with pytest.raises(CheckpointError, match=r"layers is \[0, 2\] in the editor, null here"):
        train_editor(unrestricted, generator, samples.latents, "gender", BASE)
    with pytest.raises(ConfigError, match=r"expected indices in 0..2"):
        Editing(parse_config({**settings, "edits": {**settings["edits"], "layers": {"gender": [3]}}}), generator).layer_mask("gender")


def test_models_made_for_another_generator_are_refused(editing: Editing) -> None:
    report = editing.report
    made_for = dict(report, provenance={"generator_sha256": "a" * 64})
    (editing.directory / "discovery.json").write_text(json.dumps(made_for))
    try:
        other = Editing(editing.config, editing.generator)
        other.require_generator("a" * 64)
        with pytest.raises(CheckpointError, match=r"made for the generator with SHA-256 aaaaaaaaaaaaaaaa\.\.\., this run's generator is bbbb"):
            other.require_generator("b" * 64)
    finally:
        (editing.directory / "discovery.json").write_text(json.dumps(report))
