"""A generate run without Prefect: shards, resumption after a crash, contact sheet."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import pytest

from data_schemas import Col
from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.images import read_png
from pipeline.storage.manifest import read_manifest
from pipeline.generators.dcgan import load_dcgan
from pipeline.storage.layout import prepare_run, shard_count, shard_path, shard_seeds
from pipeline.stages.generate import generate_shard, write_contact_sheet

CONFIG = parse_config({"sources": {"count": 10, "first_seed": 40, "shard_size": 4}, "batch_size": 3, "device": "cpu"})


def _run_all(run_dir: Path) -> None:
    prepare_run(CONFIG, run_dir)
    for index in range(shard_count(CONFIG)):
        generate_shard(CONFIG, run_dir, index)


def test_plan_covers_every_seed_once() -> None:
    shards = [shard_seeds(CONFIG, index) for index in range(shard_count(CONFIG))]
    assert [list(s) for s in shards] == [[40, 41, 42, 43], [44, 45, 46, 47], [48, 49]]
    with pytest.raises(IndexError, match="shard 3 is outside this run's shards 0-2"):
        shard_seeds(CONFIG, 3)


def test_rows_match_the_generator(tmp_path: Path) -> None:
    _run_all(tmp_path)
    table = read_manifest(tmp_path)
    assert table.column(Col.SEED).to_pylist() == list(range(40, 50))
    generator = load_dcgan()
    expected = generator.render(generator.sample_latents([45]))[0].numpy()
    row = table.column(Col.SEED).to_pylist().index(45)
    image_path = tmp_path / table.column(Col.IMAGE_SOURCE)[row].as_py()
    np.testing.assert_array_equal(read_png(image_path), expected)
    assert hashlib.sha256(image_path.read_bytes()).hexdigest() == table.column(Col.IMAGE_SOURCE_SHA256)[row].as_py()
    latent = np.asarray(table.column(Col.LATENT)[row].as_py(), dtype=np.float32)
    np.testing.assert_array_equal(latent, generator.sample_latents([45])[0].numpy())
    assert set(table.column(Col.RUN_ID).to_pylist()) == {CONFIG.run_id}


def test_interrupted_run_resumes_without_duplicates_or_losses(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    _run_all(clean)

    crashed = tmp_path / "crashed"
    prepare_run(CONFIG, crashed)
    generate_shard(CONFIG, crashed, 0)
    finished = shard_path(crashed, 0).read_bytes()
    # A crash while writing shard 1: a temporary Parquet file and a stray image remain.
    temp = shard_path(crashed, 1).with_name(".shard-00001.parquet.deadbeef.tmp")
    temp.write_bytes(b"PAR1 half written")
    (crashed / "images" / "shard-00001").mkdir(parents=True)
    (crashed / "images" / "shard-00001" / "seed-000000044.png").write_bytes(b"half a png")

    results = [generate_shard(CONFIG, crashed, i) for i in range(3)]
    assert [r.skipped for r in results] == [True, False, False]
    assert shard_path(crashed, 0).read_bytes() == finished

    resumed, reference = read_manifest(crashed), read_manifest(clean)
    assert resumed.column(Col.SEED).to_pylist() == reference.column(Col.SEED).to_pylist()
    assert resumed.column(Col.IMAGE_SOURCE_SHA256).to_pylist() == reference.column(Col.IMAGE_SOURCE_SHA256).to_pylist()
    png = crashed / "images" / "shard-00001" / "seed-000000044.png"
    assert read_png(png).shape == (64, 64, 3)


def test_a_directory_of_another_run_is_refused(tmp_path: Path) -> None:
    prepare_run(CONFIG, tmp_path)
    other = parse_config({"sources": {"count": 11}})
    with pytest.raises(ConfigError, match=f"holds run {CONFIG.run_id}, but this config is run {other.run_id}"):
        prepare_run(other, tmp_path)


def test_contact_sheet_shows_the_faces(tmp_path: Path) -> None:
    _run_all(tmp_path)
    sheet = read_png(write_contact_sheet(tmp_path))
    first = read_png(tmp_path / read_manifest(tmp_path).column(Col.IMAGE_SOURCE)[0].as_py())
    # 10 faces at 2x scale in a 4-column grid with 2 px gaps.
    assert sheet.shape == (3 * 130 + 2, 4 * 130 + 2, 3)
    np.testing.assert_array_equal(sheet[2:130:2, 2:130:2], first)


def test_source_scores_are_written_with_their_models(tmp_path: Path) -> None:
    from data_schemas import EMOTION_LABELS
    from pipeline.models.assets import REGISTRY
    from pipeline.scoring import load_scorer

    _run_all(tmp_path)
    table = read_manifest(tmp_path)
    probs = np.asarray(table.column(Col.EMOTION_PROBS_SOURCE).to_pylist())
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert table.column(Col.EMOTION_SOURCE).to_pylist() == [EMOTION_LABELS[i] for i in probs.argmax(axis=1)]
    generator = load_dcgan()
    with torch.no_grad():
        expected = load_scorer("cpu", True).score(generator.synthesize(generator.sample_latents([40])))
    np.testing.assert_allclose(probs[0], expected.emotion_probs[0], atol=1e-5)
    first = table.column(Col.ATTRIBUTES_SOURCE)[0].as_py()
    assert first["p_female"] == pytest.approx(float(expected.attribute("p_female")[0]), abs=1e-4)
    assert table.column(Col.FACE_DETECTED_SOURCE).to_pylist()[0] == bool(expected.face_found[0])
    models = {m["role"]: m for m in table.column(Col.MODELS)[0].as_py()}
    assert models["identity"]["sha256"] == REGISTRY["sface"].sha256
    assert table.column(Col.IMAGE_EDIT).null_count == table.num_rows
