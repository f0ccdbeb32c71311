"""The `generate` flow: plan shards, render each, write the contact sheet and the dataset card.

Tasks take small hashable inputs (the config as JSON, the run directory, a shard index) and
return summaries, never tensors. Each shard is rendered under an exclusive claim on the shared
filesystem (`pipeline.storage.shard_claim`), so workers that race for a shard write it once.

Scale-out, two ways:
- `runner="dask"` runs the selected shards in parallel on a Dask cluster through
  `prefect-dask`: a local cluster of `dask_workers` processes, or the scheduler at
  `dask_address`.
- `shards="0-9"` makes this flow run do only those shards, so one run can be split into
  several flow runs on several workers (`flows.fanout` submits them).
The contact sheet and the card are written by whichever flow run finds every shard finished.

Shard tasks on a CUDA device carry the `exprlock-gpu` tag, whose concurrency limit (created by
`exprlock setup`) keeps a GPU from being oversubscribed. On the CPU they carry no tag: Prefect
acquires a concurrency slot for every tag of a task run, limit or not, and that took 0.3 s per
shard on a 2-core machine, a fifth of a 32-face shard (docs/performance.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.cache_policies import NO_CACHE

from flows.artifacts import Progress, artifact_key, label_flow_run
from pipeline.storage.card import write_card
from pipeline.config import load_config, parse_config, with_device
from pipeline.errors import ConfigError, is_deterministic
from pipeline.storage.manifest import MANIFEST_DIR, shard_files
from pipeline.storage.layout import default_run_dir, prepare_run, run_complete, shard_count
from pipeline.stages.generate import write_contact_sheet
from pipeline.stages.shards import ShardStatus, generate_shard_once
from pipeline.storage.shard_claim import parse_shard_spec
from pipeline.storage.summary import RunManifest, markdown_summary

GPU_TAG = "exprlock-gpu"


def retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry a shard only when a second try may pass: never bad input, a full disk or a refusal."""
    return not is_deterministic(state.result(raise_on_failure=False))


@task(name="generate-shard", task_run_name="shard-{index:05d}", cache_policy=NO_CACHE, retries=1,
      retry_condition_fn=retry_transient)
def generate_shard_task(config: dict[str, Any], run_dir: str, index: int) -> dict[str, Any]:
    started = time.perf_counter()
    outcome = generate_shard_once(parse_config(config), Path(run_dir), index)
    seconds = round(time.perf_counter() - started, 2)
    get_run_logger().info("shard %05d %s: %d rows, %s%s", index, outcome.status, outcome.rows, outcome.path,
                          f" ({outcome.note})" if outcome.note else "")
    return {"shard": outcome.index, "path": str(outcome.path), "rows": outcome.rows, "status": str(outcome.status),
            "note": outcome.note, "seconds": seconds}


@task(name="contact-sheet", task_run_name="contact-sheet", cache_policy=NO_CACHE)
def contact_sheet_task(run_dir: str) -> str:
    return str(write_contact_sheet(Path(run_dir)))


@task(name="dataset-card", task_run_name="dataset-card", cache_policy=NO_CACHE)
def dataset_card_task(run_dir: str) -> str:
    return str(write_card(Path(run_dir)))


@flow(name="generate-shards")
def render_shards(config: dict[str, Any], run_dir: str, indices: list[int], tags: list[str]) -> list[dict[str, Any]]:
    """Submit every shard at once to this subflow's task runner (a Dask cluster)."""
    shard_task = generate_shard_task.with_options(tags=tags)
    futures = [shard_task.submit(config, run_dir, index) for index in indices]
    return [future.result() for future in futures]


@flow(name="generate", persist_result=True)
def generate(
    config_path: str,
    out: str | None = None,
    device: Literal["auto", "cpu", "cuda"] | None = None,
    shards: str | None = None,
    runner: Literal["process", "dask"] = "process",
    dask_address: str | None = None,
    dask_workers: int = 2,
) -> dict[str, Any]:
    """Sample the config's seeds in shards, render and save them, and write the manifest.

    Args:
        config_path: run config (YAML or TOML), relative to the worker's working directory.
        out: run directory; default `runs/<run id>`.
        device: replaces the config's device (the run id does not change).
        shards: only these shards, e.g. "0-9" or "0-3,8"; default all.
        runner: "process" renders shards one after another in the flow's process; "dask" in parallel.
        dask_address: scheduler of an existing Dask cluster (runner "dask"); default a local one.
        dask_workers: processes of the local Dask cluster.
    """
    config = with_device(load_config(Path(config_path)), device)
    if dask_address and runner != "dask":
        raise ConfigError("dask_address: only used with runner='dask'; set runner='dask' or drop the address")
    run_dir = prepare_run(config, Path(out) if out else default_run_dir(config))
    label_flow_run("generate", config.run_id)
    total = shard_count(config)
    indices = parse_shard_spec(shards, total) if shards else list(range(total))
    payload = config.model_dump(mode="json")
    tags = slot_tags(config.device)
    progress = Progress(artifact_key(config.run_id, "progress"), len(indices), f"shards of run {config.run_id}")
    if runner == "dask":
        results = render_shards.with_options(task_runner=dask_task_runner(dask_address, dask_workers))(
            payload, str(run_dir), indices, tags
        )
        progress.advance(len(results))
    else:
        shard_task = generate_shard_task.with_options(tags=tags)
        results = []
        for index in indices:
            results.append(shard_task(payload, str(run_dir), index))
            progress.advance()
    complete = run_complete(config, run_dir)
    statuses = [r["status"] for r in results]
    notes = {status: [{"shard": r["shard"], "note": r["note"]} for r in results if r["status"] == status]
             for status in (ShardStatus.REMADE, ShardStatus.BUSY)}
    summary = {
        "run_id": config.run_id,
        "run_dir": str(run_dir),
        "manifest": str(run_dir / MANIFEST_DIR),
        "complete": complete,
        "contact_sheet": contact_sheet_task(str(run_dir)) if complete else None,
        "dataset_card": dataset_card_task(str(run_dir)) if complete else None,
        "shards_written": statuses.count(ShardStatus.WRITTEN),
        "shards_skipped": statuses.count(ShardStatus.DONE),
        "remade": notes[ShardStatus.REMADE],  # damaged shards quarantined and made again
        "busy": notes[ShardStatus.BUSY],  # shards other workers hold, with their owners
        "rows_written": sum(r["rows"] for r in results),
    }
    publish_run(config.run_id, run_dir, summary, results)
    return summary


def publish_run(run_id: str, run_dir: Path, summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """The per-shard outcomes as a table artifact, and the run as a Markdown one."""
    columns = ("shard", "status", "rows", "seconds", "path", "note")
    create_table_artifact(table=[{c: r.get(c) for c in columns} for r in results], key=artifact_key(run_id, "shards"),
                          description=f"shards of run {run_id} in this flow run: written, done, remade or busy")
    if shard_files(run_dir):
        files = {"manifest": summary["manifest"], "contact sheet": summary["contact_sheet"], "dataset card": summary["dataset_card"]}
        create_markdown_artifact(markdown=markdown_summary(RunManifest.read(run_dir), files), key=artifact_key(run_id, "summary"),
                                 description=f"run {run_id}")


def slot_tags(device: str) -> list[str]:
    """The concurrency tags of a shard task: GPU work is throttled, CPU work is not (and untagged)."""
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return [GPU_TAG] if on_gpu else []


def dask_task_runner(address: str | None, workers: int) -> Any:
    """A `DaskTaskRunner` on the scheduler at `address`, else on a local cluster of `workers`.

    Local workers are processes with one thread each, and Dask's nanny sets OMP_NUM_THREADS=1
    in each, so N workers keep N cores busy without oversubscribing them.
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    if workers < 1:
        raise ConfigError(f"dask_workers: expected at least 1, got {workers}")
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    )
