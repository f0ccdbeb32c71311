"""Direction discovery on planted attributes: shards resume, directions recover the plant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_schemas import EMOTION_LABELS
from pipeline.config import parse_config
from pipeline.stages.discovery import collect_samples_on_disk, discover, ensure_sample_shard, sample_shard_plan
from pipeline.editing.files import CLASSIFIER_FILE, read_report
from pipeline.editing.directions import load_direction
from pipeline.editing.synthetic import TinyGenerator
from pipeline.errors import ConfigError
from pipeline.scoring import ATTRIBUTE_NAMES

LATENT_DIM = 6


class PlantedScorer:
    """Scores that are known linear functions of the latent behind each image.

    The tiny generator's images are an invertible-enough map of the latent; this scorer keeps a
    handle on the latents it was asked about, so each attribute i is `latent[i]` and the emotion
    logits are `latent[:2]` padded: the true direction of attribute i is the unit vector e_i.
    """

    def __init__(self, generator: TinyGenerator) -> None:
        self.pinv = torch.linalg.pinv(generator.weight)

    def describe(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        latents = torch.atanh(images.reshape(len(images), -1).clamp(-0.999999, 0.999999)) @ self.pinv.T
        latents = latents[:, :LATENT_DIM]  # the first coordinates of the flattened latent
        attributes = np.zeros((len(images), len(ATTRIBUTE_NAMES)), np.float32)
        for column in range(len(ATTRIBUTE_NAMES)):
            attributes[:, column] = latents[:, column % LATENT_DIM].numpy()
        attributes[:, ATTRIBUTE_NAMES.index("p_female")] = torch.sigmoid(2 * latents[:, 0]).numpy()
        logits = torch.zeros(len(images), len(EMOTION_LABELS))
        logits[:, 3] = 2 * latents[:, 4]  # happy
        logits[:, 5] = 2 * latents[:, 5]  # surprise
        return torch.softmax(logits, dim=1).numpy(), attributes


@pytest.fixture
def setup(tmp_path: Path) -> tuple:
    config = parse_config(
        {
            "discovery": {"samples": 600, "shard_size": 200},
            "training": {"classifier_epochs": 5},
            "edits": {"directory": str(tmp_path / "models")},
            "batch_size": 64,
        }
    )
    generator = TinyGenerator((LATENT_DIM,), resolution=4)
    return config, generator, PlantedScorer(generator)


def test_directions_recover_planted_attributes(setup: tuple) -> None:
    config, generator, scorer = setup
    for index in range(len(sample_shard_plan(config))):
        ensure_sample_shard(config, index, generator, scorer)
    samples = collect_samples_on_disk(config)
    assert samples.latents.shape == (600, LATENT_DIM)
    report = discover(config, samples, provenance={"generator": "tiny"})
    directory = Path(config.edits.directory)
    gender = load_direction(directory / "directions" / "gender.safetensors", latent_shape=(LATENT_DIM,))
    assert float(gender.vector[0]) > 0.95  # e_0, pointing towards more female
    age = load_direction(directory / "directions" / "age.safetensors")
    assert abs(float(age.vector[ATTRIBUTE_NAMES.index("age") % LATENT_DIM])) > 0.95
    happy = load_direction(directory / "directions" / "emotion_happy.safetensors")
    assert float(happy.vector[4]) > 0.9
    assert report["directions"]["gender"]["holdout_accuracy"] > 0.95
    assert report["success_thresholds"]["gender"] == 0.5
    assert report["success_thresholds"]["age"] == pytest.approx(float(np.median(samples.score("age"))))
    assert (directory / CLASSIFIER_FILE).is_file()
    assert read_report(directory)["samples"] == 600


def test_finished_sample_shards_are_not_sampled_again(setup: tuple) -> None:
    config, generator, scorer = setup
    first = ensure_sample_shard(config, 1, generator, scorer)
    stamp = first.stat().st_mtime_ns
    calls = []
    scorer.describe = lambda images: calls.append(len(images))  # would break if called
    assert ensure_sample_shard(config, 1, generator, scorer) == first
    assert first.stat().st_mtime_ns == stamp and calls == []


def test_missing_samples_and_report_name_the_command(setup: tuple) -> None:
    config, _, _ = setup
    with pytest.raises(ConfigError, match="discovery samples shard-00000.npz.*missing; run `exprlock discover`"):
        collect_samples_on_disk(config)
    with pytest.raises(ConfigError, match="no discovery results; run `exprlock discover"):
        read_report(Path(config.edits.directory))


def test_samples_scored_before_the_emotion_ensemble_are_refused(setup: tuple) -> None:
    config, generator, scorer = setup
    for index in range(len(sample_shard_plan(config))):
        ensure_sample_shard(config, index, generator, scorer)
    path = sample_shard_plan(config)[1][0]
    with np.load(path) as data:
        older = {name: data[name] for name in data.files if name != "format"}
    np.savez(path, **older)  # as written before samples carried a format
    with pytest.raises(ConfigError, match=rf"{path}: discovery samples of format 1, scored before the emotion ensemble.*delete {path.parent} and rerun `exprlock discover`"):
        collect_samples_on_disk(config)
