"""What the command line says: help that matches the commands, versions, one-line refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import SMALLEST_CONFIG, load_config, parse_config
from pipeline.errors import ConfigError

runner = CliRunner()
COMMANDS = ("generate", "discover", "train-editor", "evaluate", "label-report", "convert", "inspect", "verify", "setup", "export")


def test_version_prints_the_package_version() -> None:
    import pipeline

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"exprlock {pipeline.__version__}"


@pytest.mark.parametrize("command", [[], ["assets"], *([name] for name in COMMANDS)], ids=lambda c: " ".join(c) or "top")
def test_help_shows_no_placeholder_on_flags(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output


def test_assets_help_names_only_commands_that_exist() -> None:
    text = runner.invoke(app, ["assets", "--help"]).output
    listed = set(re.findall(r"^  (\w+)  ", text.split("Commands:")[1], flags=re.MULTILINE))
    assert listed == {"fetch", "list"}
    summary = text.split("Options:")[0].lower()
    assert "verify" not in summary or "verify" in listed


def test_a_boolean_flag_takes_no_value() -> None:
    result = runner.invoke(app, ["inspect", "--json", "true", "somewhere"])
    assert result.exit_code == 2 and "Got unexpected extra argument" in result.output


def test_output_off_a_terminal_keeps_long_paths_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / ("a-rather-long-folder-name-" * 4) / "home"
    monkeypatch.setenv("EXPRLOCK_HOME", str(home))
    result = runner.invoke(app, ["verify", str(home / "runs" / "not-here")])
    assert result.exit_code == 2
    assert str(home / "runs" / "not-here") in result.output.replace("\n", "") and len(result.output.splitlines()) == 1


@pytest.mark.parametrize("kind", ["typo", "empty folder", "a file"])
def test_verify_refuses_what_is_not_a_run(tmp_path: Path, kind: str) -> None:
    path = {"typo": tmp_path / "runs" / "dmeo", "empty folder": tmp_path, "a file": tmp_path / "notes.txt"}[kind]
    if kind == "a file":
        path.write_text("x")
    result = runner.invoke(app, ["verify", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and "checked" not in result.output


def test_the_empty_config_hint_is_itself_a_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    hint = re.search(r"`(.+)`", str(refused.value)).group(1)
    assert hint == SMALLEST_CONFIG
    config = parse_config(yaml.safe_load(hint))
    assert config.profile == "demo" and config.sources.count == 8


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"sorces": {"count": 8}}, "sorces: unknown key; did you mean 'sources'?"),
        ({"sources": {"cont": 8}}, "sources.cont: unknown key; did you mean 'count'?"),
        ({"edits": {"preserve": [{"landmark": 10}]}}, "edits.preserve.0.landmark: unknown key; did you mean 'landmarks'?"),
        ({"edits": {"lock": {"candidate": 3}}}, "edits.lock.candidate: unknown key; did you mean 'candidates'?"),
        ({"colour": "red"}, "colour: unknown key"),
    ],
)
def test_unknown_keys_suggest_the_nearest_field(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert str(refused.value) == f"config: {expected}"


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stands in for the report writer: records where it would write, and writes one file there."""
    import pipeline.stages.evaluation as evaluation

    calls: list[Path] = []

    def write_report(run_dirs: list[Path], out: Path, *, name: str, **_: object) -> Path:
        calls.append(Path(out))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{name}.md").write_text(f"report {len(calls)}")
        return Path(out) / f"{name}.md"

    monkeypatch.setattr(evaluation, "write_report", write_report)
    return calls


def test_evaluate_writes_into_the_run_and_never_over_files_it_did_not_write(
    scored: tuple[Path, object], tmp_path: Path, no_report: list[Path]
) -> None:
    run_dir = scored[0]
    first = runner.invoke(app, ["evaluate", str(run_dir)])
    assert first.exit_code == 0, first.output
    assert no_report == [run_dir / "evaluation"]
    again = runner.invoke(app, ["evaluate", str(run_dir)])  # its own files: replaced
    assert again.exit_code == 0 and (run_dir / "evaluation" / "hfld-evaluation.md").read_text() == "report 2"
    committed = tmp_path / "docs"
    committed.mkdir()
    (committed / "hfld-evaluation.md").write_text("a committed report")
    refused = runner.invoke(app, ["evaluate", str(run_dir), "--out", str(committed)])
    assert refused.exit_code == 2 and len(no_report) == 2 and "--force" in refused.output
    assert (committed / "hfld-evaluation.md").read_text() == "a committed report"
    forced = runner.invoke(app, ["evaluate", str(run_dir), "--out", str(committed), "--force"])
    assert forced.exit_code == 0 and (committed / "hfld-evaluation.md").read_text() == "report 3"
    pooled = runner.invoke(app, ["evaluate", str(run_dir), str(run_dir)])
    assert pooled.exit_code == 2 and "--out: required when several runs" in pooled.output


def test_label_report_needs_an_out_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["label-report", "--config", "configs/labels.yaml"])
    assert result.exit_code == 2 and "--out" in result.output


@pytest.mark.parametrize(
    ("command", "paths"),
    [("generate", ["configs/demo.yaml", "runs/demo", "tcp://10.0.0.5:8786"]),
     ("export", ["runs/demo", "exports/demo", "split/label/", "LICENSE.md"]),
     ("evaluate", ["runs/experiment", "RUN/evaluation"])],
)  # fmt: skip
def test_help_off_a_terminal_never_breaks_a_path_or_a_word(command: str, paths: list[str]) -> None:
    narrow = runner.invoke(app, [command, "--help"], env={"COLUMNS": "60"}, terminal_width=60)
    assert narrow.exit_code == 0, narrow.output
    words = narrow.output.split()
    for path in paths:
        assert any(path in word for word in words), path  # whole, on one line
    assert not [word for word in words if word.endswith("-") and not word.startswith("-")]
