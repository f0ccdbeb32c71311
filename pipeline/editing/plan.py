"""The edits a run makes: every (attribute, method, strength, preservation weights) of its config.

Torch-free, so that what a run will edit can be known before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import PreservationWeights, RunConfig


@dataclass(frozen=True)
class EditSpec:
    """One edit every source gets."""

    attribute: str
    method: str
    strength: float
    hfld_lambda: float
    terms: PreservationWeights | None = None

    @property
    def weights(self) -> PreservationWeights:
        """The preservation weights of the editor this edit uses (all 0: the base editor);
        `terms` for a preserving editor, else HFLD's lambda alone."""
        return self.terms or PreservationWeights(landmarks=self.hfld_lambda)

    @property
    def slug(self) -> str:
        """A file-name-safe identifier, e.g. `age-editor_hfld-s3-l10` or `age-editor_preserve-s3-l1000-e10`."""
        weights = self.weights.slug if not self.weights.landmarks_only else f"l{self.hfld_lambda:g}"
        return f"{self.attribute}-{self.method}-s{self.strength:g}-{weights}"


def plan_edits(config: RunConfig) -> list[EditSpec]:
    """Every (attribute, method, strength, weights) of the config, attribute-major."""
    specs = []
    for attribute in config.edits.attributes:
        for method in config.edits.methods:
            if method in ("editor_preserve", "refined_preserve"):
                weights = [entry.weights(attribute) for entry in config.edits.preserve]
            elif method in ("editor_hfld", "refined"):
                weights = [PreservationWeights(landmarks=value) for value in config.edits.hfld_lambdas]
            else:
                weights = [PreservationWeights()]
            for strength in config.edits.strengths:
                specs.extend(
                    EditSpec(attribute, method, strength, w.landmarks, None if w.landmarks_only else w)
                    for w in dict.fromkeys(weights)
                )
    return specs
