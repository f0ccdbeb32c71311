"""Both held-out judges over a run's images, and the per-edit metrics evaluation reports.

Each image is judged once per content: scores are keyed by the PNG's SHA-256 (the manifest
stores it), and an optional cache file keeps them between evaluations. The cache records the
digests of the judges' weights and is ignored whole when they differ.

Per edit, each judge on the faces its own detector found in both images (MTCNN for PyEmotion,
dlib's HOG for the landmarks):
- `pyemotion_js`: Jensen-Shannon divergence (bits) of PyEmotion's distributions, source vs edit;
- `pyemotion_flipped`: PyEmotion's dominant emotion differs;
- `dlib68_nme`, `dlib68_nme_aligned`: NME of dlib's 51 inner points, raw and after similarity
  alignment on all 68 (`dlib68.landmark_nme`).
These are NaN when a face is missing. `pyemotion_kept` counts every edit: true only when both
faces were found and the dominant emotion is the same, so a face lost to the edit is never
counted as kept. `pyemotion_judged` and `dlib68_judged` say whether the judge found both faces.

`mirror_changes` measures PyEmotion against itself: a face and its left-right mirror show the
same expression, so whatever the judge reports between them is its own noise, the floor under
every edit metric it gives.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.images import read_png, write_atomic
from pipeline.judges.dlib68 import POINTS, DlibJudge, landmark_nme
from pipeline.judges.mtcnn import MTCNN
from pipeline.judges.pyemotion import LABELS, PyEmotionJudge
from pipeline.metrics import js_divergence
from pipeline.models.assets import REGISTRY

JUDGE_ASSETS = ("pyemotion", "mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet", "dlib-shape-predictor-68")
EDIT_COLUMNS = (
    "pyemotion_judged", "pyemotion_js", "pyemotion_flipped", "pyemotion_kept",
    "dlib68_judged", "dlib68_nme", "dlib68_nme_aligned",
)  # fmt: skip
SOURCE_LABEL = "pyemotion_source"
BATCH_SIZE = 128
_CACHE_KEY = b"exprlock-judges"
_CACHE_FORMAT = "2"


def _fingerprint() -> str:
    return ",".join([f"format={_CACHE_FORMAT}", *(f"{name}={REGISTRY[name].sha256}" for name in JUDGE_ASSETS)])


def score_images(
    paths: Sequence[Path],
    digests: Sequence[str],
    *,
    cache: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Judge scores per distinct image, indexed by SHA-256: `emotion_face` (MTCNN found one),
    `pyemotion_probs` (7, EMOTION_LABELS order), `landmark_face` (dlib found one) and
    `landmarks` (68 x 2, input pixels); NaN without a face."""
    known = _read_cache(cache)
    todo = {digest: path for path, digest in zip(paths, digests, strict=True) if digest not in known.index}
    if todo:
        dlib_judge, detector, emotion_judge = DlibJudge(), MTCNN(), PyEmotionJudge()
        items = list(todo.items())
        parts = [known]
        for start in range(0, len(items), BATCH_SIZE):
            chunk = items[start : start + BATCH_SIZE]
            images = np.stack([read_png(path) for _, path in chunk])
            faces = dlib_judge(images)
            boxes = _largest_boxes(detector(images))
            probabilities = emotion_judge(images, boxes)
            parts.append(pd.DataFrame(
                {
                    "emotion_face": ~np.isnan(boxes[:, 0]),
                    "pyemotion_probs": list(probabilities),
                    "landmark_face": faces.found,
                    "landmarks": list(faces.landmarks),
                },
                index=pd.Index([digest for digest, _ in chunk], name="sha256"),
            ))
            if progress:
                progress(len(chunk))
        known = pd.concat([p for p in parts if len(p)])
        if cache is not None:
            _write_cache(cache, known)
    return known.loc[~known.index.duplicated(keep="last")]


def mirror_changes(images: np.ndarray) -> pd.DataFrame:
    """PyEmotion on each uint8 image `(N, H, W, 3)` and on its left-right mirror, one row per
    image: `judged` (MTCNN found a face in both), and `js` and `flipped` as an edit's metrics
    would read them."""
    detector, emotion_judge = MTCNN(), PyEmotionJudge()
    parts = []
    for start in range(0, len(images), BATCH_SIZE):
        batch = images[start : start + BATCH_SIZE]
        p, q = (emotion_judge(view, _largest_boxes(detector(view))) for view in (batch, np.ascontiguousarray(batch[:, :, ::-1])))
        judged = ~np.isnan(p).any(axis=1) & ~np.isnan(q).any(axis=1)
        p, q = np.nan_to_num(p), np.nan_to_num(q)
        parts.append(pd.DataFrame({
            "judged": judged,
            "js": np.where(judged, js_divergence(p, q), np.nan),
            "flipped": np.where(judged, p.argmax(axis=1) != q.argmax(axis=1), np.nan),
        }))
    return pd.concat(parts, ignore_index=True)


def _largest_boxes(found: list[np.ndarray]) -> np.ndarray:
    """`(N, 4)` box of each image's first (largest) MTCNN face; NaN where it found none."""
    return np.array([faces[0, :4] if len(faces) else np.full(4, np.nan) for faces in found])


def edit_metrics(sources: pd.DataFrame, edits: pd.DataFrame) -> pd.DataFrame:
    """Per-edit judge metrics (`EDIT_COLUMNS`) from aligned rows of `score_images` output."""
    emotion = sources["emotion_face"].to_numpy(bool) & edits["emotion_face"].to_numpy(bool)
    landmark = sources["landmark_face"].to_numpy(bool) & edits["landmark_face"].to_numpy(bool)
    p = np.nan_to_num(np.stack(sources["pyemotion_probs"].to_numpy()))  # rows without a face are masked
    q = np.nan_to_num(np.stack(edits["pyemotion_probs"].to_numpy()))
    source_points = np.stack(sources["landmarks"].to_numpy())
    edit_points = np.stack(edits["landmarks"].to_numpy())
    flipped = np.where(emotion, p.argmax(axis=1) != q.argmax(axis=1), np.nan)
    return pd.DataFrame({
        "pyemotion_judged": emotion,
        "pyemotion_js": np.where(emotion, js_divergence(p, q), np.nan),
        "pyemotion_flipped": flipped,
        "pyemotion_kept": emotion & (flipped == 0),
        "dlib68_judged": landmark,
        "dlib68_nme": np.where(landmark, landmark_nme(source_points, edit_points, align=False), np.nan),
        "dlib68_nme_aligned": np.where(landmark, landmark_nme(source_points, edit_points, align=True), np.nan),
    }, index=edits.index)


def source_labels(scores: pd.DataFrame) -> pd.Series:
    """PyEmotion's dominant emotion per image (None without a face)."""
    return scores["pyemotion_probs"].map(lambda p: None if np.isnan(p).any() else LABELS[int(np.argmax(p))])


def _read_cache(cache: Path | None) -> pd.DataFrame:
    empty = pd.DataFrame({"emotion_face": [], "pyemotion_probs": [], "landmark_face": [], "landmarks": []}, index=pd.Index([], name="sha256"))
    if cache is None or not cache.is_file():
        return empty
    table = pq.read_table(cache)
    if (table.schema.metadata or {}).get(_CACHE_KEY, b"").decode() != _fingerprint():
        return empty
    return pd.DataFrame(
        {
            "emotion_face": table["emotion_face"].to_numpy(),
            "pyemotion_probs": [np.asarray(v, dtype=np.float64) for v in table["pyemotion_probs"].to_pylist()],
            "landmark_face": table["landmark_face"].to_numpy(),
            "landmarks": [np.asarray(v, dtype=np.float64).reshape(POINTS, 2) for v in table["landmarks"].to_pylist()],
        },
        index=pd.Index(table["sha256"].to_pylist(), name="sha256"),
    )


def _write_cache(cache: Path, scores: pd.DataFrame) -> None:
    table = pa.table(
        {
            "sha256": pa.array(scores.index.tolist(), pa.string()),
            "emotion_face": pa.array(scores["emotion_face"].to_numpy(bool)),
            "pyemotion_probs": pa.array([p.tolist() for p in scores["pyemotion_probs"]], pa.list_(pa.float64(), len(LABELS))),
            "landmark_face": pa.array(scores["landmark_face"].to_numpy(bool)),
            "landmarks": pa.array([p.reshape(-1).tolist() for p in scores["landmarks"]], pa.list_(pa.float64(), POINTS * 2)),
        },
        metadata={_CACHE_KEY: _fingerprint().encode()},
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_atomic(buffer.getvalue(), cache)
