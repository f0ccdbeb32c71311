"""Direction discovery: sample latents, score them, fit one linear direction per attribute.

InterFaceGAN's recipe (Shen et al. 2020) on exprlock's own scorers: every sample is rendered
and described (emotion probabilities, gender, age, pose, hair and skin colour); for each
attribute the most and least pronounced `confident_fraction` of samples train a linear
classifier whose unit normal is the edit direction, with its hold-out accuracy as evidence.
Emotion directions are fitted the same way, so attribute directions can be made orthogonal to
them (conditional manipulation). The same scored samples train the latent attribute classifier
that supervises the latent editor.

Layout under the edits directory:
    samples/shard-00000.npz      seeds, latents and scores; one resumable shard each
    directions/<name>.safetensors
    latent_classifier.safetensors
    discovery.json               thresholds, accuracies, sample count, provenance
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_schemas import EMOTION_LABELS
from pipeline.config import EDITABLE_ATTRIBUTES, RunConfig
from pipeline.editing.directions import Direction, fit_direction, save_direction
from pipeline.editing.files import CLASSIFIER_FILE, REPORT_FILE, direction_path, emotion_name, read_report
from pipeline.editing.latent_classifier import fit_latent_classifier, save_latent_classifier
from pipeline.errors import ConfigError
from pipeline.images import write_atomic
from pipeline.generators.base import FaceGenerator
from pipeline.scoring import ATTRIBUTE_NAMES, ATTRIBUTE_SCORES, FaceScorer

# Version of the samples files: 2 holds the emotion ensemble's probabilities (1 held one model's).
SAMPLES_FORMAT = 2


@dataclass(frozen=True)
class Samples:
    """Scored latents: the evidence directions and the latent classifier are fitted on."""

    seeds: np.ndarray  # (N,) int64
    latents: np.ndarray  # (N, *latent_shape) float32
    emotion_probs: np.ndarray  # (N, 7), the emotion ensemble's
    attributes: np.ndarray  # (N, len(ATTRIBUTE_NAMES))

    def score(self, attribute: str) -> np.ndarray:
        """The score of an editable attribute or of an emotion (`emotion_happy`)."""
        if attribute in ATTRIBUTE_SCORES:
            return self.attributes[:, ATTRIBUTE_NAMES.index(ATTRIBUTE_SCORES[attribute])]
        for index, label in enumerate(EMOTION_LABELS):
            if attribute == emotion_name(label):
                return self.emotion_probs[:, index]
        raise ConfigError(f"attribute {attribute!r}: known are {sorted(ATTRIBUTE_SCORES)} and emotion_<label>")


def sample_shard(generator: FaceGenerator, scorer: FaceScorer, seeds: range, batch_size: int) -> Samples:
    """Render and describe one range of seeds, a batch at a time."""
    parts = []
    for start in range(0, len(seeds), batch_size):
        batch = seeds[start : start + batch_size]
        latents = generator.sample_latents(batch)
        with torch.no_grad():
            probs, attributes = scorer.describe(generator.synthesize(latents))
        parts.append((np.asarray(batch, np.int64), latents.cpu().numpy().astype(np.float32), probs, attributes))
    return Samples(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def sample_shard_plan(config: RunConfig) -> list[tuple[Path, range]]:
    """Each discovery shard's file and seeds."""
    settings = config.discovery
    seeds = range(settings.first_seed, settings.first_seed + settings.samples)
    directory = config.models_dir / "samples"
    return [
        (directory / f"shard-{index:05d}.npz", seeds[start : start + settings.shard_size])
        for index, start in enumerate(range(0, len(seeds), settings.shard_size))
    ]


def ensure_sample_shard(config: RunConfig, index: int, generator: FaceGenerator, scorer: FaceScorer) -> Path:
    """Sample and score one shard unless its file exists (so discovery resumes)."""
    path, seeds = sample_shard_plan(config)[index]
    if path.exists():
        check_sample_scorer(path, config)
    else:
        samples = sample_shard(generator, scorer, seeds, config.batch_size_on(generator.device.type))
        write_samples(samples, path, age_gender=age_gender_scorer(config))
    return path


def age_gender_scorer(config: RunConfig) -> str:
    """The gender and age model a config's samples are scored with ("none" without attributes)."""
    return config.scoring.age_gender if config.scoring.attributes else "none"


def check_sample_scorer(path: Path, config: RunConfig) -> None:
    """Refuse samples whose gender and age scores came from another model than the config's:
    directions and thresholds fitted on one model's scale are wrong on another's."""
    with np.load(path) as data:
        found = str(data["age_gender"]) if "age_gender" in data.files else "adience"  # files written before the choice
    wanted = age_gender_scorer(config)
    if found != wanted:
        raise ConfigError(
            f"{path}: discovery samples scored for gender and age by {found}, but this config scores with {wanted} "
            f"(scoring.age_gender); delete {path.parent} or set edits.directory to another folder, then rerun "
            "`exprlock discover`"
        )


def training_latents(config: RunConfig, generator: FaceGenerator) -> np.ndarray:
    """The latents editors train on: discovery's samples, drawn again from their seeds.

    Training needs the latents alone, never their scores, and a seed's latent is the same on
    every machine, so nothing written by `discover` but its report is needed. The config's sample
    plan must be the one the report was fitted on, which the refusal names field by field.
    """
    report = read_report(config.models_dir)
    settings = config.discovery
    planned = {"samples": settings.samples, "first_seed": settings.first_seed}
    recorded = {"samples": report.get("samples"), "first_seed": (report.get("seeds") or [None])[0]}
    for field, value in planned.items():
        if recorded[field] is not None and recorded[field] != value:
            raise ConfigError(
                f"discovery.{field}: {value} in this config, but {config.models_dir / 'discovery.json'} was fitted on "
                f"{field} {recorded[field]}; set discovery.{field}: {recorded[field]} to train editors for these "
                "directions, or point edits.directory elsewhere"
            )
    seeds = range(settings.first_seed, settings.first_seed + settings.samples)
    batch = config.batch_size_on(generator.device.type)
    parts = [generator.sample_latents(seeds[start : start + batch]).cpu().numpy() for start in range(0, len(seeds), batch)]
    return np.concatenate(parts).astype(np.float32)


def collect_samples_on_disk(config: RunConfig) -> Samples:
    """The discovery samples already written, or an error naming the command that makes them."""
    paths = [path for path, _ in sample_shard_plan(config)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise ConfigError(
            f"{paths[0].parent}: discovery samples {', '.join(missing[:3])} missing; "
            "run `exprlock discover` with this config first"
        )
    for path in paths:
        check_sample_scorer(path, config)
    parts = [read_samples(p) for p in paths]
    return Samples(*(np.concatenate([getattr(p, f) for p in parts]) for f in Samples.__dataclass_fields__))


def write_samples(samples: Samples, path: Path, *, age_gender: str) -> Path:
    """One samples file, with the name of the model that scored gender and age."""
    buffer = io.BytesIO()
    np.savez(buffer, format=SAMPLES_FORMAT, age_gender=np.array(age_gender),
             **{name: getattr(samples, name) for name in Samples.__dataclass_fields__})  # fmt: skip
    write_atomic(buffer.getvalue(), path)
    return path


def read_samples(path: Path) -> Samples:
    """One samples file; a file of an older format is refused, so old and new scores never mix."""
    with np.load(path) as data:
        found = int(data["format"]) if "format" in data.files else 1
        if found != SAMPLES_FORMAT:
            raise ConfigError(
                f"{path}: discovery samples of format {found}, scored before the emotion ensemble "
                f"(format {SAMPLES_FORMAT}); delete {path.parent} and rerun `exprlock discover`"
            )
        return Samples(**{name: data[name] for name in Samples.__dataclass_fields__})


def classifier_labels(samples: Samples, names: list[str]) -> np.ndarray:
    """Labels in [0, 1] for the latent classifier: gender and emotions are probabilities
    already; the other attributes are split at their median (NaN stays unlabelled)."""
    columns = []
    for name in names:
        score = samples.score(name).astype(np.float64)
        if name == "gender" or name.startswith("emotion_"):
            columns.append(score)
        else:
            median = np.nanmedian(score)
            columns.append(np.where(np.isnan(score), np.nan, (score > median).astype(np.float64)))
    return np.stack(columns, axis=1)


def success_threshold(samples: Samples, attribute: str) -> float:
    """The score an edit must cross to count as having changed the attribute."""
    return 0.5 if attribute == "gender" else float(np.nanmedian(samples.score(attribute)))


def discover(
    config: RunConfig,
    samples: Samples,
    *,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Fit and save every direction and the latent classifier; return the report."""
    directory = config.models_dir
    settings = config.discovery
    latents = torch.from_numpy(samples.latents)
    candidates = list(EDITABLE_ATTRIBUTES) + [emotion_name(label) for label in EMOTION_LABELS]
    # Attributes whose scorer did not run (all NaN, e.g. gender and age without the Adience
    # nets) get no direction and no classifier output.
    names = [name for name in candidates if np.isfinite(samples.score(name)).any()]
    directions: dict[str, Direction] = {}
    for name in names:
        direction = fit_direction(
            latents,
            torch.from_numpy(samples.score(name).astype(np.float64)),
            name=name,
            fraction=settings.confident_fraction,
            provenance={**provenance, "samples": len(samples.seeds)},
        )
        save_direction(direction, direction_path(directory, name))
        directions[name] = direction
    classifier, report = fit_latent_classifier(
        latents,
        torch.from_numpy(classifier_labels(samples, names)),
        attributes=names,
        epochs=config.training.classifier_epochs,
    )
    save_latent_classifier(classifier, directory / CLASSIFIER_FILE, report=report)
    summary = {
        "samples": len(samples.seeds),
        "seeds": [int(samples.seeds.min()), int(samples.seeds.max())],
        "confident_fraction": settings.confident_fraction,
        "directions": {
            name: {"holdout_accuracy": d.accuracy, "fitted_on": d.num_samples} for name, d in directions.items()
        },
        "latent_classifier_holdout_accuracy": report.holdout_accuracy,
        "unscored": [name for name in candidates if name not in names],
        "success_thresholds": {name: success_threshold(samples, name) for name in EDITABLE_ATTRIBUTES if name in names},
        "provenance": provenance,
    }
    write_atomic((json.dumps(summary, indent=2) + "\n").encode(), directory / REPORT_FILE)
    return summary
