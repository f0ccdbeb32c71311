"""Where an edits directory (`edits.directory`) keeps its models, by name.

Discovery writes the report, the directions and the latent classifier; `train-editor` writes
the editors. Nothing here imports torch, so a run's models can be found (or found missing)
before anything heavy loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import GENDER_AGE_ASSETS, PreservationWeights, RunConfig
from pipeline.errors import CheckpointError, ConfigError

REPORT_FILE = "discovery.json"
CLASSIFIER_FILE = "latent_classifier.safetensors"
EDITOR_DIR = "editors"


def emotion_name(label: str) -> str:
    """Name of an emotion's direction and classifier output, e.g. `emotion_happy`."""
    return f"emotion_{label}"


def read_report(directory: Path) -> dict[str, Any]:
    """The discovery report of an edits directory, or the command that makes it."""
    path = Path(directory) / REPORT_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no discovery results; run `exprlock discover --config ...` first")
    return json.loads(path.read_text())


def require_attributes(report: dict[str, Any], directory: Path, attributes: list[str]) -> None:
    """Refuse attributes that discovery found no direction for."""
    missing = [a for a in attributes if a not in report["success_thresholds"]]
    if missing:
        raise ConfigError(
            f"edits.attributes: no direction for {missing} in {directory} (they were not scored "
            "at discovery); enable their scorer and run `exprlock discover` again"
        )


def require_generator(report: dict[str, Any], directory: Path, sha256: str) -> None:
    """Refuse directions and editors that discovery made for another generator's latents."""
    made_for = report.get("provenance", {}).get("generator_sha256")
    if made_for and made_for != sha256:
        raise CheckpointError(
            f"{directory}: its directions and editors were made for the generator with SHA-256 "
            f"{made_for[:16]}..., this run's generator is {sha256[:16]}...; run `exprlock discover` and "
            "`exprlock train-editor` for this generator, or set edits.directory to its models"
        )


def require_gender_age_scorer(report: dict[str, Any], directory: Path, config: RunConfig) -> None:
    """Refuse gender and age directions, thresholds and editors fitted on another scorer's scores:
    each model has its own scale (face-api's age regression is not Adience's bucket average)."""
    edited = [a for a in config.edits.attributes if a in ("gender", "age")]
    if not edited or not config.scoring.attributes:
        return
    made_with = {r["role"]: r["name"] for r in report.get("provenance", {}).get("scorers", []) if r["role"] in edited}
    wanted = GENDER_AGE_ASSETS[config.scoring.age_gender]
    differ = {role: name for role, name in made_with.items() if name != wanted[role]}
    if differ:
        role, name = next(iter(differ.items()))
        raise ConfigError(
            f"{directory}: its {role} direction and editors were made with {role} scores of {name}, this run scores "
            f"{role} with {wanted[role]} (scoring.age_gender: {config.scoring.age_gender}); run `exprlock discover` and "
            "`exprlock train-editor` with this config into another edits.directory, or set scoring.age_gender to the "
            "models' scorer"
        )


def direction_path(directory: Path, name: str) -> Path:
    """A discovered direction's file, e.g. `directions/age.safetensors`."""
    return Path(directory) / "directions" / f"{name}.safetensors"


def direction_file(config: RunConfig, name: str) -> Path:
    """A user-supplied direction file when the config names one, else the discovered one."""
    supplied = config.edits.direction_files.get(name)
    return config.resolve(supplied) if supplied else direction_path(config.models_dir, name)


def editor_path(directory: Path, attribute: str, weights: PreservationWeights) -> Path:
    """An editor's file; HFLD-only editors keep their lambda names (`age-lambda1000`)."""
    name = f"lambda{weights.landmarks:g}" if weights.landmarks_only else weights.slug
    return Path(directory) / EDITOR_DIR / f"{attribute}-{name}.safetensors"
