"""Training the latent editors a run's edits need, one per attribute and lambda.

Each editor starts from its attribute's discovered direction (`A = 0, b = n`, the linear edit),
and is trained on the discovery samples against the latent classifier with the Latent
Transformer loss; lambda > 0 adds HFLD on FaceMesh landmarks of the rendered edits. Editors and
their resumable training checkpoints live under `<edits directory>/editors/`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.config import RunConfig
from pipeline.discovery import CLASSIFIER_FILE, Samples
from pipeline.editing.directions import load_direction
from pipeline.editing.editor import LatentEditor, read_editor_record, save_editor
from pipeline.editing.hfld import HFLDLoss
from pipeline.editing.latent_classifier import load_latent_classifier
from pipeline.editing.training import EditorTrainer, EditorTrainingConfig, TrainingProgress
from pipeline.errors import CheckpointError
from pipeline.models.facemesh import BROWS, EYES, FACE_OVAL, LEFT_EYE, LIPS, RIGHT_EYE, FaceMeshLandmarker
from pipeline.models.generator import FaceGenerator

EXPRESSION_LANDMARKS = LIPS + EYES + BROWS


def editor_path(directory: Path, attribute: str, hfld_lambda: float) -> Path:
    return Path(directory) / "editors" / f"{attribute}-lambda{hfld_lambda:g}.safetensors"


def required_editors(config: RunConfig) -> list[tuple[str, float]]:
    """(attribute, lambda) of every editor the configured methods use; lambda 0 is the base."""
    methods = set(config.edits.methods)
    lambdas: list[float] = []
    if "editor" in methods:
        lambdas.append(0.0)
    if methods & {"editor_hfld", "refined"}:
        lambdas.extend(config.edits.hfld_lambdas)
    return [(attribute, value) for attribute in config.edits.attributes for value in lambdas]


def hfld_loss(config: RunConfig, generator: FaceGenerator, hfld_lambda: float) -> HFLDLoss:
    """HFLD as configured: planar FaceMesh points, inter-ocular normalisation, optional
    similarity alignment on the face oval (so a head-shape change is not counted as expression)."""
    landmarker = FaceMeshLandmarker().to(generator.device).eval()
    settings = config.training
    return HFLDLoss(
        generator,
        lambda images: landmarker(images)[0],
        weight=hfld_lambda,
        planar=True,
        indices=None if settings.landmarks == "all" else EXPRESSION_LANDMARKS,
        iod=(RIGHT_EYE, LEFT_EYE),
        align=settings.align,
        align_indices=FACE_OVAL if settings.align else None,
    )


def train_editor(
    config: RunConfig,
    generator: FaceGenerator,
    samples: Samples,
    attribute: str,
    hfld_lambda: float,
    *,
    callback: Callable[[TrainingProgress], None] | None = None,
) -> Path:
    """Train (or resume) one editor and save it.

    An editor already saved is kept if it was trained as this call would train it (same
    training settings, HFLD options, samples and classifier); otherwise it is refused by name,
    so a rerun discovery or a changed config never edits with a stale editor.
    """
    directory = Path(config.edits.directory)
    target = editor_path(directory, attribute, hfld_lambda)
    device = generator.device
    direction = load_direction(directory / "directions" / f"{attribute}.safetensors", latent_shape=generator.latent_shape)
    classifier = load_latent_classifier(directory / CLASSIFIER_FILE, latent_shape=generator.latent_shape, device=device)
    settings = config.training
    strengths = config.edits.strengths
    trainer = EditorTrainer(
        LatentEditor.from_direction(direction).to(device),
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
        hfld=hfld_loss(config, generator, hfld_lambda) if hfld_lambda > 0 else None,
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
    changed = [key for key in ("training", "hfld", "classifier_attributes", "inputs") if saved.get(key) != expected[key]]
    if changed:
        raise CheckpointError(
            f"{path}: this editor was trained with other {', '.join(changed)} than this config and its "
            "discovery results give; delete it to train it again, or set another edits.directory"
        )
