"""Training the latent editors a run's edits need, one per attribute and preservation weights.

Each editor starts from its attribute's discovered direction (`A = 0, b = n`, the linear edit),
and is trained on the discovery samples against the latent classifier with the Latent
Transformer loss; positive weights add the preservation terms (HFLD on FaceMesh landmarks,
emotion, identity) of the rendered edits. Editors and their resumable training checkpoints live
under `<edits directory>/editors/`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.config import PreservationWeights, RunConfig
from pipeline.stages.discovery import Samples
from pipeline.editing.files import CLASSIFIER_FILE, direction_path, editor_path
from pipeline.editing.directions import load_direction
from pipeline.editing.editor import LatentEditor, read_editor_record, save_editor
from pipeline.editing.latent_classifier import load_latent_classifier
from pipeline.editing.training import EditorTrainer, EditorTrainingConfig, TrainingProgress
from pipeline.errors import CheckpointError
from pipeline.generators.base import FaceGenerator
from pipeline.objectives import preservation_loss


def required_editors(config: RunConfig) -> list[tuple[str, PreservationWeights]]:
    """(attribute, weights) of every editor the configured methods use, without repeats;
    all-zero weights are the base editor."""
    methods = set(config.edits.methods)
    editors: list[tuple[str, PreservationWeights]] = []
    for attribute in config.edits.attributes:
        wanted = [PreservationWeights()] if "editor" in methods else []
        if methods & {"editor_hfld", "refined"}:
            wanted.extend(PreservationWeights(landmarks=value) for value in config.edits.hfld_lambdas)
        if methods & {"editor_preserve", "refined_preserve"}:
            wanted.extend(entry.weights(attribute) for entry in config.edits.preserve)
        editors.extend((attribute, weights) for weights in dict.fromkeys(wanted))
    return editors


def train_editor(
    config: RunConfig,
    generator: FaceGenerator,
    samples: Samples,
    attribute: str,
    weights: PreservationWeights,
    *,
    callback: Callable[[TrainingProgress], None] | None = None,
) -> Path:
    """Train (or resume) one editor and save it.

    An editor already saved is kept if it was trained as this call would train it (same
    training settings, HFLD options, samples and classifier); otherwise it is refused by name,
    so a rerun discovery or a changed config never edits with a stale editor.
    """
    directory = config.models_dir
    target = editor_path(directory, attribute, weights)
    device = generator.device
    direction = load_direction(direction_path(directory, attribute), latent_shape=generator.latent_shape)
    classifier = load_latent_classifier(directory / CLASSIFIER_FILE, latent_shape=generator.latent_shape, device=device)
    settings = config.training
    strengths = config.edits.strengths
    trainer = EditorTrainer(
        LatentEditor.from_direction(direction, layers=config.edits.layers.get(attribute)).to(device),
        classifier,
        torch.from_numpy(samples.latents),
        EditorTrainingConfig(
            attribute=attribute,
            steps=settings.steps,
            batch_size=settings.batch_size,
            hfld_fraction=settings.hfld_fraction,
            strength="uniform",
            strength_range=(min(strengths), max(strengths)),
            checkpoint_every=max(1, settings.steps // 5),
        ),
        preservation=preservation_loss(config, generator, weights) if weights != PreservationWeights() else None,
    )
    if target.exists():
        require_trained_as(target, trainer.record())
        return target
    checkpoint = target.with_name(f".{target.stem}.training.pt")
    losses = trainer.run(checkpoint=checkpoint, callback=callback)
    save_editor(trainer.editor, target, extra={**trainer.record(), "final_losses": losses})
    checkpoint.unlink(missing_ok=True)
    return target


def require_trained_as(path: Path, record: dict[str, Any]) -> None:
    """Refuse a saved editor whose training record differs from `record` (steps excepted)."""
    saved = read_editor_record(path)
    expected = json.loads(json.dumps(record))
    keys = ("training", "hfld", "preservation", "layers", "classifier_attributes", "inputs")
    changed = [key for key in keys if saved.get(key) != expected[key]]
    if changed:
        raise CheckpointError(
            f"{path}: this editor was trained with other {', '.join(changed)} than this config and its "
            "discovery results give; delete it to train it again, or set another edits.directory"
        )
