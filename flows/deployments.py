"""Prefect set-up: the work pools, the GPU concurrency limit and the deployments of prefect.yaml.

Two process work pools:
- `gpu` runs shard rendering. Start one worker per GPU with `--limit 1`, so each GPU runs one
  flow run at a time.
- `cpu` runs the rest: fan-out parents that only submit and wait, and CPU-only flows.

Shard tasks on CUDA carry the `exprlock-gpu` tag; its concurrency limit caps how many run at
once across the whole cluster, so a Dask cluster or overlapping flow runs cannot put two shards
on one GPU. Set it to the number of GPUs that serve the `gpu` pool (`--gpu-slots`).

The deployments themselves live in `prefect.yaml` at the project root, one entry per flow and
purpose; `setup` creates what they need and applies them with `prefect deploy --all`. Their
pull step is `enter_project`: a worker runs flows from the directory exprlock is installed in
(editable installs: the checkout), wherever that is on the worker's machine, so relative config
paths such as `configs/demo.yaml` and the default `runs/` resolve there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, ExprlockError

POOLS = {
    "cpu": "exprlock: fan-out parents and CPU-only flows",
    "gpu": "exprlock: shard rendering; one worker per GPU, started with --limit 1",
}
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def enter_project() -> dict[str, str]:
    """Pull step: make the exprlock checkout the flow run's working directory."""
    os.chdir(PROJECT_ROOT)
    return {"directory": str(PROJECT_ROOT)}


def api_url() -> str:
    """The configured Prefect server, or an error saying how to point at one."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise ConfigError(
            "PREFECT_API_URL is not set: deployments need a Prefect server; start one with "
            "`prefect server start` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    return str(url)


def ensure_pools_and_limit(*, gpu_slots: int = 1) -> dict[str, Any]:
    """Create the process work pools (kept if they exist) and set the GPU tag's limit."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    from flows.generate import GPU_TAG

    if gpu_slots < 1:
        raise ConfigError(f"gpu_slots: expected at least 1 (the number of GPUs serving the gpu pool), got {gpu_slots}")
    api_url()
    created = []
    with get_client(sync_client=True) as client:
        for name, description in POOLS.items():
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                pool = WorkPoolCreate(
                    name=name,
                    type="process",
                    description=description,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
                client.create_work_pool(pool)
                created.append(name)
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=gpu_slots)
        limit = client.read_concurrency_limit_by_tag(GPU_TAG).concurrency_limit
    return {"pools": list(POOLS), "created": created, "limit": {GPU_TAG: limit}}


def apply_deployments(prefect_file: Path = PROJECT_ROOT / "prefect.yaml", names: list[str] | None = None) -> str:
    """`prefect deploy` of `prefect_file` (all deployments, or `names`); returns its output."""
    prefect_file = Path(prefect_file).resolve()
    if not prefect_file.is_file():
        raise ConfigError(f"{prefect_file}: no such deployment file; run from the exprlock checkout or pass its prefect.yaml")
    selection = [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", *selection, "--prefect-file", str(prefect_file)]
    result = subprocess.run(command, cwd=prefect_file.parent, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = " ".join((result.stdout + result.stderr).split()[-60:])
        raise ExprlockError(f"prefect deploy of {prefect_file} failed (exit {result.returncode}): {tail}")
    return result.stdout


def setup(*, gpu_slots: int = 1, prefect_file: Path | None = PROJECT_ROOT / "prefect.yaml") -> dict[str, Any]:
    """Pools, the GPU limit, then the deployments (skipped when `prefect_file` is None)."""
    report = ensure_pools_and_limit(gpu_slots=gpu_slots)
    report["api_url"] = api_url()
    if prefect_file is not None:
        apply_deployments(prefect_file)
        report["deployments"] = str(Path(prefect_file).resolve())
    return report
