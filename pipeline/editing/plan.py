"""The edits a run makes: every (attribute, method, strength, preservation weights) of its config.

Torch-free: the command line plans a run's edits, and checks the models they need, before
anything heavy loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PreservationWeights, RunConfig
from pipeline.editing.files import CLASSIFIER_FILE, REPORT_FILE, direction_file, editor_path, emotion_name


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


def required_models(config: RunConfig) -> list[Path]:
    """Every model file the run's edits and target expressions load, in a stable order."""
    edits = config.edits
    if not edits.attributes and not config.sources.expressions:
        return []
    directory = config.models_dir
    needed = [directory / REPORT_FILE]
    needed += [direction_file(config, emotion_name(label)) for label in config.sources.expressions]
    for spec in plan_edits(config):
        if spec.method in ("linear", "linear_projected"):
            needed.append(direction_file(config, spec.attribute))
        if spec.method == "linear_projected":
            needed += [direction_file(config, emotion_name(label)) for label in config.discovery.project_out]
        if spec.method not in ("linear", "linear_projected"):
            needed.append(editor_path(directory, spec.attribute, spec.weights))
        if spec.method in ("refined", "refined_preserve"):
            needed.append(directory / CLASSIFIER_FILE)
    return list(dict.fromkeys(needed))


def preserving_method(editor: str, preservation: Mapping[str, float | None] | None) -> str:
    """A manifest row's method with a preserving editor's terms, e.g. `editor_preserve l1000-e30`,
    so two preserving editors of one run are told apart; other methods as they are."""
    if not editor.endswith("_preserve") or preservation is None:
        return editor
    return f"{editor} {PreservationWeights(**{k: float(v or 0.0) for k, v in preservation.items()}).slug}"
