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

import numpy as np
import torch

from pipeline.config import PreservationWeights, RunConfig
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
    latents: np.ndarray,
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
        torch.from_numpy(latents),
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
    """Refuse a saved editor whose training record differs from `record` (steps excepted),
    naming the first differing field and both values. An editor trained over a range of
    strengths serves any range inside it: its edits at those strengths are what it learned."""
    saved = json.loads(json.dumps({key: read_editor_record(path).get(key) for key in _RECORD_KEYS}))
    expected = json.loads(json.dumps({key: record[key] for key in _RECORD_KEYS}))
    low, high = expected["training"]["strength_range"]
    trained_low, trained_high = saved.get("training", {}).get("strength_range") or (None, None)
    if trained_low is not None and trained_low <= low and high <= trained_high:
        expected["training"]["strength_range"] = saved["training"]["strength_range"]
    changed = _differences(saved, expected)
    if changed:
        field, theirs, ours = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise CheckpointError(
            f"{path}: this editor was trained with other inputs than this config and its discovery results give: "
            f"{field} is {_shown(field, theirs)} in the editor, {_shown(field, ours)} here{more}; delete it to train it "
            "again, or set another edits.directory"
        )


_RECORD_KEYS = ("training", "hfld", "preservation", "layers", "classifier_attributes", "inputs")


def _differences(saved: Any, expected: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, saved value, expected value) of every leaf that differs."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        return [found for key in sorted(set(saved) | set(expected))
                for found in _differences(saved.get(key), expected.get(key), f"{prefix}{key}.")]  # fmt: skip
    return [] if saved == expected else [(prefix.rstrip("."), saved, expected)]


def _shown(field: str, value: Any) -> str:
    if field.startswith("inputs."):
        return f"SHA-256 {str(value)[:12]}..." if value else "none"
    return json.dumps(value)
