"""A torch `Dataset` over a run: one item per image by default, filters, and splits that never leak a face.

The default view is the run's images (`pipeline.storage.image_view`): each source face and each
edit once, labelled, so no face is weighted by the number of its edits. `view="pairs"` gives the
manifest's (source, edit) rows for evaluation work; there, filters become one pyarrow dataset
expression, so Parquet row-group statistics skip what does not match and only the needed
columns are read (never the latents). A filter on a column the run has not scored is refused
by name rather than ignored.

Splits are made per source seed, not per row (`pipeline.storage.splits`), so no face is in two
splits; image paths are resolved against the run directory, so any working directory will do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import torch
from torch.utils.data import Dataset

from data_schemas import EMOTION_LABELS, Col
from pipeline.errors import ConfigError, ManifestError
from pipeline.images import read_png
from pipeline.storage.image_view import read_image_table, select
from pipeline.storage.manifest import open_manifest
from pipeline.storage.splits import DEFAULT_FRACTIONS, DEFAULT_SALT, SPLITS, Split, assign_splits

_IMAGE_COLUMNS = {"source": Col.IMAGE_SOURCE, "edit": Col.IMAGE_EDIT}
_LABEL_CANDIDATES = (Col.ATTRIBUTE, Col.STRENGTH, Col.EMOTION_SOURCE, Col.EMOTION_EDIT, Col.EMOTION_FLIPPED, Col.IDENTITY_COSINE)
_IMAGE_LABEL_CANDIDATES = ("label", "group", "role", "attribute", "strength", "method", "expression_locked")
# Emotion labels are given to training code as class indices in EMOTION_LABELS order.
_EMOTION_COLUMNS = (Col.EMOTION_SOURCE, Col.EMOTION_EDIT)


def build_filter(
    dataset: ds.Dataset,
    *,
    emotion_kept: bool | None = None,
    face_detected: bool | None = None,
    identity_range: tuple[float, float] | None = None,
    attributes: Sequence[str] | None = None,
    min_confidence: float | None = None,
    emotion_agreement: bool | None = None,
    expression_locked: bool | None = None,
) -> ds.Expression | None:
    """One pyarrow expression for the requested filters; None when none is requested.

    `emotion_kept`: True keeps rows whose dominant emotion did not flip. `face_detected`: True
    keeps rows with a face found in every image the row has. `identity_range`: inclusive bounds
    on the identity cosine. `attributes`: keep these edited attributes. `min_confidence`: keep
    rows whose source label the emotion ensemble gives at least this probability.
    `emotion_agreement`: True keeps rows whose source label every ensemble model names.
    `expression_locked`: True keeps edits the per-edit lock held within its budget. A filter
    on a column the manifest lacks, or holds only nulls in (a run scored before schema 1.2), is
    refused: it would silently select nothing.
    """

    def need(name: str, option: str) -> ds.Expression:
        field = ds.field(name)
        if name not in dataset.schema.names or dataset.count_rows(filter=field.is_valid()) == 0:
            raise ManifestError(
                f"filter {option}: column {name!r} is not scored in this manifest; "
                "drop the filter or use a scored run"
            )
        return field

    parts = []
    if emotion_kept is not None:
        parts.append(need(Col.EMOTION_FLIPPED, "emotion_kept") == (not emotion_kept))
    if face_detected is not None:
        source = need(Col.FACE_DETECTED_SOURCE, "face_detected")
        # A row without an edit has no edit face to find: its edit flag is null.
        edit = ds.field(Col.FACE_DETECTED_EDIT) if Col.FACE_DETECTED_EDIT in dataset.schema.names else None
        if face_detected:
            parts.append(source if edit is None else source & (edit | edit.is_null()))
        else:
            parts.append(~source if edit is None else ~source | ~edit)
    if identity_range is not None:
        low, high = identity_range
        if low > high:
            raise ConfigError(f"identity_range: lower bound {low} is above upper bound {high}")
        field = need(Col.IDENTITY_COSINE, "identity_range")
        parts.append((field >= low) & (field <= high))
    if attributes is not None:
        parts.append(need(Col.ATTRIBUTE, "attributes").isin(list(attributes)))
    if min_confidence is not None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ConfigError(f"min_confidence: expected a probability in [0, 1], got {min_confidence}")
        parts.append(need(Col.EMOTION_CONFIDENCE_SOURCE, "min_confidence") >= min_confidence)
    if emotion_agreement is not None:
        parts.append(need(Col.EMOTION_AGREEMENT_SOURCE, "emotion_agreement") == emotion_agreement)
    if expression_locked is not None:
        parts.append(need(Col.EXPRESSION_LOCKED, "expression_locked") == expression_locked)
    if not parts:
        return None
    expression = parts[0]
    for part in parts[1:]:
        expression = expression & part
    return expression


class ManifestDataset(Dataset):
    """Images and labels of a run, filtered and split by source seed.

    `view="images"` (the default) yields each image of the run once, sources and edits
    (`roles` keeps one kind); its filters are those of `pipeline.storage.image_view.select`.
    `view="pairs"` yields manifest rows, one per (source, edit), with the filters of
    `build_filter` and `image="source"` or `"edit"` choosing the picture of each row.
    `min_confidence=0.6, emotion_agreement=True` keeps faces whose expression label the
    ensemble vouches for; `expression_locked=True` keeps edits the lock held.

    Each item is `(image, labels)`: the image a float32 tensor (3, H, W) in [0, 1] (or what
    `transform` makes of it), the labels a dict of the `labels` columns, with emotion labels as
    class indices in `EMOTION_LABELS` order. By default the labels are the label columns that
    hold a value in every selected row; images always carry `group` (the source seed), pairs
    `seed`.

    Example:
        >>> train = ManifestDataset("runs/demo", split="train", face_detected=True)  # doctest: +SKIP
        >>> loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)  # doctest: +SKIP
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        view: Literal["images", "pairs"] = "images",
        split: Split | None = None,
        fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
        salt: str = DEFAULT_SALT,
        roles: Sequence[str] | None = None,
        image: Literal["source", "edit"] | None = None,
        labels: Sequence[str] | None = None,
        emotion_kept: bool | None = None,
        face_detected: bool | None = None,
        identity_range: tuple[float, float] | None = None,
        attributes: Sequence[str] | None = None,
        min_confidence: float | None = None,
        emotion_agreement: bool | None = None,
        expression_locked: bool | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()  # items load the same after a change of working directory
        dataset, self.schema_version = open_manifest(self.run_dir)
        if split is not None and split not in SPLITS:
            raise ConfigError(f"split: expected one of {', '.join(SPLITS)} or None, got {split!r}")
        filters = {"emotion_kept": emotion_kept, "face_detected": face_detected, "attributes": attributes,
                   "min_confidence": min_confidence, "emotion_agreement": emotion_agreement,
                   "expression_locked": expression_locked}  # fmt: skip
        if view == "images":
            if image is not None or identity_range is not None:
                given = "image" if image is not None else "identity_range"
                raise ConfigError(f"{given}: a filter of view='pairs'; in the image view use roles=['edit'] for edits")
            table, group = self._images(dataset, split, fractions, salt, roles, filters)
            candidates = _IMAGE_LABEL_CANDIDATES
            self.image_column = "image"
        elif view == "pairs":
            if roles is not None:
                raise ConfigError("roles: a filter of view='images'; in the pair view use image='source' or 'edit'")
            self.image_column = _IMAGE_COLUMNS.get(image or "source", "")
            if not self.image_column:
                raise ConfigError(f"image: expected 'source' or 'edit', got {image!r}")
            table, group = self._pairs(dataset, split, fractions, salt, image or "source", labels, identity_range, filters)
            candidates = _LABEL_CANDIDATES
        else:
            raise ConfigError(f"view: expected 'images' or 'pairs', got {view!r}")
        names = table.column_names
        missing = [name for name in labels or () if name not in names]
        if missing:
            raise ManifestError(f"labels: columns {missing} are not in this {view} view; it has {names}")
        chosen = list(labels) if labels is not None else [n for n in candidates if n in names and table.column(n).null_count == 0]
        self.view = view
        self.group_column = group
        self.label_columns = [group, *(n for n in chosen if n != group)]
        self.table = table
        self.transform = transform
        self._paths = table.column(self.image_column).to_pylist()
        self._labels = [_encode_labels(row) for row in table.select(self.label_columns).to_pylist()]

    def _images(
        self, dataset: ds.Dataset, split: Split | None, fractions: tuple[float, float, float], salt: str,
        roles: Sequence[str] | None, filters: dict[str, Any],
    ) -> tuple[pa.Table, str]:  # fmt: skip
        table = read_image_table(self.run_dir, dataset)
        if (fractions, salt) != (DEFAULT_FRACTIONS, DEFAULT_SALT):
            splits = assign_splits(table.column("group").to_numpy(), fractions=fractions, salt=salt)
            table = table.set_column(table.column_names.index(Col.SPLIT), Col.SPLIT, pa.array(splits))
        return select(table, split=split, roles=roles, **filters), "group"

    def _pairs(
        self, dataset: ds.Dataset, split: Split | None, fractions: tuple[float, float, float], salt: str, image: str,
        labels: Sequence[str] | None, identity_range: tuple[float, float] | None, filters: dict[str, Any],
    ) -> tuple[pa.Table, str]:  # fmt: skip
        names = dataset.schema.names
        if self.image_column not in names:
            raise ManifestError(
                f"image {image!r}: column {self.image_column!r} is not in this manifest (schema {self.schema_version})"
            )
        expression = build_filter(dataset, identity_range=identity_range, **filters)
        if image == "edit":
            present = ds.field(self.image_column).is_valid()
            expression = present if expression is None else expression & present
        wanted = [n for n in (labels if labels is not None else _LABEL_CANDIDATES) if n in names]
        table = dataset.to_table(columns=list(dict.fromkeys([self.image_column, Col.SEED, *wanted])), filter=expression)
        if split is not None:
            seeds = table.column(Col.SEED).to_numpy()
            table = table.filter(pa.array(assign_splits(seeds, fractions=fractions, salt=salt) == split))
        return table, Col.SEED

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        pixels = read_png(self.run_dir / self._paths[index])
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)  # PIL arrays are read-only
        if self.transform is not None:
            image = self.transform(image)
        return image, dict(self._labels[index])

    @property
    def seeds(self) -> set[int]:
        """The source seeds (groups) this dataset holds."""
        return set(self.table.column(self.group_column).to_pylist())

    @property
    def paths(self) -> list[Path]:
        """Each item's image file, resolved against the run directory."""
        return [self.run_dir / path for path in self._paths]


def hf_label_filters(
    *, min_confidence: float | None = None, emotion_agreement: bool | None = None, expression_locked: bool | None = None
) -> list[tuple[str, str, Any]] | None:
    """The same label and lock filters for Hugging Face `datasets`, as its Parquet loader's
    `filters`, on the manifest's (source, edit) rows.

    Example (offline, nothing is downloaded):
        >>> from datasets import load_dataset  # doctest: +SKIP
        >>> load_dataset("parquet", data_files="runs/demo/manifest/*.parquet", split="train",
        ...              filters=hf_label_filters(min_confidence=0.6, emotion_agreement=True))  # doctest: +SKIP
    """
    filters: list[tuple[str, str, Any]] = []
    if min_confidence is not None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ConfigError(f"min_confidence: expected a probability in [0, 1], got {min_confidence}")
        filters.append((Col.EMOTION_CONFIDENCE_SOURCE, ">=", min_confidence))
    if emotion_agreement is not None:
        filters.append((Col.EMOTION_AGREEMENT_SOURCE, "==", emotion_agreement))
    if expression_locked is not None:
        filters.append((Col.EXPRESSION_LOCKED, "==", expression_locked))
    return filters or None


def _encode_labels(row: dict[str, Any]) -> dict[str, Any]:
    for name in _EMOTION_COLUMNS:
        if row.get(name) is not None:
            row[name] = EMOTION_LABELS.index(row[name])
    return row
