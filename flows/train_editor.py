"""The `train-editor` flow: one task per (attribute, preservation weights) editor the config's methods need.

Each task resumes from its checkpoint, and an editor already saved is not trained again. Each
publishes its loss curve as a table artifact; the flow run shows its progress in editors.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from flows.artifacts import Progress, artifact_key, label_flow_run
from pipeline.config import PreservationWeights, load_config, parse_config
from pipeline.stages.discovery import training_latents
from pipeline.editing.training import TrainingProgress
from pipeline.generators.factory import load_run_generator, resolve_device
from pipeline.stages.train_editors import required_editors, train_editor


def editor_task_name() -> str:
    """`editor-<attribute>-<weights>`, e.g. `editor-gender-l1000-e30-x100`."""
    parameters = task_run.parameters
    return f"editor-{parameters['attribute']}-{PreservationWeights(**parameters['weights']).slug}"


@task(name="train-editor", task_run_name=editor_task_name, tags=["exprlock-gpu"], cache_policy=NO_CACHE)
def train_editor_task(config: dict[str, Any], attribute: str, weights: dict[str, float]) -> str:
    settings = parse_config(config)
    generator, _, _ = load_run_generator(settings, str(resolve_device(settings.device)))
    logger = get_run_logger()
    curve: list[dict[str, float]] = []

    def report(progress: TrainingProgress) -> None:
        curve.append({"step": progress.step, **{k: round(v, 6) for k, v in progress.losses.items()}})
        if progress.step % 50 == 0 or progress.step == progress.steps:
            logger.info("%s %s step %d/%d %s", attribute, preservation.slug, progress.step, progress.steps,
                        {k: round(v, 4) for k, v in progress.losses.items()})

    preservation = PreservationWeights(**weights)
    latents = training_latents(settings, generator)
    path = train_editor(settings, generator, latents, attribute, preservation, callback=report)
    if curve:  # empty when the editor was already trained
        create_table_artifact(table=curve, key=artifact_key(settings.run_id, "editor", attribute, preservation.slug),
                              description=f"loss per step of the {attribute} editor ({preservation.slug})")
    return str(path)


@flow(name="train-editor", persist_result=True)
def train_editor_flow(config_path: str) -> list[str]:
    """Train every editor the configured edit methods use (all weights 0: the base editor)."""
    config = load_config(Path(config_path))
    label_flow_run("train-editor", config.run_id)
    payload = config.model_dump(mode="json")
    editors = required_editors(config)
    progress = Progress(artifact_key(config.run_id, "editors"), len(editors), "editors trained or found")
    paths = []
    for attribute, weights in editors:
        paths.append(train_editor_task(payload, attribute, asdict(weights)))
        progress.advance()
    return paths
