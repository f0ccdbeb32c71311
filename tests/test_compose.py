"""docker-compose.yml and the Dockerfile: the stack's structure, checked without a Docker engine.

The structural checks always run. Where a Compose implementation is installed
(`docker compose` or `docker-compose`), it also validates the file against the Compose schema;
its `config` command needs no engine.
"""

from __future__ import annotations

import os
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
EXPRLOCK_SERVICES = ("setup", "cpu-worker", "gpu-worker")


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_the_stack_has_a_server_on_postgres_a_setup_job_and_two_workers() -> None:
    assert set(SERVICES) == {"postgres", "server", *EXPRLOCK_SERVICES}
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


def test_exprlock_services_share_one_image_and_the_output_and_model_volumes() -> None:
    assert [name for name, service in SERVICES.items() if "build" in service] == ["setup"]  # built once
    assert SERVICES["setup"]["build"] == "."
    for name in EXPRLOCK_SERVICES:
        service = SERVICES[name]
        assert service["image"] == SERVICES["setup"]["image"], name
        assert set(service["volumes"]) == {"runs:/app/runs", "models:/app/.exprlock"}, name
        assert service["environment"]["PREFECT_API_URL"] == "http://server:4200/api"
        assert service["environment"]["EXPRLOCK_HOME"] == "/app/.exprlock"
        if name != "setup":
            assert service["pull_policy"] == "never", name  # the setup service's image, not a registry's
    assert set(COMPOSE["volumes"]) == {"postgres", "runs", "models"}


def test_the_server_runs_the_official_image_of_the_pinned_prefect() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pinned,) = [d.split("==")[1] for d in dependencies if d.startswith("prefect==")]
    server = SERVICES["server"]
    assert server["image"] == f"prefecthq/prefect:{pinned}-python3.11" and "build" not in server
    assert server["environment"]["PREFECT_UI_API_URL"] == "${PREFECT_UI_API_URL:-http://localhost:4200/api}"


def test_the_password_and_the_models_volume_key_come_from_the_env_file() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    uses = re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text)
    assert len(uses) == 2 and all(use.startswith(":?") for use in uses)  # refused when unset, no default
    assert COMPOSE["volumes"]["models"]["name"].startswith("exprlock-models-${EXPRLOCK_ASSETS_KEY:?")
    assert ".env" in (REPO / ".gitignore").read_text().split() and ".env" in (REPO / ".dockerignore").read_text().split()


def test_the_env_file_keeps_its_password_and_follows_the_asset_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from pipeline.compose_env import ASSETS_KEY, PASSWORD, assets_key, write_compose_env
    from pipeline.models import assets

    env = tmp_path / ".env"
    env.write_text("# mine\nPREFECT_UI_API_URL=http://gpu-box:4200/api\n")
    first = write_compose_env(env)
    assert len(first[PASSWORD]) >= 32 and first[ASSETS_KEY] == assets_key()
    assert env.stat().st_mode & 0o777 == 0o600
    again = write_compose_env(env)
    assert again == first  # the database was initialised with that password: never redrawn
    sface = assets.REGISTRY["sface"]
    monkeypatch.setitem(assets.REGISTRY, "sface", replace(sface, version="9.9", sha256="0" * 64))
    upgraded = write_compose_env(env)
    assert upgraded[PASSWORD] == first[PASSWORD] and upgraded[ASSETS_KEY] != first[ASSETS_KEY]
    lines = env.read_text().splitlines()
    assert lines[:2] == ["# mine", "PREFECT_UI_API_URL=http://gpu-box:4200/api"]
    assert sorted(line.split("=")[0] for line in lines[2:]) == sorted([PASSWORD, ASSETS_KEY])


def test_the_env_writer_needs_only_the_standard_library(tmp_path: Path) -> None:
    """`make compose-env` runs before anything is installed: a bare interpreter, no site packages."""
    result = subprocess.run(["python3", "-S", "-m", "pipeline.compose_env", str(tmp_path / ".env")],
                            cwd=REPO, capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "EXPRLOCK_ASSETS_KEY=" in (tmp_path / ".env").read_text()


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


def test_compose_validates_the_file_and_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no Compose implementation installed (docker compose or docker-compose); structure checked above")
    env_file = tmp_path / ".env"
    env_file.write_text("EXPRLOCK_ASSETS_KEY=0123456789ab\n")

    def config(*args: str) -> subprocess.CompletedProcess:
        base = [*command, "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml"), "config", *args]
        env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "EXPRLOCK_ASSETS_KEY")}
        return subprocess.run(base, capture_output=True, text=True, check=False, cwd=REPO, env=env)

    refused = config("--services")
    assert refused.returncode != 0 and "make compose-env" in refused.stderr
    env_file.write_text("EXPRLOCK_ASSETS_KEY=0123456789ab\nPOSTGRES_PASSWORD=secret\n")
    result = config("--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == set(SERVICES)
    resolved = yaml.safe_load(config().stdout)
    assert resolved["volumes"]["models"]["name"] == "exprlock-models-0123456789ab"
    assert resolved["services"]["server"]["environment"]["PREFECT_UI_API_URL"] == "http://localhost:4200/api"
