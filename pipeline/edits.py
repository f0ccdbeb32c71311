"""Applying the configured edits to source latents, by every method the comparison needs.

Methods, all moving a source's latent by `strength` latent units towards the other side of the
attribute (the sign follows the source's own score, so every edit tries to flip it):

- `linear`: `w + a n` along the discovered direction (InterFaceGAN).
- `linear_projected`: the same along the direction made orthogonal to the emotion directions
  named in `discovery.project_out` (InterFaceGAN's conditional manipulation).
- `editor`: the Latent Transformer editor trained without HFLD (lambda = 0, the base model).
- `editor_hfld`: the editor trained with lambda * HFLD, once per configured lambda.
- `refined`: the HFLD editor's edit (same lambda), then per-sample HFLD refinement of the latent.
- `editor_preserve`: an editor trained with the preservation terms of an `edits.preserve` entry
  (HFLD, emotion-ensemble KL, SFace identity), once per entry.
- `refined_preserve`: that editor's edit, then per-sample refinement with the same terms.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from pipeline.config import PreservationWeights, RunConfig
from pipeline.editing.directions import Direction, load_direction, project_orthogonal
from pipeline.editing.editor import LatentEditor, layer_mask, load_editor
from pipeline.editing.files import (
    CLASSIFIER_FILE,
    direction_file,
    editor_path,
    emotion_name,
    read_report,
    require_attributes,
    require_gender_age_scorer,
    require_generator,
)
from pipeline.editing.latent_classifier import LatentClassifier, load_latent_classifier
from pipeline.editing.plan import EditSpec
from pipeline.editing.preservation import PreservationLoss
from pipeline.editing.refine import RefinementConfig, refine_edits
from pipeline.generators.base import FaceGenerator
from pipeline.objectives import preservation_loss
from pipeline.scoring import ATTRIBUTE_SCORES


def edit_directions(source_scores: np.ndarray, threshold: float) -> torch.Tensor:
    """+1 where the source lies below the attribute's threshold (edit adds it), else -1."""
    return torch.from_numpy(np.where(np.nan_to_num(source_scores, nan=-np.inf) < threshold, 1.0, -1.0)).float()


def attribute_reached(source_signs: torch.Tensor | np.ndarray, edit_scores: np.ndarray, threshold: float) -> np.ndarray:
    """Whether each edit ended on the other side of the threshold, as it set out to."""
    signs = np.asarray(source_signs)
    with np.errstate(invalid="ignore"):
        return np.where(signs > 0, edit_scores > threshold, edit_scores < threshold) & ~np.isnan(edit_scores)


class Editing:
    """The directions, editors and classifier of an edits directory, loaded on first use."""

    def __init__(self, config: RunConfig, generator: FaceGenerator) -> None:
        self.config = config
        self.generator = generator
        self.directory = config.models_dir
        self.report = read_report(self.directory)
        require_attributes(self.report, self.directory, config.edits.attributes)
        require_gender_age_scorer(self.report, self.directory, config)
        self._editors: dict[tuple[str, PreservationWeights], LatentEditor] = {}
        self._preservation: dict[PreservationWeights, PreservationLoss] = {}

    def require_generator(self, sha256: str) -> None:
        """Refuse directions and editors that discovery made for another generator's latents."""
        require_generator(self.report, self.directory, sha256)

    def threshold(self, attribute: str) -> float:
        return float(self.report["success_thresholds"][attribute])

    def score_name(self, attribute: str) -> str:
        """The scorer attribute that measures an editable attribute, e.g. gender -> p_female."""
        return ATTRIBUTE_SCORES[attribute]

    def direction(self, name: str) -> Direction:
        """A user-supplied direction file when the config names one, else the discovered one."""
        return load_direction(direction_file(self.config, name), latent_shape=self.generator.latent_shape, name=name)

    def projected_direction(self, attribute: str) -> Direction:
        others = [self.direction(emotion_name(label)) for label in self.config.discovery.project_out]
        return project_orthogonal(self.direction(attribute), others, name=f"{attribute}_projected")

    def editor(self, attribute: str, weights: PreservationWeights) -> LatentEditor:
        key = (attribute, weights)
        if key not in self._editors:
            path = editor_path(self.directory, attribute, weights)
            self._editors[key] = load_editor(path, latent_shape=self.generator.latent_shape, device=self.generator.device)
        return self._editors[key]

    def preservation(self, weights: PreservationWeights) -> PreservationLoss:
        if weights not in self._preservation:
            self._preservation[weights] = preservation_loss(self.config, self.generator, weights)
        return self._preservation[weights]

    @cached_property
    def classifier(self) -> LatentClassifier:
        return load_latent_classifier(
            self.directory / CLASSIFIER_FILE, latent_shape=self.generator.latent_shape, device=self.generator.device
        )

    def layer_mask(self, attribute: str) -> torch.Tensor | None:
        """`(num_ws, 1)` mask of the W+ layers `edits.layers` lets the attribute move; None: all."""
        layers = self.config.edits.layers.get(attribute)
        return None if layers is None else layer_mask(self.generator.latent_shape, layers).to(self.generator.device)

    def apply(self, spec: EditSpec, latents: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """Edited latents of a batch; `signs` (+1/-1 per source) say which way each goes, and
        multiples of them (the lock's candidates) scale the spec's strength. With `edits.layers`
        for the attribute, only those layers move, whatever the method."""
        edited = self._apply(spec, latents, signs)
        mask = self.layer_mask(spec.attribute)
        return edited if mask is None else latents + mask * (edited - latents)

    def _apply(self, spec: EditSpec, latents: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        strength = signs.to(latents.device, latents.dtype) * spec.strength
        if spec.method == "linear":
            return self.direction(spec.attribute).edit(latents, strength)
        if spec.method == "linear_projected":
            return self.projected_direction(spec.attribute).edit(latents, strength)
        with torch.no_grad():
            edited = self.editor(spec.attribute, spec.weights)(latents, strength)
        if spec.method in ("editor", "editor_hfld", "editor_preserve"):
            return edited
        if spec.method in ("refined", "refined_preserve"):
            result = refine_edits(
                edited,
                latents,
                preservation=self.preservation(spec.weights),
                classifier=self.classifier,
                attribute=spec.attribute,
                add=signs > 0,
                config=RefinementConfig(steps=self.config.edits.refine_steps),
            )
            return result.latents.detach()
        raise ValueError(f"edit method {spec.method!r} is not known")
