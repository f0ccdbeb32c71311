"""The `generate` flow: plan shards, render each, write the contact sheet.

Tasks take small hashable inputs (the config as JSON, the run directory, a shard index) and
return summaries, never tensors. The render task carries the `exprlock-gpu` tag so a
concurrency limit on that tag keeps one GPU from being oversubscribed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.config import load_config, parse_config
from pipeline.run import default_run_dir, generate_shard, plan_shards, prepare_run, write_contact_sheet

GPU_TAG = "exprlock-gpu"


@task(name="generate-shard", tags=[GPU_TAG], cache_policy=NO_CACHE, retries=1)
def generate_shard_task(config: dict[str, Any], run_dir: str, index: int) -> dict[str, Any]:
    result = generate_shard(parse_config(config), Path(run_dir), index)
    return {"shard": result.index, "path": str(result.path), "rows": result.rows, "skipped": result.skipped}


@task(name="contact-sheet", cache_policy=NO_CACHE)
def contact_sheet_task(run_dir: str) -> str:
    return str(write_contact_sheet(Path(run_dir)))


@flow(name="generate")
def generate(config_path: str, out: str | None = None) -> dict[str, Any]:
    """Sample the config's seeds in shards, render and save them, and write the manifest."""
    config = load_config(Path(config_path))
    run_dir = prepare_run(config, Path(out) if out else default_run_dir(config))
    payload = config.model_dump(mode="json")
    shards = [generate_shard_task(payload, str(run_dir), index) for index in range(len(plan_shards(config)))]
    sheet = contact_sheet_task(str(run_dir))
    return {
        "run_id": config.run_id,
        "run_dir": str(run_dir),
        "manifest": str(run_dir / "manifest"),
        "contact_sheet": sheet,
        "shards_written": sum(not s["skipped"] for s in shards),
        "shards_skipped": sum(s["skipped"] for s in shards),
        "rows_written": sum(s["rows"] for s in shards),
    }
