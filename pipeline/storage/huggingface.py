"""A run folder that Hugging Face `datasets` loads as it is: one row per image, class labels, splits.

`datasets.load_dataset(RUN_DIR)` reads the `configs:` of the run's README and uses its image-folder
loader, the one that turns a `file_name` column into an `Image` feature. That loader resolves an
image path against the folder of the Parquet file that lists it, refuses paths that leave that
folder, and splits by file rather than by a column. So beside the images the run keeps one
Parquet file per split: the run's image view (`pipeline.storage.image_view`: each source and
each edit once, with its label and group) of that split, its `image` column named `file_name`,
and `label` a `ClassLabel` whose names travel in the file's `huggingface` schema metadata, the
way `datasets` writes its own files. The same files are what DuckDB, Polars and pandas read for
image-level work. Views are derived data: rewritten with the card whenever the manifest changes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from data_schemas import Col
from pipeline.images import fsync_directory
from pipeline.storage.image_view import MANIFEST_COLUMNS, image_rows, schema_metadata
from pipeline.storage.layout import IMAGES_DIR
from pipeline.storage.splits import SPLITS, Split

LICENCE_FILE = "LICENSE.md"  # the name Hugging Face's `license_link` convention expects
VIEW_FILES: dict[Split, str] = {split: f"images-{split}.parquet" for split in SPLITS}
# Where the views were kept before they held one row per image; removed when views are rewritten.
_OLD_VIEW_FILES = tuple(f"hf-{split}.parquet" for split in SPLITS)
# Listed with each split so that `datasets` picks its image-folder loader; rows come from the
# split's view alone.
IMAGE_FILES = f"{IMAGES_DIR}/**/*.png"
# Hugging Face licence ids from least to most restrictive: public domain, permissive with notice,
# permissive with notice and patent terms, terms nobody recorded, terms that restrict use.
LICENCE_ORDER = ("cc0-1.0", "mit", "apache-2.0", "unknown", "other")
_SIZE_CATEGORIES = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                    (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"))  # fmt: skip


def write_views(run_dir: Path, manifest: ds.Dataset) -> dict[Split, int]:
    """Write the per-split image views of the `manifest` dataset into `run_dir`; images per split.

    The manifest is read one shard at a time (a shard holds every row of its seeds), so memory
    stays bounded however large the run. Each view is written under a temporary name, synced
    and renamed into place, so a reader sees the old view or the new one. `datasets` refuses a
    split without rows, so an empty split has no view (a stale one goes).
    """
    run_dir = Path(run_dir)
    columns = [name for name in MANIFEST_COLUMNS if name in manifest.schema.names]
    temps = {split: run_dir / f".{name}.{uuid.uuid4().hex}.tmp" for split, name in VIEW_FILES.items()}
    writers: dict[Split, pq.ParquetWriter] = {}
    rows = dict.fromkeys(SPLITS, 0)
    try:
        for fragment in manifest.get_fragments():
            view = view_table(image_rows(fragment.to_table(columns=columns, schema=manifest.schema)))
            for split in SPLITS:
                part = view.filter(pc.equal(view.column(Col.SPLIT), split))
                if part.num_rows:
                    if split not in writers:
                        writers[split] = pq.ParquetWriter(temps[split], part.schema)
                    writers[split].write_table(part)
                    rows[split] += part.num_rows
        for split, writer in writers.items():
            writer.close()
            with open(temps[split], "rb") as handle:
                os.fsync(handle.fileno())
        for split, name in VIEW_FILES.items():
            if rows[split]:
                os.replace(temps[split], run_dir / name)
            else:
                (run_dir / name).unlink(missing_ok=True)
        for name in _OLD_VIEW_FILES:
            (run_dir / name).unlink(missing_ok=True)
    finally:
        for writer in writers.values():
            writer.close()  # a no-op when closed already
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    fsync_directory(run_dir)
    return rows


def view_table(images: pa.Table) -> pa.Table:
    """Image rows as the image-folder loader reads them: `image` named `file_name`."""
    renamed = images.rename_columns(["file_name" if name == "image" else name for name in images.column_names])
    return renamed.replace_schema_metadata(schema_metadata())


def configs(split_rows: dict[Split, int]) -> list[dict[str, Any]]:
    """The README's `configs:` entry: each split's view, and the images its rows point at."""
    present = {split: name for split, name in VIEW_FILES.items() if split_rows.get(split)}
    return [
        {
            "config_name": "default",
            "data_files": [{"split": split, "path": [name, IMAGE_FILES]} for split, name in present.items()],
            "metadata_filenames": list(present.values()),
            "drop_labels": True,
        }
    ]


def size_category(rows: int) -> str:
    """Hugging Face's size bucket for a dataset of `rows` rows."""
    for bound, name in _SIZE_CATEGORIES:
        if rows < bound:
            return name
    return "1B<n<10B"


def licence_fields(models: Iterable[dict[str, Any]], *, also_restricted: Iterable[str] = ()) -> dict[str, Any]:
    """`license` of the most restrictive model and, for `other`, where every restricting term is.

    `models` are `pipeline.storage.card.model_provenance` records; a model without a registry record
    (a user-supplied checkpoint) counts as `unknown`. Under `other`, `license_name` and
    `license_link` point at the run's `LICENCE_FILE`, which gives the terms of every model, and
    `restricted_assets` names each model whose terms restrict use (`also_restricted`: models that
    shaped the data without scoring it, such as a loss's 3DMM), so none hides behind the first.
    """
    models = list(models)
    ranks = [LICENCE_ORDER.index(m["asset"].licence_id if m["asset"] else "unknown") for m in models]
    restricted = sorted({m["name"] for m, rank in zip(models, ranks, strict=True) if LICENCE_ORDER[rank] == "other"} | set(also_restricted))
    if restricted:
        return {"license": "other", "license_name": "exprlock-model-terms", "license_link": LICENCE_FILE,
                "restricted_assets": restricted}  # fmt: skip
    return {"license": LICENCE_ORDER[max(ranks)] if ranks else "unknown"}
