"""A run folder that Hugging Face `datasets` loads as it is, with images, class labels and splits.

`datasets.load_dataset(RUN_DIR)` reads the `configs:` of the run's README and uses its image-folder
loader, the one that turns a `<name>_file_name` column into an `Image` feature. That loader
resolves an image path against the folder of the Parquet file that lists it, refuses paths that
leave that folder, and splits by file rather than by a column. The manifest cannot be that file:
its shards sit in `manifest/`, its image paths are relative to the run directory, and every shard
holds rows of every split. So beside the images the run keeps one Parquet view per split: the
manifest's rows of that split (the seed splits of `pipeline.storage.splits`), without the latents (the
manifest keeps them), image columns renamed to the loader's `_file_name` convention, and emotion
names as class indices whose `ClassLabel` names travel in the Parquet's `huggingface` schema
metadata, the way `datasets` writes its own files. Views are derived data: rewritten with the
card whenever the manifest changes.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from data_schemas import EMOTION_LABELS, Col
from pipeline.images import fsync_directory
from pipeline.storage.layout import IMAGES_DIR
from pipeline.storage.splits import SPLITS, Split, assign_splits

VIEW_FILES: dict[Split, str] = {split: f"hf-{split}.parquet" for split in SPLITS}
# Listed with each split so that `datasets` picks its image-folder loader; rows come from the
# split's view alone.
IMAGE_FILES = f"{IMAGES_DIR}/**/*.png"
LEFT_OUT = (Col.LATENT, Col.LATENT_EDIT)
_IMAGE_COLUMNS = (Col.IMAGE_SOURCE, Col.IMAGE_EDIT)
_CLASS_COLUMNS = (Col.EMOTION_SOURCE, Col.EMOTION_EDIT, Col.EXPRESSION_TARGET)
# Hugging Face licence ids from least to most restrictive: public domain, permissive with notice,
# permissive with notice and patent terms, terms nobody recorded, terms that restrict use.
LICENCE_ORDER = ("cc0-1.0", "mit", "apache-2.0", "unknown", "other")
_SIZE_CATEGORIES = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                    (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"))  # fmt: skip


def write_views(run_dir: Path, manifest: ds.Dataset, *, batch_rows: int = 65_536) -> dict[Split, int]:
    """Write the per-split views of the `manifest` dataset into `run_dir`; rows per split.

    The manifest is streamed in batches of `batch_rows`, so memory stays bounded however large
    the run. Each view is written under a temporary name, synced and renamed into place, so a
    reader sees the old view or the new one. `datasets` refuses a split without rows, so an
    empty split has no view (a stale one goes).
    """
    run_dir = Path(run_dir)
    columns = [name for name in manifest.schema.names if name not in LEFT_OUT]
    temps = {split: run_dir / f".{name}.{uuid.uuid4().hex}.tmp" for split, name in VIEW_FILES.items()}
    writers: dict[Split, pq.ParquetWriter] = {}
    rows = dict.fromkeys(SPLITS, 0)
    try:
        for batch in manifest.to_batches(columns=columns, batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            view, splits = view_table(table), assign_splits(table.column(Col.SEED).to_numpy())
            for split in SPLITS:
                part = view.filter(pa.array(splits == split, type=pa.bool_()))
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
    finally:
        for writer in writers.values():
            writer.close()  # a no-op when closed already
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    fsync_directory(run_dir)
    return rows


def view_table(table: pa.Table) -> pa.Table:
    """The manifest's rows as the image-folder loader reads them (see the module docstring)."""
    table = table.drop_columns([name for name in LEFT_OUT if name in table.column_names])
    labels = pa.array(EMOTION_LABELS)
    features = {}
    for name in _CLASS_COLUMNS:
        if name in table.column_names:
            indices = pc.index_in(table.column(name).cast(pa.string()), value_set=labels).cast(pa.int64())
            table = table.set_column(table.column_names.index(name), name, indices)
            features[name] = {"_type": "ClassLabel", "names": list(EMOTION_LABELS)}
    table = table.rename_columns([f"{n}_file_name" if n in _IMAGE_COLUMNS else n for n in table.column_names])
    return table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})


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


def licence_fields(models: Iterable[dict[str, Any]]) -> dict[str, str]:
    """`license` (and, for `other`, `license_name` and `license_link`) of the most restrictive model.

    `models` are `pipeline.storage.card.model_provenance` records; a model without a registry record (a
    user-supplied checkpoint) counts as `unknown`. With several `other` models, the first one
    names the terms; the card's model table lists them all.
    """
    ranked = [(LICENCE_ORDER.index(m["asset"].licence_id if m["asset"] else "unknown"), m) for m in models]
    if not ranked:
        return {"license": "unknown"}
    rank = max(r for r, _ in ranked)
    licence = LICENCE_ORDER[rank]
    if licence != "other":
        return {"license": licence}
    asset = next(m["asset"] for r, m in ranked if r == rank)
    return {"license": "other", "license_name": f"{asset.name}-terms", "license_link": asset.page}
