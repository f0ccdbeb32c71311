"""The `generate` command as a user meets it: inputs refused before anything starts, one-line
errors with exit codes that say whose fault they are, a finished run summarised without a
server, progress counted in faces and edits, and clean exits on SIGTERM and SIGINT."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import load_config
from pipeline.errors import ConfigError, RunError, os_error_line
from pipeline.storage.layout import CONFIG_FILE, shard_count, shard_path
from pipeline.models.assets import get_asset
from pipeline.progress import RunProgress

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every start of Prefect's temporary server (and refuses it)."""
    from prefect.server.api.server import SubprocessASGIServer

    started: list[str] = []

    def start(self: SubprocessASGIServer, timeout: int | None = None) -> None:
        started.append("server")
        raise AssertionError("a Prefect server was started")

    monkeypatch.setattr(SubprocessASGIServer, "start", start)
    return started


def write_config(folder: Path, text: str) -> Path:
    path = folder / "run.yaml"
    path.write_text(text)
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its digest, to prove a refused run changed nothing."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(args: list[str], folder: Path, started: list[str]) -> str:
    """Run `generate`, expect a one-line refusal with status 2, nothing written, no server."""
    before = snapshot(folder)
    result = runner.invoke(app, ["generate", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert snapshot(folder) == before
    assert started == []
    return lines[0].removeprefix("error: ")


QUICK = "profile: demo\nsources: {count: 4, shard_size: 2}\nscoring: {enabled: false}\n"
EDITED = "profile: demo\nsources: {count: 4, shard_size: 2}\nedits: {directory: models, attributes: [gender], strengths: [6.0]}\n"


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"edits: {strengths: [3.0, .nan]}\n", "edits.strengths.1: input should be a finite number (got nan)"),
        (b"edits: {hfld_lambdas: [.inf]}\n", "edits.hfld_lambdas.0: input should be a finite number (got inf)"),
        (b"", "the config is empty; the smallest valid config is `{profile: demo, sources: {count: 8}}`"),
        (b"sources: {count: 8}\nsources: {count: 9}\n", "key 'sources' appears twice (line 2); keep one"),
        (BOMB.encode(), "YAML aliases (*name) are not allowed in a config (line 2)"),
        ("sources: {count: 8}  # caf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 26); save the config as UTF-8"),
        (b"edits: {attributes: [age], strengths: []}\n",
         "edits.strengths: is empty, but edits.attributes are set; give at least one or drop the attributes"),
        (b"edits: {attributes: [age], methods: []}\n",
         "edits.methods: is empty, but edits.attributes are set; give at least one or drop the attributes"),
        (b"sources: {count: 8}\nbase_dir: /elsewhere\n", "base_dir: set from the config file's folder, not in the file; remove it"),
    ],
    ids=["nan", "inf", "empty", "duplicate", "alias-bomb", "latin-1", "no-strengths", "no-methods", "base-dir"],
)
def test_bad_config_files_are_refused_before_anything_starts(
    tmp_path: Path, no_server: list[str], content: bytes, message: str
) -> None:
    config = tmp_path / "run.yaml"
    config.write_bytes(content)
    start = time.perf_counter()
    assert refused(["--config", str(config), "--out", str(tmp_path / "run")], tmp_path, no_server) == f"{config}: {message}"
    assert time.perf_counter() - start < 1.0


def test_an_out_path_that_is_a_file_is_refused(tmp_path: Path, no_server: list[str]) -> None:
    config = write_config(tmp_path, QUICK)
    out = tmp_path / "taken"
    out.write_text("a file")
    message = refused(["--config", str(config), "--out", str(out)], tmp_path, no_server)
    assert message == f"--out {out}: is a file, not a directory; choose another --out"


def test_an_out_path_below_a_file_is_refused(tmp_path: Path, no_server: list[str]) -> None:
    config = write_config(tmp_path, QUICK)
    (tmp_path / "notes").write_text("a file")
    out = tmp_path / "notes" / "run"
    message = refused(["--config", str(config), "--out", str(out)], tmp_path, no_server)
    assert message == f"--out {out}: {tmp_path / 'notes'} is a file, not a directory; choose another --out"


def test_an_out_path_that_cannot_be_written_is_refused(
    tmp_path: Path, no_server: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, QUICK)
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes everywhere: make the permission check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real(path, mode))
    else:
        locked.chmod(0o500)
    out = locked / "run"
    message = refused(["--config", str(config), "--out", str(out)], tmp_path, no_server)
    assert message == f"--out {out}: {locked} is not writable; choose a directory you can write to"


def test_the_directory_of_another_run_is_refused(tmp_path: Path, no_server: list[str]) -> None:
    config = write_config(tmp_path, QUICK)
    out = tmp_path / "run"
    out.mkdir()
    (out / CONFIG_FILE).write_text(json.dumps({"run_id": "demo-000000000000"}))
    run_id = load_config(config).run_id
    message = refused(["--config", str(config), "--out", str(out)], tmp_path, no_server)
    assert message == (
        f"{out}: holds run demo-000000000000, but this config is run {run_id}; "
        "choose another --out directory (nothing was changed)"
    )


def test_a_directory_of_other_files_is_refused(tmp_path: Path, no_server: list[str]) -> None:
    config = write_config(tmp_path, QUICK)
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    message = refused(["--config", str(config), "--out", str(out)], tmp_path, no_server)
    assert message == f"--out {out}: holds files but no exprlock run (config.json is missing); choose a new or empty directory"


def test_a_missing_checkpoint_is_refused(tmp_path: Path, no_server: list[str]) -> None:
    config = write_config(tmp_path, QUICK + "generator: {checkpoint: weights/g.pt}\n")
    message = refused(["--config", str(config), "--out", str(tmp_path / "run")], tmp_path, no_server)
    assert message == f"generator.checkpoint: {tmp_path / 'weights' / 'g.pt'} is not a file; set it to the generator's weights"


def test_an_unrecognised_checkpoint_is_refused(tmp_path: Path, no_server: list[str]) -> None:
    (tmp_path / "g.pkl").write_text("not a checkpoint")
    config = write_config(tmp_path, QUICK + "generator: {kind: stylegan2, checkpoint: g.pkl}\n")
    message = refused(["--config", str(config), "--out", str(tmp_path / "run")], tmp_path, no_server)
    assert message == (
        f"{tmp_path / 'g.pkl'}: unrecognised checkpoint (starts with b'not a ch'); expected a torch.save "
        "archive (rosinality .pt), a pickle (NVIDIA .pkl) or an exprlock .safetensors file"
    )


def test_a_checkpoint_of_another_family_or_without_classes_is_refused(tmp_path: Path, no_server: list[str]) -> None:
    from stylegan2_fixtures import save_rosinality, small_generator

    save_rosinality(small_generator(), tmp_path / "g.pt")
    config = write_config(tmp_path, QUICK + "generator: {kind: stylegan3, checkpoint: g.pt}\n")
    message = refused(["--config", str(config), "--out", str(tmp_path / "run")], tmp_path, no_server)
    assert message == (
        f"generator.checkpoint: {tmp_path / 'g.pt'} holds a StyleGAN2 generator but generator.kind is 'stylegan3'; "
        "set generator.kind: stylegan2"
    )
    config = write_config(tmp_path, QUICK + "generator: {kind: stylegan2, checkpoint: g.pt, class_index: 1}\n")
    message = refused(["--config", str(config), "--out", str(tmp_path / "run")], tmp_path, no_server)
    assert message == "generator.class_index: 1 was given but the generator is unconditional; remove it"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_missing_gpu_is_refused(tmp_path: Path, no_server: list[str]) -> None:
    config = write_config(tmp_path, QUICK)
    message = refused(["--config", str(config), "--out", str(tmp_path / "run"), "--device", "cuda"], tmp_path, no_server)
    assert message == "device: 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'"


def test_edits_without_discovery_are_refused(tmp_path: Path, no_server: list[str]) -> None:
    config = write_config(tmp_path, EDITED)
    message = refused(["--config", str(config), "--out", str(tmp_path / "run")], tmp_path, no_server)
    assert message == f"{tmp_path / 'models' / 'discovery.json'}: no discovery results; run `exprlock discover --config ...` first"


def demo_models(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    shutil.copytree(REPO / "models" / "demo", models)
    return models


def test_edits_without_their_editor_are_refused(tmp_path: Path, no_server: list[str]) -> None:
    models = demo_models(tmp_path)
    editor = models / "editors" / "gender-l1000-e30-x100.safetensors"
    editor.unlink()
    config = write_config(tmp_path, EDITED)
    message = refused(["--config", str(config), "--out", str(tmp_path / "run")], tmp_path, no_server)
    assert message == (
        f"edits.directory {models}: the configured edits need {editor}, which do not exist; "
        f"run `exprlock train-editor --config {config}`"
    )


def test_models_of_another_generator_are_refused(tmp_path: Path, no_server: list[str]) -> None:
    models = demo_models(tmp_path)
    report = json.loads((models / "discovery.json").read_text())
    report["provenance"]["generator_sha256"] = "ab" * 32
    (models / "discovery.json").write_text(json.dumps(report))
    config = write_config(tmp_path, EDITED)
    message = refused(["--config", str(config), "--out", str(tmp_path / "run")], tmp_path, no_server)
    ours = get_asset("dcgan-digiface").sha256
    assert message == (
        f"{models}: its directions and editors were made for the generator with SHA-256 abababababababab..., "
        f"this run's generator is {ours[:16]}...; run `exprlock discover` and `exprlock train-editor` for this "
        "generator, or set edits.directory to its models"
    )


def test_models_of_another_gender_and_age_scorer_are_refused(tmp_path: Path, no_server: list[str]) -> None:
    models = demo_models(tmp_path)
    report = json.loads((models / "discovery.json").read_text())
    for record in report["provenance"]["scorers"]:
        if record["role"] in ("gender", "age"):
            record["name"] = f"adience-{record['role']}-net"
    (models / "discovery.json").write_text(json.dumps(report))
    config = write_config(tmp_path, EDITED)
    message = refused(["--config", str(config), "--out", str(tmp_path / "run")], tmp_path, no_server)
    assert message == (
        f"{models}: its gender direction and editors were made with gender scores of adience-gender-net, this run "
        "scores gender with face-api-age-gender (scoring.age_gender: faceapi); run `exprlock discover` and "
        "`exprlock train-editor` with this config into another edits.directory, or set scoring.age_gender to the "
        "models' scorer"
    )
    adience = write_config(tmp_path, EDITED + "scoring: {age_gender: adience}\n")  # what the models were made with
    accepted = runner.invoke(app, ["generate", "--config", str(adience), "--out", str(tmp_path / "run"), "--dry-run"])
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.output)["models"]["gender_age"] == "adience"


def test_a_missing_asset_is_refused(tmp_path: Path, no_server: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPRLOCK_HOME", str(tmp_path / "empty-home"))
    config = write_config(tmp_path, QUICK)
    message = refused(["--config", str(config), "--out", str(tmp_path / "run")], tmp_path, no_server)
    asset = get_asset("dcgan-digiface")
    expected = tmp_path / "empty-home" / "assets" / "dcgan-digiface" / asset.filename
    assert message == (
        f"asset 'dcgan-digiface' ({asset.requirement}: {asset.member}) is not in the cache; looked in {expected}; "
        "run `exprlock assets fetch dcgan-digiface`, or set EXPRLOCK_HOME to the folder that holds assets/"
    )


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path, "profile: demo\nsources: {count: many}\n")
    quiet = runner.invoke(app, ["generate", "--config", str(config)])
    assert quiet.exit_code == 2 and "Traceback" not in quiet.output
    loud = runner.invoke(app, ["--verbose", "generate", "--config", str(config)])
    assert isinstance(loud.exception, ConfigError)


def test_os_errors_name_the_path_and_the_remedy() -> None:
    cases = {
        errno.ENOSPC: "no space left on the device; free space there or choose another --out",
        errno.EROFS: "read-only file system; choose another --out on a writable one",
        errno.EACCES: "permission denied; make it writable or choose another --out",
    }
    for code, remedy in cases.items():
        assert os_error_line(OSError(code, os.strerror(code), "runs/x/images/a.png")) == f"runs/x/images/a.png: {remedy}"
    assert os_error_line(OSError(errno.EIO, "Input/output error", "runs/x")) == "runs/x: Input/output error"


@pytest.mark.slow
def test_a_full_disk_during_a_run_is_one_line_exit_1_and_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import pkgutil

    import pipeline.images

    # Modules that bind write_atomic by name bind the real one before it is patched, so the fake
    # does not outlive this test in a module first imported during it.
    for module in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        importlib.import_module(module.name)

    attempts: list[Path] = []

    def full(data: bytes, path: Path, **options: bool) -> str:
        attempts.append(path)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pipeline.images, "write_atomic", full)
    config = write_config(tmp_path, "profile: demo\nsources: {count: 2, shard_size: 2}\nscoring: {enabled: false}\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["generate", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 1, result.output
    first = out / "images" / "shard-00000" / "seed-000000000.png"
    assert result.output.strip() == f"error: {first}: no space left on the device; free space there or choose another --out"
    second = first.with_name("seed-000000001.png")
    assert sorted(attempts) == [first, second]  # one attempt each: a full disk is not retried
    assert not shard_path(out, 0).exists()


@pytest.mark.slow
def test_a_finished_run_is_summarised_without_a_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, QUICK)
    out = tmp_path / "run"
    first = runner.invoke(app, ["generate", "--config", str(config), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "4 rows written, 0 of 2 shards already done" in first.output
    progress = RunProgress(load_config(config), out, [0, 1])
    assert progress.count() == progress.total  # every face counted once the run is done

    from prefect.server.api.server import SubprocessASGIServer

    monkeypatch.setattr(SubprocessASGIServer, "start", lambda *a, **k: pytest.fail("a Prefect server was started"))
    before = snapshot(out)
    again = runner.invoke(app, ["generate", "--config", str(config), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert again.output.splitlines() == [
        f"run {load_config(config).run_id}: 0 rows written, 2 of 2 shards already done",
        f"manifest:      {out / 'manifest'}",
        f"contact sheet: {out / 'contact_sheet.png'}",
        f"dataset card:  {out / 'README.md'}",
    ]
    assert snapshot(out) == before


def test_progress_counts_faces_and_edits_from_the_files(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    config = load_config(write_config(tmp_path, EDITED.replace("[gender]", "[gender, age]")))
    progress = RunProgress(config, tmp_path / "run", [0, 1])
    assert (progress.total.faces, progress.total.edits) == (4, 8)
    shard = tmp_path / "run" / "images" / "shard-00001"
    shard.mkdir(parents=True)
    for name in ["seed-000000002.png", "seed-000000002-gender-editor_preserve-s6-l1000-e30.png", ".seed-000000003.png.1a2b.tmp"]:
        (shard / name).write_bytes(b"")
    assert (progress.count().faces, progress.count().edits) == (1, 1)  # a temporary file is not a face
    shard_path(tmp_path / "run", 0).parent.mkdir(parents=True)
    shard_path(tmp_path / "run", 0).write_bytes(b"")  # a committed shard counts in full
    assert (progress.count().faces, progress.count().edits) == (3, 5)
    assert shard_count(config) == 2


def start_long_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """`exprlock generate` of 50 shards in a subprocess, once it holds its first shard claim."""
    config = write_config(tmp_path, "profile: demo\nsources: {count: 200, shard_size: 4}\nscoring: {attributes: false}\n")
    out = tmp_path / "run"
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    command = [str(Path(sys.executable).parent / "exprlock"), "generate", "--config", str(config), "--out", str(out)]
    process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not list((out / "manifest").glob(".shard-*.claim")) and time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.communicate())
        time.sleep(0.2)
    return process, out


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_generate_cleanly(tmp_path: Path, signum: int, status: int) -> None:
    process, out = start_long_run(tmp_path)
    try:
        children = psutil.Process(process.pid).children(recursive=True)
        assert children, "the temporary Prefect server should be running"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == status, stderr
    assert stderr.strip().splitlines()[-1] == f"stopped by {signal.Signals(signum).name}: finished work is kept; run the same command to resume"
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert list((out / "manifest").glob(".shard-*.claim")) == []


@pytest.mark.slow
def test_a_dead_prefect_server_stops_the_run_within_seconds_with_one_line(tmp_path: Path) -> None:
    process, out = start_long_run(tmp_path)
    try:
        (server,) = [c for c in psutil.Process(process.pid).children(recursive=True) if "uvicorn" in " ".join(c.cmdline())]
        server.kill()
        killed = time.monotonic()
        _, stderr = process.communicate(timeout=120)
        took = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the temporary Prefect server at http://127.0.0.1:"), stderr
    assert f"(pid {server.pid}) was killed by signal 9 during the run" in lines[0]
    assert took < 15, took
    assert list((out / "manifest").glob(".shard-*.claim")) == []


def test_the_demo_config_works_from_any_directory_without_exprlock_home(tmp_path: Path) -> None:
    """Its models are found beside the config and the assets in the checkout, wherever the user stands."""
    environment = {k: v for k, v in os.environ.items() if k != "EXPRLOCK_HOME"}
    out = tmp_path / "demo"
    command = [str(Path(sys.executable).parent / "exprlock"), "generate", "--config", str(REPO / "configs" / "demo.yaml"),
               "--out", str(out), "--dry-run"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["config"]["base_dir"] == str(REPO / "configs") and record["config"]["edits"]["directory"] == "../models/demo"
    assert not out.exists()


def test_a_run_that_fails_while_working_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.generate

    def fails(*args: object, **kwargs: object) -> None:
        raise RunError("1 of 2 shard runs did not complete: shards 0-1: FAILED; see their logs")

    monkeypatch.setattr(flows.generate, "generate", fails)
    result = runner.invoke(app, ["generate", "--config", str(write_config(tmp_path, QUICK)), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.strip() == "error: 1 of 2 shard runs did not complete: shards 0-1: FAILED; see their logs"
