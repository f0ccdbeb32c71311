"""The `generate-fanout` flow: one run split into shard ranges, one flow run per range.

It prepares the run directory on the shared filesystem, splits the run's shards into `parts`
contiguous ranges and submits one run of the `generate/shards` deployment per range to the
`gpu` pool, so N GPU workers on N machines share one run. It can wait for them (and fails when
any fails) or return at once. The child that finds every shard finished writes the contact
sheet and the dataset card; shard claims keep a shard written once even if ranges overlap.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from pipeline.config import load_config, with_device
from pipeline.errors import ConfigError, ExprlockError
from pipeline.layout import default_run_dir, prepare_run, shard_count
from pipeline.shard_claim import split_shards

SHARDS_DEPLOYMENT = "generate/shards"


@flow(name="generate-fanout")
def generate_fanout(
    config_path: str,
    out: str | None = None,
    parts: int = 2,
    device: Literal["auto", "cpu", "cuda"] | None = None,
    deployment: str = SHARDS_DEPLOYMENT,
    wait: bool = True,
    poll_seconds: float = 2.0,
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
    from prefect.exceptions import ObjectNotFound

    config = with_device(load_config(Path(config_path)), device)
    run_dir = prepare_run(config, Path(out) if out else default_run_dir(config))
    specs = split_shards(shard_count(config), parts)
    logger = get_run_logger()
    children = []
    for spec in specs:
        parameters: dict[str, Any] = {"config_path": config_path, "out": str(run_dir), "shards": spec}
        if device is not None:
            parameters["device"] = device
        try:
            child = run_deployment(deployment, parameters=parameters, timeout=0)
        except ObjectNotFound:
            raise ConfigError(
                f"deployment {deployment!r} was not found on the Prefect server; run `exprlock setup` first"
            ) from None
        logger.info("shards %s: flow run %s (%s)", spec, child.name, child.id)
        children.append({"shards": spec, "id": str(child.id), "name": child.name})
    summary: dict[str, Any] = {"run_id": config.run_id, "run_dir": str(run_dir), "flow_runs": children}
    if wait:
        states = _wait_for(children, poll_seconds)
        for child in children:
            child["state"] = states[child["id"]]
        failed = [c for c in children if c["state"] != "COMPLETED"]
        if failed:
            names = ", ".join(f"{c['name']} (shards {c['shards']}): {c['state']}" for c in failed)
            raise ExprlockError(f"{len(failed)} of {len(children)} shard runs did not complete: {names}; see their logs")
    return summary


def _wait_for(children: list[dict[str, Any]], poll_seconds: float) -> dict[str, str]:
    """Poll until every child run is in a final state; their state types by id."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    states: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        while len(states) < len(children):
            for child in children:
                if child["id"] in states:
                    continue
                state = client.read_flow_run(UUID(child["id"])).state
                if state is not None and state.is_final():
                    states[child["id"]] = state.type.value
            if len(states) < len(children):
                time.sleep(poll_seconds)
    return states
