"""Run configs: defaults, one-line errors naming the field, a content-derived run id."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeline.config import load_config, parse_config
from pipeline.errors import ConfigError


def test_minimal_yaml_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("profile: demo\nsources: {count: 8}\n")
    config = load_config(path)
    assert config.sources.count == 8
    assert config.generator_kind == "dcgan"
    assert list(config.seeds) == list(range(8))


def test_toml_equals_yaml(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('profile = "demo"\n[sources]\ncount = 8\n')
    (tmp_path / "a.yaml").write_text("profile: demo\nsources: {count: 8}\n")
    assert load_config(tmp_path / "a.toml") == load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sources": {"count": 8, "shard": 4}}, "sources.shard: unknown key"),
        ({"profil": "demo"}, "profil: unknown key"),
        ({"sources": {"count": "eight"}}, "sources.count: input should be a valid integer (got 'eight')"),
        ({"sources": {"count": 8.5}}, "sources.count: input should be a valid integer"),
        ({"sources": {"count": 0}}, "sources.count: input should be greater than or equal to 1"),
        ({"profile": "celeba"}, "profile: input should be 'demo' or 'ffhq'"),
        ({"profile": "ffhq"}, "generator.checkpoint: a StyleGAN generator needs a checkpoint path"),
        ({"generator": {"kind": "stylegan3"}}, "generator.checkpoint: a StyleGAN generator needs a checkpoint path"),
        ({"profile": "ffhq", "generator": {"kind": "dcgan"}}, "generator.kind: the ffhq profile uses a StyleGAN2 or StyleGAN3"),
        ({"generator": {"class_index": 1}}, "generator.class_index: only conditional StyleGAN generators take a class"),
        ({"generator": {"kind": "stylegan3", "checkpoint": "g.pkl", "class_index": -1}}, "generator.class_index"),
        ([1, 2], "expected a mapping of settings at the top level, got list"),
        ({"edits": {"attributes": ["age"]}, "scoring": {"enabled": False}}, "scoring.enabled: edits need scores"),
        ({"edits": {"attributes": ["beard"]}}, "edits.attributes.0: input should be 'gender'"),
        ({"edits": {"hfld_lambdas": [0.0]}}, "edits.hfld_lambdas: expected positive values"),
    ],
)
def test_bad_configs_name_the_field(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="run.yaml")
    text = str(caught.value)
    assert text.startswith("run.yaml: ") and message in text
    assert "\n" not in text


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("sources: {count: 8\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)


def test_run_id_follows_content_not_execution_settings() -> None:
    base = parse_config({"sources": {"count": 8}})
    assert base.run_id == parse_config({"sources": {"count": 8}, "generator": {"kind": "dcgan"}}).run_id
    assert base.run_id == parse_config({"sources": {"count": 8}, "device": "cpu", "batch_size": 3}).run_id
    assert base.run_id != parse_config({"sources": {"count": 9}}).run_id
    assert base.run_id != parse_config({"sources": {"count": 8, "first_seed": 1}}).run_id
    assert base.run_id.startswith("demo-")


def test_classifier_precision_is_part_of_the_run_only_when_reduced() -> None:
    base = parse_config({"sources": {"count": 8}})
    assert base.run_id == parse_config({"sources": {"count": 8}, "scoring": {"precision": "float32"}}).run_id
    reduced = parse_config({"sources": {"count": 8}, "scoring": {"precision": "bfloat16"}})
    assert reduced.run_id != base.run_id
    assert reduced.scorer_settings("cpu")[4] == "bfloat16"
    with pytest.raises(ConfigError, match="scoring.precision: input should be 'float32', 'bfloat16' or 'float16'"):
        parse_config({"scoring": {"precision": "int8"}})
    with pytest.raises(ConfigError, match="scoring.precision: float16 runs only on CUDA; use bfloat16 or float32 on the CPU"):
        parse_config({"scoring": {"precision": "float16"}, "device": "cpu"})


def test_the_gender_and_age_scorer_keeps_old_configs_and_old_runs_adience() -> None:
    """face-api's network is the default; a config that asks for Adience keeps the id it had before
    there was a choice, and a run record from then reads as Adience."""
    before = "demo-594055f6dcbd"  # configs/demo-models.yaml's run id when every run scored with Adience
    models = {"discovery": {"samples": 5000, "shard_size": 500}, "training": {"steps": 300},
              "edits": {"directory": "../models/demo", "attributes": ["gender", "age", "hair_lightness"],
                        "strengths": [3.0, 6.0], "methods": ["editor_preserve"]}}  # fmt: skip
    new = parse_config(models)
    assert new.scoring.age_gender == "faceapi" and new.scorer_settings("cpu")[-1] == "faceapi"
    assert new.run_id != before
    assert parse_config({**models, "scoring": {"age_gender": "adience"}}).run_id == before
    unscored = {"sources": {"count": 8}, "scoring": {"attributes": False}}
    assert parse_config(unscored).run_id == parse_config({**unscored, "scoring": {"attributes": False, "age_gender": "adience"}}).run_id
    with pytest.raises(ConfigError, match="scoring.age_gender: input should be 'faceapi' or 'adience'"):
        parse_config({"scoring": {"age_gender": "deepface"}})


def test_a_run_recorded_before_the_choice_reads_as_adience(tmp_path: Path) -> None:
    from pipeline.storage.integrity import run_config

    record = {"run_id": "demo-x", "config": {"sources": {"count": 8}, "scoring": {"enabled": True}}}
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert run_config(tmp_path).scoring.age_gender == "adience"
    record["config"]["scoring"]["age_gender"] = "faceapi"
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert run_config(tmp_path).scoring.age_gender == "faceapi"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("edits: {strengths: [3.0, .nan]}\n", "edits.strengths.1: input should be a finite number (got nan)"),
        ("edits: {hfld_lambdas: [.inf]}\n", "edits.hfld_lambdas.0: input should be a finite number (got inf)"),
        ("generator: {truncation_psi: .nan}\n", "generator.truncation_psi: input should be a finite number (got nan)"),
        ("", "the config is empty; the smallest valid config is `{profile: demo, sources: {count: 8}}`"),
        ("# only a comment\n", "the config is empty; the smallest valid config is"),
        ("sources: {count: 8}\nsources: {count: 9}\n", "key 'sources' appears twice (line 2); keep one"),
        ("edits: {attributes: [age], methods: []}\n", "edits.methods: is empty, but edits.attributes are set"),
        ("edits: {attributes: [age], strengths: []}\n", "edits.strengths: is empty, but edits.attributes are set"),
    ],
)
def test_bad_config_files_get_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_yaml_aliases_and_other_encodings_are_refused_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml: YAML aliases \(\*name\) are not allowed in a config \(line 2\)"):
        load_config(bomb)
    assert time.perf_counter() - start < 1.0
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("sources: {count: 8}  # caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml: not UTF-8 text \(byte 26\); save the config as UTF-8"):
        load_config(latin)
    toml = tmp_path / "twice.toml"
    toml.write_text("profile = 'demo'\nprofile = 'demo'\n")
    with pytest.raises(ConfigError, match=r"twice.toml: not valid TOML"):
        load_config(toml)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_config_loads(path: Path) -> None:
    assert load_config(path).run_id
