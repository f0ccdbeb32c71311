"""One row per image of a run: each source face once, each edit once.

The manifest holds one row per (source, edit) pair, which is what evaluation compares; training
code wants images. Read through the pairs, a source with three edits would be seen three times
and over-weighted by the number of its edits. This view is what every training-facing reader
uses (the per-split Parquet views, the torch loader in its default view, `export`, the card's
and `inspect`'s counts):

- `image` (relative to the run directory; `path` holds it resolved where a reader asks) and its
  SHA-256, `role` (`source` or `edit`) and `group`, the seed of the source face the image shows:
  the unit splits are made on, so a face and its edits never straddle splits;
- the label: `label` (class index, `ClassLabel`-compatible, in `LABEL_NAMES` order),
  `label_name`, `label_source` (`ensemble`: the emotion ensemble read it on this very image),
  `label_confidence` and `label_agreement` (both ensemble models name it), the ensemble's
  `emotion_probs` in `LABEL_NAMES` order, and `face_detected`;
- for edits, what the edit was: `attribute`, `strength`, `method`, `hfld_lambda`, and how it went:
  `attribute_reached`, `expression_locked`, `emotion_flipped` (its label differs from its
  source's), `identity_cosine` against its source. Null for sources.

The class order of `label` and `emotion_probs` travels in the schema metadata (as Hugging Face
`ClassLabel` names and in exprlock's own record), so a file read on its own says what its
numbers mean; pandas' entry keeps the nullable integers and booleans so in `to_pandas()`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from data_schemas import EMOTION_LABELS, Col, pandas_metadata
from pipeline.errors import ConfigError, ManifestError
from pipeline.storage.manifest import open_manifest
from pipeline.storage.splits import SPLITS, Split, assign_splits

LABEL_NAMES = EMOTION_LABELS
ROLES = ("source", "edit")
LABEL_SOURCE = "ensemble"
# The edit-only columns: null on a source's row.
_EDIT_FIELDS = (
    pa.field(Col.ATTRIBUTE, pa.string()),
    pa.field(Col.STRENGTH, pa.float32()),
    pa.field("method", pa.string()),
    pa.field(Col.HFLD_LAMBDA, pa.float32()),
    pa.field(Col.ATTRIBUTE_REACHED, pa.bool_()),
    pa.field(Col.EXPRESSION_LOCKED, pa.bool_()),
    pa.field(Col.EMOTION_FLIPPED, pa.bool_()),
    pa.field(Col.IDENTITY_COSINE, pa.float32()),
)
SCHEMA = pa.schema(
    [
        pa.field(Col.RUN_ID, pa.string()),
        pa.field("image", pa.string()),
        pa.field("image_sha256", pa.string()),
        pa.field("role", pa.string()),
        pa.field("group", pa.int64(), nullable=False),
        pa.field(Col.SPLIT, pa.string()),
        pa.field("label", pa.int64()),
        pa.field("label_name", pa.string()),
        pa.field("label_source", pa.string()),
        pa.field("label_confidence", pa.float32()),
        pa.field("label_agreement", pa.bool_()),
        pa.field("emotion_probs", pa.list_(pa.float32(), len(LABEL_NAMES))),
        pa.field("face_detected", pa.bool_()),
        *_EDIT_FIELDS,
    ]
)
# Per role, where each column of the view comes from in the manifest (None: null).
_SOURCES = {
    "image": Col.IMAGE_SOURCE,
    "image_sha256": Col.IMAGE_SOURCE_SHA256,
    "label_name": Col.EMOTION_SOURCE,
    "label_confidence": Col.EMOTION_CONFIDENCE_SOURCE,
    "label_agreement": Col.EMOTION_AGREEMENT_SOURCE,
    "emotion_probs": Col.EMOTION_PROBS_SOURCE,
    "face_detected": Col.FACE_DETECTED_SOURCE,
}
_EDITS = {
    "image": Col.IMAGE_EDIT,
    "image_sha256": Col.IMAGE_EDIT_SHA256,
    "label_name": Col.EMOTION_EDIT,
    "label_confidence": Col.EMOTION_CONFIDENCE_EDIT,
    "label_agreement": Col.EMOTION_AGREEMENT_EDIT,
    "emotion_probs": Col.EMOTION_PROBS_EDIT,
    "face_detected": Col.FACE_DETECTED_EDIT,
    **{field.name: field.name for field in _EDIT_FIELDS},
    "method": Col.EDITOR,
}
MANIFEST_COLUMNS = tuple(dict.fromkeys([Col.RUN_ID, Col.SEED, *_SOURCES.values(), *_EDITS.values()]))


def schema_metadata() -> dict[bytes, bytes]:
    """What the view's numbers mean: `label` as a Hugging Face `ClassLabel`, the class order of
    `emotion_probs`, and the label vocabulary, in the file itself."""
    features = {"label": {"_type": "ClassLabel", "names": list(LABEL_NAMES)}}
    record = {"view": "images", "label_names": list(LABEL_NAMES), "class_order": {"emotion_probs": list(LABEL_NAMES)}}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode(), b"exprlock": json.dumps(record).encode(),
            **pandas_metadata(SCHEMA)}  # fmt: skip


def image_rows(pairs: pa.Table) -> pa.Table:
    """The images of manifest rows: each source once (its first row), then each edit, per group.

    `pairs` must hold every row of each seed it holds (a shard does); columns the manifest of an
    older schema lacks are null.
    """
    seeds = pairs.column(Col.SEED).to_numpy()
    _, first = np.unique(seeds, return_index=True)
    first.sort()
    has_edit = pairs.column(Col.IMAGE_EDIT).is_valid() if Col.IMAGE_EDIT in pairs.column_names else pa.array([False] * len(pairs))
    edit_rows = np.flatnonzero(has_edit.to_numpy(zero_copy_only=False))
    parts = [_role_table(pairs, first, "source", _SOURCES), _role_table(pairs, edit_rows, "edit", _EDITS)]
    table = pa.concat_tables(parts)
    order = np.lexsort((np.concatenate([first, edit_rows]), np.repeat([0, 1], [len(first), len(edit_rows)]),
                        table.column("group").to_numpy()))  # fmt: skip
    return table.take(pa.array(order, type=pa.int64()))


def _role_table(pairs: pa.Table, rows: np.ndarray, role: str, columns: dict[str, str]) -> pa.Table:
    picked = pairs.take(pa.array(rows, type=pa.int64()))
    count = picked.num_rows
    groups = picked.column(Col.SEED).cast(pa.int64())
    arrays = {
        Col.RUN_ID: picked.column(Col.RUN_ID),
        "role": pa.array([role] * count, pa.string()),
        "group": groups,
        Col.SPLIT: pa.array(assign_splits(groups.to_numpy()), pa.string()),
    }
    for name, column in columns.items():
        arrays[name] = picked.column(column) if column in picked.column_names else pa.nulls(count)
    names = arrays["label_name"].cast(pa.string())
    arrays["label"] = pc.index_in(names, value_set=pa.array(LABEL_NAMES)).cast(pa.int64())
    arrays["label_source"] = pc.if_else(names.is_valid(), LABEL_SOURCE, pa.scalar(None, pa.string()))
    return pa.table([_as(arrays.get(f.name), f.type, count) for f in SCHEMA], schema=SCHEMA)


def _as(values: pa.ChunkedArray | pa.Array | None, dtype: pa.DataType, count: int) -> pa.Array | pa.ChunkedArray:
    return pa.nulls(count, dtype) if values is None else values.cast(dtype)


def read_image_table(run_dir: str | Path, manifest: ds.Dataset | None = None) -> pa.Table:
    """The image view of a whole run, built from its manifest (which stays the record)."""
    dataset = manifest if manifest is not None else open_manifest(Path(run_dir))[0]
    columns = [name for name in MANIFEST_COLUMNS if name in dataset.schema.names]
    tables = [image_rows(fragment.to_table(columns=columns, schema=dataset.schema)) for fragment in dataset.get_fragments()]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    return table.replace_schema_metadata(schema_metadata())


def select(
    table: pa.Table,
    *,
    split: Split | None = None,
    roles: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
    expression_locked: bool | None = None,
    emotion_kept: bool | None = None,
    face_detected: bool | None = None,
    min_confidence: float | None = None,
    emotion_agreement: bool | None = None,
) -> pa.Table:
    """The images that pass every filter given.

    Filters on what an edit did (`attributes`, `expression_locked`, `emotion_kept`) select among
    edits and keep every source: a source shows its own expression and belongs to no attribute.
    `roles` keeps sources, edits or both. The label filters (`min_confidence`,
    `emotion_agreement`) and `face_detected` apply to every image. A filter on a score the run
    does not hold is refused by name: it would silently select nothing.
    """
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split: expected one of {', '.join(SPLITS)} or None, got {split!r}")
    unknown = sorted(set(roles or ()) - set(ROLES))
    if unknown:
        raise ConfigError(f"roles: expected source and/or edit, got {unknown}")
    keep = pa.array(np.ones(table.num_rows, dtype=bool))
    is_edit = pc.equal(table.column("role"), "edit")

    def need(name: str, option: str, rows: pa.Array | None = None) -> pa.ChunkedArray:
        column = table.column(name)
        scored = column.filter(rows) if rows is not None else column
        if scored.null_count == len(scored):  # no value (or nothing to filter): refused, not silently empty
            raise ManifestError(f"filter {option}: {name!r} is not scored in this run; drop the filter or use a scored run")
        return column

    def among_edits(condition: pa.ChunkedArray) -> pa.ChunkedArray:
        return pc.or_(pc.invert(is_edit), pc.fill_null(condition, False))

    if split is not None:
        keep = pc.and_(keep, pc.equal(table.column(Col.SPLIT), split))
    if roles is not None:
        keep = pc.and_(keep, pc.is_in(table.column("role"), value_set=pa.array(list(roles), pa.string())))
    if attributes is not None:
        keep = pc.and_(keep, among_edits(pc.is_in(table.column(Col.ATTRIBUTE), value_set=pa.array(list(attributes), pa.string()))))
    if expression_locked is not None:
        locked = need(Col.EXPRESSION_LOCKED, "expression_locked", is_edit)
        keep = pc.and_(keep, among_edits(pc.equal(locked, expression_locked)))
    if emotion_kept is not None:
        flipped = need(Col.EMOTION_FLIPPED, "emotion_kept", is_edit)
        keep = pc.and_(keep, among_edits(pc.equal(flipped, not emotion_kept)))
    if face_detected is not None:
        keep = pc.and_(keep, pc.fill_null(pc.equal(need("face_detected", "face_detected"), face_detected), False))
    if min_confidence is not None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ConfigError(f"min_confidence: expected a probability in [0, 1], got {min_confidence}")
        keep = pc.and_(keep, pc.fill_null(pc.greater_equal(need("label_confidence", "min_confidence"), min_confidence), False))
    if emotion_agreement is not None:
        agree = need("label_agreement", "emotion_agreement")
        keep = pc.and_(keep, pc.fill_null(pc.equal(agree, emotion_agreement), False))
    return table.filter(keep)
