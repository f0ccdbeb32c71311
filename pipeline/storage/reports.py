"""Report folders that are never overwritten by surprise.

`evaluate` and `label-report` write every file under one file-name stem (`--name`). Before any
work they check the folder: a file of that stem that no earlier report wrote, or that was changed
since, is refused unless the user passes `--force`. What a report writes is recorded with its
digests in the folder's `REPORT_RECORD`, so making the same report again replaces its own files.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.images import write_atomic
from pipeline.models.assets import file_sha256

REPORT_RECORD = ".exprlock-reports.json"


def check_report_folder(out: Path, name: str, *, force: bool) -> None:
    """Refuse `out` if a file named `name*` in it was not written, unchanged, by a report."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder for the report")
    if force or not out.is_dir():
        return
    record = _record(out)
    foreign = sorted(p.name for p in out.glob(f"{name}*") if p.is_file() and record.get(p.name) != file_sha256(p))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ConfigError(
            f"--out {out}: {foreign[0]}{more} would be overwritten but no report wrote it (or it changed since); "
            "choose another --out or --name, or pass --force to replace it (nothing was changed)"
        )


def record_report_files(out: Path, name: str) -> None:
    """Record the digests of the `name*` files now in `out` as written by a report."""
    out = Path(out)
    record = _record(out)
    record.update({p.name: file_sha256(p) for p in out.glob(f"{name}*") if p.is_file()})
    write_atomic((json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), out / REPORT_RECORD)


def _record(out: Path) -> dict[str, str]:
    path = out / REPORT_RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
