"""The `discover` flow: sample and score latents shard by shard, then fit the directions.

Sampling is the expensive, resumable part (one task per shard, skipped when its file exists);
fitting the directions and the latent classifier takes seconds and reruns whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import Progress, artifact_key, label_flow_run

from pipeline.config import load_config, parse_config
from pipeline.stages.discovery import collect_samples_on_disk, discover, ensure_sample_shard, sample_shard_plan
from pipeline.generators.factory import load_run_generator, resolve_device
from pipeline.scoring import load_scorer


@task(name="sample-shard", task_run_name="samples-{index:05d}", tags=["exprlock-gpu"], cache_policy=NO_CACHE, retries=1)
def sample_shard_task(config: dict[str, Any], index: int) -> str:
    settings = parse_config(config)
    device = str(resolve_device(settings.device))
    generator, _, _ = load_run_generator(settings, device)
    return str(ensure_sample_shard(settings, index, generator, load_scorer(*settings.scorer_settings(device))))


@task(name="fit-directions", task_run_name="fit-directions", cache_policy=NO_CACHE)
def fit_directions_task(config: dict[str, Any]) -> dict[str, Any]:
    settings = parse_config(config)
    device = str(resolve_device(settings.device))
    _, generator_name, generator_sha = load_run_generator(settings, device)
    provenance = {
        "generator": generator_name,
        "generator_sha256": generator_sha,
        "scorers": load_scorer(*settings.scorer_settings(device)).provenance(),
    }
    return discover(settings, collect_samples_on_disk(settings), provenance=provenance)


@flow(name="discover", persist_result=True)
def discover_flow(config_path: str) -> dict[str, Any]:
    """Fit one direction per attribute and emotion, and the latent classifier, from scored samples."""
    config = load_config(Path(config_path))
    label_flow_run("discover", config.run_id)
    payload = config.model_dump(mode="json")
    shards = len(sample_shard_plan(config))
    progress = Progress(artifact_key(config.run_id, "samples"), shards, "discovery sample shards")
    for index in range(shards):
        sample_shard_task.with_options(task_run_name=f"samples-{index:05d}")(payload, index)
        progress.advance()
    report = fit_directions_task(payload)
    rows = [{"direction": name, **record} for name, record in report["directions"].items()]
    create_table_artifact(table=rows, key=artifact_key(config.run_id, "directions"),
                          description=f"hold-out accuracy of each direction in {config.models_dir}")
    return report
