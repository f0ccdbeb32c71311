"""Where an edits directory (`edits.directory`) keeps its models, by name.

Discovery writes the report, the directions and the latent classifier; `train-editor` writes
the editors. Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import PreservationWeights
from pipeline.errors import ConfigError

REPORT_FILE = "discovery.json"
CLASSIFIER_FILE = "latent_classifier.safetensors"


def emotion_name(label: str) -> str:
    """Name of an emotion's direction and classifier output, e.g. `emotion_happy`."""
    return f"emotion_{label}"


def read_report(directory: Path) -> dict[str, Any]:
    """The discovery report of an edits directory, or the command that makes it."""
    path = Path(directory) / REPORT_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no discovery results; run `exprlock discover --config ...` first")
    return json.loads(path.read_text())


def direction_path(directory: Path, name: str) -> Path:
    """A discovered direction's file, e.g. `directions/age.safetensors`."""
    return Path(directory) / "directions" / f"{name}.safetensors"


def editor_path(directory: Path, attribute: str, weights: PreservationWeights) -> Path:
    """An editor's file; HFLD-only editors keep their lambda names (`age-lambda1000`)."""
    name = f"lambda{weights.landmarks:g}" if weights.landmarks_only else weights.slug
    return Path(directory) / "editors" / f"{attribute}-{name}.safetensors"
