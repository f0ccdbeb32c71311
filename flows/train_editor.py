"""The `train-editor` flow: one task per (attribute, preservation weights) editor the config's methods need.

Each task resumes from its checkpoint, and an editor already saved is not trained again.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.config import PreservationWeights, load_config, parse_config
from pipeline.discovery import collect_samples_on_disk
from pipeline.editing.training import TrainingProgress
from pipeline.generators.factory import load_run_generator, resolve_device
from pipeline.train_editors import required_editors, train_editor


@task(name="train-editor", tags=["exprlock-gpu"], cache_policy=NO_CACHE)
def train_editor_task(config: dict[str, Any], attribute: str, weights: dict[str, float]) -> str:
    settings = parse_config(config)
    generator, _, _ = load_run_generator(settings, str(resolve_device(settings.device)))
    logger = get_run_logger()

    def report(progress: TrainingProgress) -> None:
        if progress.step % 50 == 0 or progress.step == progress.steps:
            logger.info("%s %s step %d/%d %s", attribute, preservation.slug, progress.step, progress.steps,
                        {k: round(v, 4) for k, v in progress.losses.items()})

    preservation = PreservationWeights(**weights)
    samples = collect_samples_on_disk(settings)
    path = train_editor(settings, generator, samples, attribute, preservation, callback=report)
    return str(path)


@flow(name="train-editor")
def train_editor_flow(config_path: str) -> list[str]:
    """Train every editor the configured edit methods use (all weights 0: the base editor)."""
    config = load_config(Path(config_path))
    payload = config.model_dump(mode="json")
    return [train_editor_task(payload, attribute, asdict(weights)) for attribute, weights in required_editors(config)]
