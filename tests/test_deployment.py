"""Deployments end to end: a real Prefect server, work pools, workers, fan-out and a Dask run.

One `prefect server start` on 127.0.0.1 at a free port serves the module, with its own
PREFECT_HOME; the scheduler service is off, so the nightly deployment's schedule is stored but
never fires during the test. Every process started here (server, workers, the flow runs they
spawn) lives in its own process group and is stopped at the end, also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data_schemas import Col
from pipeline.config import load_config
from pipeline.storage.manifest import read_manifest
from pipeline.storage.layout import prepare_run, shard_count
from pipeline.stages.generate import generate_shard

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Server:
    url: str
    env: dict[str, str]
    home: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, *args: str, log: Path, **env: str) -> subprocess.Popen:
        """Start a process in its own group, logging to `log`; stopped with the server."""
        handle = open(log, "w")  # noqa: SIM115 - closed when the process is reaped
        process = subprocess.Popen(
            args, cwd=REPO, env={**self.env, **env}, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)

    def api(self, method: str, path: str, body: dict | None = None) -> Any:
        """One call of the server's REST API (this process never configures a Prefect client)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def flow_run_state(self, flow_run_id: str) -> str:
        return self.api("GET", f"/flow_runs/{flow_run_id}")["state"]["type"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_PROFILE", None)
    instance = Server(url=url, env=env, home=home)
    command = (str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port))
    process = instance.start(*command, log=home / "server.log")
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield instance
    finally:
        for started in reversed(instance.processes):
            _stop(started)


@pytest.fixture(scope="module")
def deployed(server: Server) -> Server:
    result = server.run(str(BIN / "exprlock"), "setup", "--gpu-slots", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "work pools:   cpu, gpu (created: cpu, gpu)" in result.stdout
    return server


def _config(path: Path, count: int, shard_size: int) -> Path:
    path.write_text(f"profile: demo\nsources: {{count: {count}, shard_size: {shard_size}}}\ndevice: cpu\n")
    return path


def _is_float(dtype: pa.DataType) -> bool:
    listed = pa.types.is_list(dtype) or pa.types.is_fixed_size_list(dtype)
    return pa.types.is_floating(dtype) or (listed and pa.types.is_floating(dtype.value_type))


def _floats(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name).combine_chunks()
    values = pc.list_flatten(column) if not pa.types.is_floating(column.type) else column
    return values.to_numpy(zero_copy_only=False).astype(np.float64)


def test_setup_creates_pools_limit_and_scheduled_deployments(deployed: Server) -> None:
    pools = deployed.api("POST", "/work_pools/filter", {})
    assert {p["name"]: p["type"] for p in pools} == {"cpu": "process", "gpu": "process"}
    assert deployed.api("GET", "/concurrency_limits/tag/exprlock-gpu")["concurrency_limit"] == 1
    nightly = deployed.api("GET", "/deployments/name/generate/nightly")
    assert nightly["work_pool_name"] == "gpu" and nightly["parameters"] == {"config_path": "configs/demo.yaml"}
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in nightly["schedules"]] == [("0 2 * * *", "UTC")]
    assert nightly["pull_steps"] == [{"flows.deployments.enter_project": {}}]
    assert deployed.api("GET", "/deployments/name/generate-fanout/fanout")["work_pool_name"] == "cpu"
    for name in ("discover/experiment", "train-editor/experiment"):
        deployment = deployed.api("GET", f"/deployments/name/{name}")
        assert deployment["work_pool_name"] == "gpu" and deployment["parameters"] == {"config_path": "configs/experiment.yaml"}
    again = deployed.run(str(BIN / "exprlock"), "setup", "--gpu-slots", "2", "--no-deployments")
    assert again.returncode == 0 and "created: none" in again.stdout and "exprlock-gpu = 2" in again.stdout
    assert deployed.api("GET", "/concurrency_limits/tag/exprlock-gpu")["concurrency_limit"] == 2
    deployed.run(str(BIN / "exprlock"), "setup", "--gpu-slots", "1", "--no-deployments")


def test_a_submission_without_a_worker_says_so_and_schedules_nothing(deployed: Server, tmp_path: Path) -> None:
    """Runs before any worker of this module starts."""
    config = _config(tmp_path / "tiny.yaml", count=4, shard_size=2)
    started = time.monotonic()
    result = deployed.run(str(BIN / "exprlock"), "generate", "--config", str(config), "--out", str(tmp_path / "run"),
                          "--submit", "2", timeout=90)  # fmt: skip
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: work pool 'gpu' has no worker online, so its runs would wait for one forever; start one with "
        "`prefect worker start --pool gpu --limit 1` and submit again (nothing was submitted)"
    )
    waiting = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}}}}
    assert [run["name"] for run in deployed.api("POST", "/flow_runs/filter", waiting)] == []


def test_a_deployed_run_completes_on_a_run_once_worker(deployed: Server, tmp_path: Path) -> None:
    config = _config(tmp_path / "tiny.yaml", count=4, shard_size=2)
    out = tmp_path / "run"
    deployment = deployed.api("GET", "/deployments/name/generate/shards")
    parameters = {"config_path": str(config), "out": str(out)}
    flow_run = deployed.api("POST", f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters})
    worker = deployed.start(
        str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--run-once", log=tmp_path / "worker.log"
    )
    worker.wait(timeout=300)
    log = (tmp_path / "worker.log").read_text()
    assert deployed.flow_run_state(flow_run["id"]) == "COMPLETED", log[-3000:]
    table = read_manifest(out)
    run_id = load_config(config).run_id
    assert table.column(Col.SEED).to_pylist() == [0, 1, 2, 3]
    assert set(table.column(Col.RUN_ID).to_pylist()) == {run_id}
    assert (out / "README.md").is_file() and (out / "contact_sheet.png").is_file()
    _assert_the_ui_shows_the_run(deployed, flow_run["id"], run_id, rows=4, shards=2)


def _assert_the_ui_shows_the_run(server: Server, flow_run_id: str, run_id: str, *, rows: int, shards: int) -> None:
    """What Prefect's UI shows of a finished generate run, read through Prefect's own client."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.url}), get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        of_run = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        artifacts = {artifact.key: artifact for artifact in client.read_artifacts(flow_run_filter=of_run)}
        task_names = sorted(task.name for task in client.read_task_runs(flow_run_filter=of_run))
    assert f"run-id:{run_id}" in run.tags and run_id in run.name
    progress, summary, table = (artifacts.get(f"{run_id}-{kind}") for kind in ("progress", "summary", "shards"))
    assert progress is not None and progress.type == "progress" and progress.data == 100.0, sorted(artifacts)
    assert summary is not None and summary.type == "markdown"
    assert run_id in summary.data and f"**{rows} images**" in summary.data, summary.data  # a source-only run: one image per row
    assert table is not None and table.type == "table"
    assert [row["shard"] for row in json.loads(table.data)] == list(range(shards))
    assert task_names == ["contact-sheet", "dataset-card", *(f"shard-{i:05d}" for i in range(shards))]


def test_two_workers_share_a_run_submitted_in_shard_ranges(deployed: Server, tmp_path: Path) -> None:
    for name in ("a", "b"):
        deployed.start(
            str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--limit", "1", "--name", f"worker-{name}",
            log=tmp_path / f"worker-{name}.log",
        )
    config = _config(tmp_path / "four.yaml", count=4, shard_size=1)
    out = tmp_path / "run"
    result = deployed.run(str(BIN / "exprlock"), "generate", "--config", str(config), "--out", str(out), "--submit", "2")
    logs = "".join(p.read_text()[-1500:] for p in tmp_path.glob("worker-*.log"))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    assert "shards 0-1" in result.stdout and "shards 2-3" in result.stdout
    assert result.stdout.count(": COMPLETED") == 2
    assert sorted(read_manifest(out).column(Col.SEED).to_pylist()) == list(range(4))
    assert (out / "README.md").is_file()


def test_interrupting_a_submission_cancels_its_child_runs(deployed: Server, tmp_path: Path) -> None:
    deployed.start(str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--limit", "1", "--name", "worker-c",
                   log=tmp_path / "worker-c.log")  # fmt: skip
    # Enough work per child (32 shards) that a child is still running when its cancellation
    # reaches the worker: a child that finished first would rightly end COMPLETED.
    config = _config(tmp_path / "many.yaml", count=256, shard_size=4)
    out = tmp_path / "run"
    command = [str(BIN / "exprlock"), "generate", "--config", str(config), "--out", str(out), "--submit", "2"]
    process = subprocess.Popen(command, cwd=REPO, env=deployed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deployment = deployed.api("GET", "/deployments/name/generate/shards")["id"]

    def children() -> list[dict]:
        runs = deployed.api("POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment]}}})
        return [run for run in runs if run["parameters"].get("out") == str(out)]

    deadline = time.monotonic() + 120
    while len(children()) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    deadline = time.monotonic() + 90
    while {run["state"]["type"] for run in children()} - {"CANCELLED"} and time.monotonic() < deadline:
        time.sleep(1)
    assert sorted(run["state"]["type"] for run in children()) == ["CANCELLED", "CANCELLED"]


def test_a_dask_run_equals_the_single_process_run(server: Server, tmp_path: Path) -> None:
    config_path = _config(tmp_path / "four-shards.yaml", count=4, shard_size=1)
    config = load_config(config_path)
    single = tmp_path / "single"
    prepare_run(config, single)
    started = time.perf_counter()
    for index in range(shard_count(config)):
        generate_shard(config, single, index)
    single_seconds = time.perf_counter() - started

    started = time.perf_counter()
    command = ("generate", "--config", str(config_path), "--out", str(tmp_path / "dask"), "--dask", "--dask-workers", "2")
    result = server.run(str(BIN / "exprlock"), *command)
    dask_seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"demo, 4 faces in 4 shards: in-process loop {single_seconds:.1f} s, CLI with 2-worker Dask {dask_seconds:.1f} s")
    assert "4 rows written" in result.stdout and "dataset card" in result.stdout

    expected, found = (read_manifest(d).drop_columns([Col.CREATED_AT]).flatten() for d in (single, tmp_path / "dask"))
    assert found.column_names == expected.column_names
    for name in expected.column_names:
        if _is_float(expected.schema.field(name).type) and name not in (Col.LATENT, Col.LATENT_EDIT):
            # Dask workers run torch on one thread; scores may differ in the last float bits.
            np.testing.assert_allclose(_floats(found, name), _floats(expected, name), rtol=1e-4, atol=1e-6, err_msg=name)
        else:  # seeds, latents, image paths and PNG digests: identical
            assert found.column(name).equals(expected.column(name)), name
