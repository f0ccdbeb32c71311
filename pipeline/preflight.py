"""What a `generate` run needs, checked before any work starts.

A run refused here costs about a second, starts no Prefect server and leaves nothing on disk:
the run directory, the device, the generator checkpoint, the models of the configured edits
and every asset the run will load are checked first, each refusal one line naming what is
wrong and what to do. torch is imported only where a check cannot do without it (a CUDA
device, a StyleGAN2 checkpoint, the deepface backend).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.config import STYLEGAN_KINDS, RunConfig
from pipeline.editing.files import EDITOR_DIR, read_report, require_attributes, require_gender_age_scorer, require_generator
from pipeline.editing.plan import plan_edits, required_models
from pipeline.errors import CheckpointError, ConfigError
from pipeline.storage.layout import CONFIG_FILE, other_run_error
from pipeline.models.assets import asset_path, file_sha256, get_asset

# The assets each scorer model loads (`pipeline.scoring.FaceScorer`).
SCORER_ASSETS = ("facemesh", "face-api-expression", "face-api-expression-manifest", "yunet")
GENDER_AGE_MODEL_ASSETS = {
    "faceapi": ("face-api-age-gender", "face-api-age-gender-manifest"),
    "adience": ("adience-age-net", "adience-age-prototxt", "adience-gender-net", "adience-gender-prototxt"),
}
DEFAULT_GENERATOR = "dcgan-digiface"


def check_generate(config: RunConfig, run_dir: Path, config_path: Path) -> None:
    """Every check a `generate` run can pass or fail before it starts."""
    check_run_dir(run_dir, config.run_id)
    check_device(config.device)
    generator_sha = check_generator(config)
    check_edit_models(config, generator_sha, config_path)
    for name in run_assets(config):
        asset_path(name)
    check_external_weights(config)


def check_run_dir(run_dir: Path, run_id: str) -> None:
    """A new or empty directory we can create and write in, or this very run's directory."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir}: is a file, not a directory; choose another --out")
    if run_dir.is_dir():
        record = run_dir / CONFIG_FILE
        if record.is_file():
            try:
                previous = json.loads(record.read_text()).get("run_id")
            except (OSError, ValueError, AttributeError) as error:
                raise ConfigError(
                    f"--out {run_dir}: its {CONFIG_FILE} is not a readable run record ({error}); choose another --out"
                ) from None
            if previous != run_id:
                raise other_run_error(run_dir, previous, run_id)
        elif any(run_dir.iterdir()):
            raise ConfigError(
                f"--out {run_dir}: holds files but no exprlock run ({CONFIG_FILE} is missing); "
                "choose a new or empty directory"
            )
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out {run_dir}: {existing} is a file, not a directory; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {run_dir}: {existing} is not writable; choose a directory you can write to")


def check_device(device: str) -> None:
    """'cuda' only where torch sees a GPU."""
    if device == "cuda":
        from pipeline.generators.factory import resolve_device

        resolve_device(device)


def check_generator(config: RunConfig) -> str:
    """The generator's weights are readable and of a known format; a StyleGAN file holds the
    family `generator.kind` names and takes `generator.class_index`. Returns their SHA-256.
    (A StyleGAN run always names a checkpoint: the config refuses one without.)"""
    path = config.checkpoint_path
    if path is None:
        asset_path(DEFAULT_GENERATOR)
        return get_asset(DEFAULT_GENERATOR).sha256
    if not path.is_file():
        raise CheckpointError(f"generator.checkpoint: {path} is not a file; set it to the generator's weights")
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise CheckpointError(f"generator.checkpoint: cannot read {path} ({error.strerror}); check its permissions") from None
    if config.generator_kind in STYLEGAN_KINDS:
        from pipeline.generators.checkpoints import check_checkpoint, read_checkpoint

        check_checkpoint(
            path, read_checkpoint(path), kind=config.generator_kind, class_index=config.generator.class_index  # type: ignore[arg-type]
        )
    return file_sha256(path)


def check_edit_models(config: RunConfig, generator_sha: str, config_path: Path) -> None:
    """The discovery report, directions and editors the run's edits load exist, for this generator."""
    needed = required_models(config)
    if not needed:
        return
    directory = config.models_dir
    report = read_report(directory)
    require_attributes(report, directory, config.edits.attributes)
    require_generator(report, directory, generator_sha)
    require_gender_age_scorer(report, directory, config)
    missing = [path for path in needed if not path.is_file()]
    if not missing:
        return
    commands = []
    if any(path.parent.name != EDITOR_DIR for path in missing):
        commands.append(f"`exprlock discover --config {config_path}`")
    if any(path.parent.name == EDITOR_DIR for path in missing):
        commands.append(f"`exprlock train-editor --config {config_path}`")
    raise ConfigError(
        f"edits.directory {directory}: the configured edits need {', '.join(str(p) for p in missing)}, "
        f"which do not exist; run {' then '.join(commands)}"
    )


def run_assets(config: RunConfig) -> list[str]:
    """The registry assets a run loads: its generator's default weights, the scorers, and
    3DDFA_V2 where a refinement preserves 3DMM expression coefficients."""
    names = []
    if config.generator.checkpoint is None and config.generator_kind == "dcgan":
        names.append(DEFAULT_GENERATOR)
    if config.scoring.enabled:
        names += SCORER_ASSETS
        if config.emotion_backend == "native":
            names.append("fer-mini-xception")
        if config.identity_backend == "native":
            names.append("sface")
        if config.scoring.attributes:
            names += GENDER_AGE_MODEL_ASSETS[config.scoring.age_gender]
    if any(spec.method == "refined_preserve" and spec.weights.expression > 0 for spec in plan_edits(config)):
        names.append("tddfa-mobilenet")
    return names


def check_external_weights(config: RunConfig) -> None:
    """deepface's and insightface's weights, which their users put in place themselves."""
    if not config.scoring.enabled:
        return
    if config.emotion_backend == "deepface":
        from pipeline.models.deepface_backend import require_weights

        require_weights()
    if config.identity_backend == "insightface":
        from pipeline.models.insightface_backend import RECOGNITION_FILE, model_file

        model_file(None, RECOGNITION_FILE, "recognition")
