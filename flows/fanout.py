"""The `generate-fanout` flow: one run split into shard ranges, one flow run per range.

It prepares the run directory on the shared filesystem, splits the run's shards into `parts`
contiguous ranges and submits one run of the `generate/shards` deployment per range to the
`gpu` pool, so N GPU workers on N machines share one run. It submits nothing while the pool has
no worker online (the runs would wait for one forever), waits for the children with Prefect's
`wait_for_flow_run` (and fails when any fails) or returns at once, and cancels the children it
made when it is interrupted. The child that finds every shard finished writes the contact sheet
and the dataset card; shard claims keep a shard written once even if ranges overlap.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import WorkerStatus
from prefect.flow_runs import wait_for_flow_run
from prefect.states import Cancelled, Cancelling
from prefect.utilities.asyncutils import run_coro_as_sync

from pipeline.config import load_config, with_device
from pipeline.errors import ConfigError, ExprlockError, RunError
from pipeline.storage.layout import default_run_dir, prepare_run, shard_count
from pipeline.storage.shard_claim import split_shards

SHARDS_DEPLOYMENT = "generate/shards"
# Workers announce themselves by heartbeat; one started just before a submission gets this long.
WORKER_GRACE_SECONDS = 20.0


@flow(name="generate-fanout")
def generate_fanout(
    config_path: str,
    out: str | None = None,
    parts: int = 2,
    device: Literal["auto", "cpu", "cuda"] | None = None,
    deployment: str = SHARDS_DEPLOYMENT,
    wait: bool = True,
    poll_seconds: int = 2,
) -> dict[str, Any]:
    """Submit one `deployment` run per shard range; wait for them when `wait`.

    Args:
        config_path: run config, as the workers see it (relative to their project directory).
        out: run directory on the shared filesystem; default `runs/<run id>`.
        parts: number of shard ranges, i.e. flow runs (at most one per shard).
        device: passed to every child run; replaces the config's device.
        deployment: the `generate` deployment that renders a range ("flow/deployment").
        wait: wait for every child run and fail if one does not complete.
        poll_seconds: how often to poll the children's states while waiting.
    """
    from prefect.deployments import run_deployment

    config = with_device(load_config(Path(config_path)), device)
    with get_client(sync_client=True) as client:
        require_worker(client, deployment)
    run_dir = prepare_run(config, Path(out) if out else default_run_dir(config))
    specs = split_shards(shard_count(config), parts)
    logger = get_run_logger()
    children: list[dict[str, Any]] = []
    try:
        for spec in specs:
            parameters: dict[str, Any] = {"config_path": config_path, "out": str(run_dir), "shards": spec}
            if device is not None:
                parameters["device"] = device
            child = run_deployment(deployment, parameters=parameters, timeout=0)
            logger.info("shards %s: flow run %s (%s)", spec, child.name, child.id)
            children.append({"shards": spec, "id": str(child.id), "name": child.name})
        summary: dict[str, Any] = {"run_id": config.run_id, "run_dir": str(run_dir), "flow_runs": children}
        if wait:
            for child in children:
                finished = run_coro_as_sync(wait_for_flow_run(UUID(child["id"]), timeout=None, poll_interval=poll_seconds))
                child["state"] = finished.state.type.value
    except BaseException:  # interrupted, or a submission failed: leave nothing behind to run later
        cancel(children)
        raise
    failed = [c for c in children if wait and c["state"] != "COMPLETED"]
    if failed:
        names = ", ".join(f"{c['name']} (shards {c['shards']}): {c['state']}" for c in failed)
        raise RunError(f"{len(failed)} of {len(children)} shard runs did not complete: {names}; see their logs")
    return summary


def require_worker(client: SyncPrefectClient, deployment: str) -> None:
    """Refuse to submit to a pool without a worker online (waiting `WORKER_GRACE_SECONDS` for
    one that is starting), naming the command that starts one."""
    from prefect.exceptions import ObjectNotFound

    try:
        pool = client.read_deployment_by_name(deployment).work_pool_name
    except ObjectNotFound:
        raise ConfigError(f"deployment {deployment!r} was not found on the Prefect server; run `exprlock setup` first") from None
    deadline = time.monotonic() + WORKER_GRACE_SECONDS
    while not any(w.status == WorkerStatus.ONLINE for w in client.read_workers_for_work_pool(pool)):
        if time.monotonic() > deadline:
            raise ExprlockError(
                f"work pool {pool!r} has no worker online, so its runs would wait for one forever; start one with "
                f"`prefect worker start --pool {pool} --limit 1` and submit again (nothing was submitted)"
            )
        time.sleep(1.0)


def cancel(children: list[dict[str, Any]]) -> None:
    """Cancel the child runs not finished yet: scheduled ones at once, running ones through their worker."""
    with get_client(sync_client=True) as client:
        for child in children:
            state = client.read_flow_run(UUID(child["id"])).state
            if state is None or state.is_final():
                continue
            client.set_flow_run_state(UUID(child["id"]), Cancelling() if state.is_running() else Cancelled(), force=True)
