"""docker-compose.yml and the Dockerfile: the stack's structure, checked without a Docker engine.

The structural checks always run. Where a Compose implementation is installed
(`docker compose` or `docker-compose`), it also validates the file against the Compose schema;
its `config` command needs no engine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
EXPRLOCK_SERVICES = ("server", "setup", "cpu-worker", "gpu-worker")


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_the_stack_has_a_server_on_postgres_a_setup_job_and_two_workers() -> None:
    assert set(SERVICES) == {"postgres", *EXPRLOCK_SERVICES}
    server = SERVICES["server"]
    assert server["command"].startswith("prefect server start")
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:")
    assert "@postgres:5432/prefect" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["setup"]["command"].startswith("exprlock setup")
    assert SERVICES["setup"]["depends_on"]["server"]["condition"] == "service_healthy"
    for pool in ("cpu", "gpu"):
        worker = SERVICES[f"{pool}-worker"]
        assert re.search(rf"prefect worker start --pool {pool} --type process\b", worker["command"])
        assert "--with-healthcheck" in worker["command"]
        assert worker["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert "--limit 1" in SERVICES["gpu-worker"]["command"]  # one flow run per GPU


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name in ("postgres", "server", "cpu-worker", "gpu-worker"):
        check = SERVICES[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] >= 1, name
    assert "pg_isready" in SERVICES["postgres"]["healthcheck"]["test"][1]
    assert "4200/api/health" in " ".join(SERVICES["server"]["healthcheck"]["test"])
    worker_port = "8080/health"  # prefect's worker webserver default
    assert all(worker_port in " ".join(SERVICES[w]["healthcheck"]["test"]) for w in ("cpu-worker", "gpu-worker"))


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_the_cpu_worker_none() -> None:
    devices = SERVICES["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in SERVICES["cpu-worker"]


def test_exprlock_services_share_the_output_and_model_volumes() -> None:
    for name in EXPRLOCK_SERVICES:
        service = SERVICES[name]
        assert service["image"] == SERVICES["server"]["image"] and service["build"] == "."
        assert set(service["volumes"]) == {"runs:/app/runs", "models:/app/.exprlock"}, name
        assert service["environment"]["PREFECT_API_URL"] == "http://server:4200/api"
        assert service["environment"]["EXPRLOCK_HOME"] == "/app/.exprlock"
    assert set(COMPOSE["volumes"]) == {"postgres", "runs", "models"}


def test_the_image_installs_the_project_as_the_makefile_does() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^RUN make install PYTHON=python3\.11$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM python:3\.11-", dockerfile, re.MULTILINE)
    copied = {part for line in dockerfile.splitlines() if line.startswith("COPY ") for part in line.split()[1:-1]}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", "Makefile", project["project"]["readme"], "prefect.yaml", "configs"} <= copied
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".exprlock", "runs"} <= set(ignored)  # rebuilt inside, never copied from the host
    make = (REPO / "Makefile").read_text()
    assert "exprlock assets fetch" in make and "pip install --quiet -e \".[test]\"" in make


def test_compose_validates_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no Compose implementation installed (docker compose or docker-compose); structure checked above")
    result = subprocess.run([*command, "-f", str(REPO / "docker-compose.yml"), "config", "--services"],
                            capture_output=True, text=True, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == set(SERVICES)
