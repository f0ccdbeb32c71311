"""A run's images in the layouts training code already reads, filtered, written atomically.

- `imagefolder`: `OUT/<split>/<label>/<file>.png`, class subfolders per split, as torchvision's
  `ImageFolder` and the FER datasets use;
- `hf`: `OUT/<split>/<file>.png` with `OUT/<split>/metadata.parquet` (the image view's columns,
  `file_name` relative to that folder) and a README whose `configs:` make
  `datasets.load_dataset(OUT)` give images, `ClassLabel` labels and splits;
- `csv`: `OUT/images/<split>/<file>.png` and `OUT/labels.csv` with `path` (relative to OUT),
  `label`, `split`, `group`, `role` and the edit's columns.

Rows come from the image view (`pipeline.storage.image_view`: each source and each edit once),
so an export never repeats a face; images without a label are left out and counted. Images are
hard-linked where the filesystem allows (no copy of the bytes; `copy=True` copies) and each one
is checked against the SHA-256 its manifest row recorded. Everything is written into a
dot-prefixed temporary folder beside `OUT`, synced, and renamed to `OUT` last: an export that is
killed leaves no folder under `OUT`'s name, and the next export to `OUT` removes its leftovers.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from huggingface_hub import DatasetCardData

from data_schemas import Col
from pipeline.errors import ConfigError, ManifestError
from pipeline.images import fsync_directory
from pipeline.models.assets import file_sha256
from pipeline.storage.card import run_licence_terms
from pipeline.storage.huggingface import LICENCE_FILE
from pipeline.storage.image_view import LABEL_NAMES, read_image_table, schema_metadata, select
from pipeline.storage.layout import CARD_FILE, CONFIG_FILE
from pipeline.storage.splits import SPLITS

Layout = Literal["imagefolder", "hf", "csv"]
LAYOUTS: tuple[Layout, ...] = ("imagefolder", "hf", "csv")
CSV_FILE = "labels.csv"
METADATA_FILE = "metadata.parquet"
_CSV_COLUMNS = ("path", "label", "split", "group", "role", Col.ATTRIBUTE, Col.STRENGTH, "method",
                Col.EXPRESSION_LOCKED, "label_confidence", "label_agreement")  # fmt: skip


@dataclass
class Export:
    """What an export wrote: images per split and label, and what was left out."""

    out: Path
    layout: Layout
    run_id: str
    filters: dict[str, Any]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> images
    unlabelled: int = 0
    linked: int = 0

    @property
    def images(self) -> int:
        return sum(sum(labels.values()) for labels in self.counts.values())


def export_run(run_dir: Path, out: Path, *, layout: Layout, filters: dict[str, Any] | None = None, copy: bool = False) -> Export:
    """Write the run's images that pass `filters` (those of `image_view.select`) to `out`."""
    run_dir, out = Path(run_dir), Path(out)
    if layout not in LAYOUTS:
        raise ConfigError(f"--format: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if out.exists():
        raise ConfigError(f"{out}: already exists; export into a new folder (nothing was changed)")
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent}: no such directory; create it or choose another OUT")
    filters = {name: value for name, value in (filters or {}).items() if value is not None}
    images = select(read_image_table(run_dir), **filters)
    labelled = images.filter(images.column("label").is_valid())
    if labelled.num_rows == 0:
        reason = "no image passes the filters" if images.num_rows == 0 else "no image has a label (the run is not scored)"
        raise ManifestError(f"{run_dir}: nothing to export: {reason}")
    run_id = labelled.column(Col.RUN_ID)[0].as_py()
    result = Export(out, layout, run_id, filters, unlabelled=images.num_rows - labelled.num_rows)
    for stale in out.parent.glob(f".{out.name}.export-*"):
        shutil.rmtree(stale, ignore_errors=True)  # what a killed export left
    temp = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:12]}"
    temp.mkdir()
    try:
        rows = labelled.to_pylist()
        for row in rows:
            row["file"] = _place(layout, row)
            result.linked += _bring(run_dir / row["image"], temp / row["file"], row["image_sha256"], copy=copy)
            per_split = result.counts.setdefault(row[Col.SPLIT], {})
            per_split[row["label_name"]] = per_split.get(row["label_name"], 0) + 1
        result.counts = {split: dict(sorted(result.counts[split].items())) for split in SPLITS if split in result.counts}
        _write_index(layout, temp, labelled, rows)
        licence, terms = run_licence_terms(run_dir)
        (temp / LICENCE_FILE).write_text(terms)
        (temp / CARD_FILE).write_text(_card(result, run_dir, licence))
        _sync_tree(temp)
        os.rename(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fsync_directory(out.parent)
    return result


def _place(layout: Layout, row: dict[str, Any]) -> str:
    """Where an image goes inside the export (file names are unique in a run: seed and edit)."""
    name = Path(row["image"]).name
    if layout == "imagefolder":
        return f"{row[Col.SPLIT]}/{row['label_name']}/{name}"
    if layout == "hf":
        return f"{row[Col.SPLIT]}/{name}"
    return f"images/{row[Col.SPLIT]}/{name}"


def _bring(source: Path, target: Path, digest: str | None, *, copy: bool) -> bool:
    """Hard-link (or copy) one image after checking it is the file its row recorded; True if linked."""
    if not source.is_file():
        raise ManifestError(f"{source}: image missing; `exprlock verify RUN --repair` makes it again")
    if digest is not None and file_sha256(source) != digest:
        raise ManifestError(f"{source}: does not match the SHA-256 its manifest row recorded; run `exprlock verify RUN`")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(source, target)
            return True
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    shutil.copyfile(source, target)
    return False


def _write_index(layout: Layout, temp: Path, images: pa.Table, rows: list[dict[str, Any]]) -> None:
    """The label files each layout keeps beside its images (an image folder needs none)."""
    if layout == "hf":
        names = [Path(row["file"]).name for row in rows]
        table = images.drop_columns(["image"]).append_column("file_name", pa.array(names, pa.string()))
        for split in SPLITS:
            part = table.filter(pc.equal(table.column(Col.SPLIT), split))
            if part.num_rows:
                pq.write_table(part.replace_schema_metadata(schema_metadata()), temp / split / METADATA_FILE)
    elif layout == "csv":
        with open(temp / CSV_FILE, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(_CSV_COLUMNS)
            for row in rows:
                values = {**row, "path": row["file"], "label": row["label_name"]}
                writer.writerow(["" if values[name] is None else values[name] for name in _CSV_COLUMNS])


def _card(result: Export, run_dir: Path, licence: dict[str, Any]) -> str:
    """The export's README: where it came from, which filters, what it holds, how to read it."""
    record = json.loads((run_dir / CONFIG_FILE).read_text()) if (run_dir / CONFIG_FILE).is_file() else {}
    data = _card_data(result, licence)
    splits = [split for split in SPLITS if split in result.counts]
    rows = [f"| {split} | {sum(result.counts[split].values())} | "
            + ", ".join(f"{label}: {n}" for label, n in sorted(result.counts[split].items())) + " |" for split in splits]  # fmt: skip
    filters = ", ".join(f"`{k}={v}`" for k, v in result.filters.items()) or "none"
    body = [
        f"# exprlock export of run {result.run_id}",
        "",
        f"Images of the run at `{run_dir.resolve()}` (exprlock {record.get('exprlock', '?')}) in the `{result.layout}` "
        f"layout: each source face and each edit once, labelled with the emotion ensemble's reading of that very "
        f"image (class names in this order: {', '.join(LABEL_NAMES)}). Splits are the run's, made per source "
        "face, so a face and its edits are never in two splits.",
        "",
        f"Filters: {filters}. Images without a label left out: {result.unlabelled}.",
        "",
        "| split | images | per label |",
        "|---|---|---|",
        *rows,
        "",
        _how_to_read(result.layout),
        "",
        f"Terms of use: {LICENCE_FILE} lists every model behind these images (as the run's own does); "
        "the most restrictive of them binds the data.",
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"


def _card_data(result: Export, licence: dict[str, Any]) -> DatasetCardData:
    extra: dict[str, Any] = {}
    if result.layout == "hf":
        present = [split for split in SPLITS if split in result.counts]
        extra["configs"] = [{
            "config_name": "default",
            "data_files": [{"split": split, "path": [f"{split}/{METADATA_FILE}", f"{split}/*.png"]} for split in present],
            "drop_labels": True,
        }]  # fmt: skip
    return DatasetCardData(**licence, pretty_name=f"exprlock {result.run_id} ({result.layout})",
                           task_categories=["image-classification"], tags=["exprlock", "faces", "facial-expression-recognition"],
                           **extra)  # fmt: skip


def _how_to_read(layout: Layout) -> str:
    if layout == "imagefolder":
        return ("Read it with any class-folder reader, e.g. `torchvision.datasets.ImageFolder(\"OUT/train\")`; "
                "class indices then follow the sorted folder names, not the order above.")  # fmt: skip
    if layout == "hf":
        return "Read it with `datasets.load_dataset(\"OUT\")`: images, `label` as a ClassLabel, and the image view's columns."
    return f"Read `{CSV_FILE}`: `path` is relative to this folder, `label` is the class name."


def _sync_tree(root: Path) -> None:
    """Flush every file and folder of the export before its rename makes it visible."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(Path(folder) / name, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(Path(folder))
