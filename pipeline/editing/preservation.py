"""What an appearance edit must preserve: landmarks (HFLD) and further terms, rendered once.

HFLD compares landmark positions, a weak proxy for expression: an age or gender edit changes
the face's shape on purpose, and an expression change need not move the landmarks much. A
`PreservationLoss` therefore adds, each with its own weight, terms that compare what a face
model reads from the source and from the edit:

    lambda * HFLD(w, w') + sum_t weight_t * distance_t(model_t(G(w)), model_t(G(w')))

for example the KL divergence of an emotion model's distributions, or one minus the cosine of
identity embeddings. The edit is rendered once and its landmarks detected once; each term's
model also receives those landmarks (detached) to place its crop, so a term never depends on
where the landmark detector's gradient would move the crop. Source readings are constants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from pipeline.editing.hfld import HFLDLoss, check_landmarks
from pipeline.errors import ConfigError, ImageError

# (images (N, 3, H, W) in [-1, 1], their full landmarks, detached) -> features (N, ...)
FaceModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (source features, edit features) -> distance per sample (N,)
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LANDMARKS = "landmarks"


def kl_divergence(source: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
    """KL(source || edit) in nats per row of two probability tables `(N, C)`."""
    tiny = torch.finfo(edit.dtype).tiny
    return (source * (source.clamp_min(tiny).log() - edit.clamp_min(tiny).log())).sum(dim=1)


def squared_distance(source: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two feature tables `(N, D)`, per row."""
    return (edit - source).square().flatten(1).mean(dim=1)


def cosine_distance(source: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
    """One minus the cosine similarity of two embedding tables `(N, D)`."""
    return 1 - torch.nn.functional.cosine_similarity(source, edit, dim=1)


@dataclass(frozen=True)
class FaceTerm:
    """One preservation term beyond landmarks: `weight * distance(model(source), model(edit))`."""

    name: str
    weight: float
    model: FaceModel
    distance: Distance

    def __post_init__(self) -> None:
        if self.name == LANDMARKS:
            raise ConfigError(f"preservation term name {LANDMARKS!r} is HFLD's; choose another")
        if not self.weight >= 0:
            raise ConfigError(f"preservation term {self.name}: expected a weight >= 0, got {self.weight}")


class PreservationLoss:
    """HFLD plus weighted face-model terms, for editor training and refinement.

    Args:
        hfld: the landmark term; its generator renders, its detector finds the landmarks every
            term's crop uses, and its weight (lambda, may be 0) weighs the landmark shift.
        terms: further terms; one with weight 0 is neither computed nor recorded.
    """

    def __init__(self, hfld: HFLDLoss, terms: Sequence[FaceTerm] = ()) -> None:
        names = [term.name for term in terms]
        if len(set(names)) != len(names):
            raise ConfigError(f"preservation terms: names must be unique, got {names}")
        self.hfld = hfld
        self.terms = tuple(term for term in terms if term.weight > 0)

    @property
    def generator(self):
        return self.hfld.generator

    @property
    def active(self) -> bool:
        """Whether any term has a positive weight (else training never renders)."""
        return self.hfld.weight > 0 or bool(self.terms)

    def weights(self) -> dict[str, float]:
        """Every active term's weight, landmarks (lambda) first."""
        weights = {LANDMARKS: self.hfld.weight} if self.hfld.weight > 0 else {}
        return weights | {term.name: term.weight for term in self.terms}

    def describe(self) -> dict[str, Any]:
        """The HFLD options and the other terms' weights, as plain JSON values."""
        return {"hfld": self.hfld.describe(), "terms": {term.name: term.weight for term in self.terms}}

    def _read(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        images = self.generator.synthesize(latents)
        points = self.hfld.landmarks(images)
        check_landmarks(points, what="landmark detector output")
        if len(points) != len(latents):
            raise ImageError(f"landmark detector output: expected {len(latents)} faces, got {len(points)}")
        readings = {LANDMARKS: points[..., :2] if self.hfld.planar else points}
        crop_points = points.detach()
        return readings | {term.name: term.model(images, crop_points) for term in self.terms}

    @torch.no_grad()
    @torch.no_grad()
    def reference(self, source_latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the sources read as, the constants every edit of them is compared with."""
        return self._read(source_latents)

    def per_term(self, edited_latents: torch.Tensor, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each active term's unweighted value per sample `(N,)`, differentiable in the edit."""
        readings = self._read(edited_latents)
        values = {}
        if self.hfld.weight > 0:
            values[LANDMARKS] = self.hfld.shift(readings[LANDMARKS], reference[LANDMARKS])
        for term in self.terms:
            values[term.name] = term.distance(reference[term.name], readings[term.name])
        return values

    def weighted(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective per sample from `per_term`'s values."""
        weights = self.weights()
        return sum((weights[name] * value for name, value in values.items()), torch.zeros(()))

    def __call__(
        self,
        edited_latents: torch.Tensor,
        reference: dict[str, torch.Tensor],
        *,
        reduction: Literal["mean", "none"] = "mean",
    ) -> torch.Tensor:
        """The weighted sum of the terms, the batch mean or one value per sample."""
        per_sample = self.weighted(self.per_term(edited_latents, reference))
        if reduction == "none":
            return per_sample
        if reduction == "mean":
            return per_sample.mean()
        raise ConfigError(f"preservation reduction: expected 'mean' or 'none', got {reduction!r}")
