"""A torch `Dataset` over a run's manifest: column filters, and splits that never leak a face.

Filters become one pyarrow dataset expression, so Parquet row-group statistics skip what does
not match and only the needed columns are read (never the latents). A filter on a column the
manifest does not have (a run not scored yet) is refused by name rather than ignored.

Splits are made per source seed, not per row (`pipeline.storage.splits`), so no face is in two splits.
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
from pipeline.storage.manifest import open_manifest
from pipeline.storage.splits import DEFAULT_FRACTIONS, DEFAULT_SALT, SPLITS, Split, assign_splits

_IMAGE_COLUMNS = {"source": Col.IMAGE_SOURCE, "edit": Col.IMAGE_EDIT}
_LABEL_CANDIDATES = (Col.ATTRIBUTE, Col.STRENGTH, Col.EMOTION_SOURCE, Col.EMOTION_EDIT, Col.EMOTION_FLIPPED, Col.IDENTITY_COSINE)
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
) -> ds.Expression | None:
    """One pyarrow expression for the requested filters; None when none is requested.

    `emotion_kept`: True keeps rows whose dominant emotion did not flip. `face_detected`: True
    keeps rows with a face found in every image the row has. `identity_range`: inclusive bounds
    on the identity cosine. `attributes`: keep these edited attributes. `min_confidence`: keep
    rows whose source label the emotion ensemble gives at least this probability.
    `emotion_agreement`: True keeps rows whose source label every ensemble model names. A filter
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
    if not parts:
        return None
    expression = parts[0]
    for part in parts[1:]:
        expression = expression & part
    return expression


class ManifestDataset(Dataset):
    """Images and labels of a run, filtered and split by source seed.

    The filters are those of `build_filter`; `min_confidence=0.6, emotion_agreement=True`
    keeps faces whose expression label the ensemble vouches for.

    Each item is `(image, labels)`: the image a float32 tensor (3, H, W) in [0, 1] (or what
    `transform` makes of it), the labels a dict of the `labels` columns plus `seed`, with
    emotion labels as class indices in `EMOTION_LABELS` order. By default the labels are the
    label columns that hold a value in every selected row; `image="edit"` keeps edited rows only.

    Example:
        >>> train = ManifestDataset("runs/demo", split="train", face_detected=True)  # doctest: +SKIP
        >>> loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)  # doctest: +SKIP
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        split: Split | None = None,
        fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
        salt: str = DEFAULT_SALT,
        image: Literal["source", "edit"] = "source",
        labels: Sequence[str] | None = None,
        emotion_kept: bool | None = None,
        face_detected: bool | None = None,
        identity_range: tuple[float, float] | None = None,
        attributes: Sequence[str] | None = None,
        min_confidence: float | None = None,
        emotion_agreement: bool | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        dataset, self.schema_version = open_manifest(self.run_dir)
        names = dataset.schema.names
        if split is not None and split not in SPLITS:
            raise ConfigError(f"split: expected one of {', '.join(SPLITS)} or None, got {split!r}")
        if image not in _IMAGE_COLUMNS:
            raise ConfigError(f"image: expected 'source' or 'edit', got {image!r}")
        self.image_column = _IMAGE_COLUMNS[image]
        if self.image_column not in names:
            raise ManifestError(
                f"image {image!r}: column {self.image_column!r} is not in this manifest (schema {self.schema_version})"
            )
        missing = [name for name in labels or () if name not in names]
        if missing:
            raise ManifestError(f"labels: columns {missing} are not in this manifest; it has {names}")
        expression = build_filter(
            dataset,
            emotion_kept=emotion_kept,
            face_detected=face_detected,
            identity_range=identity_range,
            attributes=attributes,
            min_confidence=min_confidence,
            emotion_agreement=emotion_agreement,
        )
        if image == "edit":
            present = ds.field(self.image_column).is_valid()
            expression = present if expression is None else expression & present
        candidates = labels if labels is not None else [n for n in _LABEL_CANDIDATES if n in names]
        columns = list(dict.fromkeys([self.image_column, Col.SEED, *candidates]))
        table = dataset.to_table(columns=columns, filter=expression)
        if split is not None:
            seeds = table.column(Col.SEED).to_numpy()
            table = table.filter(pa.array(assign_splits(seeds, fractions=fractions, salt=salt) == split))
        if labels is None:
            candidates = [n for n in candidates if table.column(n).null_count == 0]
        self.label_columns = [Col.SEED, *(n for n in candidates if n != Col.SEED)]
        self.table = table
        self.transform = transform
        self._paths = table.column(self.image_column).to_pylist()
        self._labels = [_encode_labels(row) for row in table.select(self.label_columns).to_pylist()]

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
        """The source seeds this dataset holds."""
        return set(self.table.column(Col.SEED).to_pylist())


def hf_label_filters(*, min_confidence: float | None = None, emotion_agreement: bool | None = None) -> list[tuple[str, str, Any]] | None:
    """The same label filters for Hugging Face `datasets`, as its Parquet loader's `filters`.

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
    return filters or None


def _encode_labels(row: dict[str, Any]) -> dict[str, Any]:
    for name in _EMOTION_COLUMNS:
        if row.get(name) is not None:
            row[name] = EMOTION_LABELS.index(row[name])
    return row
