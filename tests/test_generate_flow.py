"""The `generate` flow on Prefect's ephemeral API, and the CLI around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_schemas import Col
from flows.cli import app
from pipeline.config import load_config
from pipeline.storage.manifest import read_manifest

runner = CliRunner()


@pytest.fixture(scope="module")
def prefect_api() -> None:
    """A temporary Prefect API and database for this module, stopped at its end."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("profile: demo\nsources: {count: 8, shard_size: 3}\n")
    return path


@pytest.mark.slow
def test_flow_writes_then_resumes(prefect_api: None, config_file: Path, tmp_path: Path) -> None:
    from flows.generate import generate

    out = tmp_path / "run"
    first = generate(str(config_file), str(out))
    assert (first["shards_written"], first["shards_skipped"], first["rows_written"]) == (3, 0, 8)
    table = read_manifest(out)
    assert table.column(Col.SEED).to_pylist() == list(range(8))
    assert table.column(Col.RUN_ID)[0].as_py() == load_config(config_file).run_id
    assert Path(first["contact_sheet"]).is_file()

    (out / "manifest" / "shard-00002.parquet").unlink()
    second = generate(str(config_file), str(out))
    assert (second["shards_written"], second["shards_skipped"]) == (1, 2)
    assert read_manifest(out).column(Col.SEED).to_pylist() == list(range(8))
    check_artifacts(first["run_id"])


def check_artifacts(run_id: str) -> None:
    """What the UI shows of the two flow runs: names, tags, task names, artifacts (latest versions)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"run-id:{run_id}"])))
        assert sorted(r.name for r in runs) == [f"generate-{run_id}"] * 2
        latest = max(runs, key=lambda r: r.start_time)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [latest.id]}))
        shards = [t for t in tasks if t.name.startswith("shard-")]
        assert sorted(t.name for t in shards) == ["shard-00000", "shard-00001", "shard-00002"]
        assert all(t.tags == [] for t in shards)  # CPU shards take no concurrency slot (flows.generate)
        assert latest.state.is_completed() and latest.state.result()["rows_written"] == 2  # the persisted summary

        def artifact(suffix: str):  # noqa: ANN202
            key = f"{run_id}-{suffix}"
            found = client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            assert len(found) == 1, key
            return found[0]

        assert artifact("progress").data == 100.0
        summary = artifact("summary").data
        assert f"# Run `{run_id}`" in summary and "**8 images**: **8 source faces** and 0 edits, in 3 shards." in summary
        table = json.loads(artifact("shards").data)
        assert [(row["shard"], row["status"], row["rows"]) for row in table] == [(0, "done", 0), (1, "done", 0), (2, "written", 2)]


def test_only_gpu_shards_carry_the_throttling_tag() -> None:
    from flows.generate import GPU_TAG, slot_tags

    assert slot_tags("cpu") == []
    assert slot_tags("cuda") == [GPU_TAG]


def test_cli_dry_run_prints_the_run_id(config_file: Path) -> None:
    result = runner.invoke(app, ["generate", "--config", str(config_file), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert load_config(config_file).run_id in result.output
    models = json.loads(result.output)["models"]
    assert models["generator"] == "dcgan" and models["emotion"] == "native + face-api" and None not in models.values()


def test_the_cli_leaves_prefect_telemetry_off_unless_asked() -> None:
    code = "import flows.cli, os; print(os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'])"
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    quiet = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert quiet.stdout.strip() == "false"
    asked = subprocess.run(
        [sys.executable, "-c", code], env={**environment, "PREFECT_SERVER_ANALYTICS_ENABLED": "true"},
        capture_output=True, text=True, check=True,
    )
    assert asked.stdout.strip() == "true"


def test_cli_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: demo\nsources: {count: many}\n")
    result = runner.invoke(app, ["generate", "--config", str(bad)])
    assert result.exit_code == 2
    assert "sources.count: input should be a valid integer (got 'many')" in result.output
    assert "Traceback" not in result.output


def test_cli_assets_list_shows_state_and_licence() -> None:
    result = runner.invoke(app, ["assets", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert '"name": "dcgan-digiface"' in result.output and '"state": "ok"' in result.output
    assert "DigiFace-1M" in result.output


def test_cli_unknown_asset_is_a_clean_error() -> None:
    result = runner.invoke(app, ["assets", "fetch", "stylegan9"])
    assert result.exit_code == 2
    assert "unknown asset 'stylegan9'" in result.output
