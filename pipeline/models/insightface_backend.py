"""insightface's `buffalo_l` models as the identity scorer and face detector of the `ffhq` profile.

- Identity: ArcFace (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
  Recognition", CVPR 2019), a ResNet-50 trained on WebFace600K (`w600k_r50.onnx`), embeds an
  aligned 112x112 face crop into 512 dimensions; two crops of one person have a high cosine.
- Detection: SCRFD-10GF (Guo et al., "Sample and Computation Redistribution for Efficient Face
  Detection", ICLR 2022; `det_10g.onnx`) finds faces with a score and five landmarks (both eyes,
  nose tip, both mouth corners); `pipeline.models.identity.align_crops` warps each face onto
  ArcFace's 112x112 template with them (it agrees with insightface's `norm_crop` to one grey level).

Both graphs run on onnxruntime through insightface's own classes (`ArcFaceONNX`, `SCRFD`, built by
`insightface.model_zoo.get_model`), so their preprocessing is insightface's, not retyped here: the
ArcFace input mean/std is inferred from the graph as insightface does (0/1 for graphs converted
from MXNet that normalise inside, 127.5/127.5 otherwise). Embedding is one session call per batch;
SCRFD's graph takes one image at a time, so detection runs once per image.

Weights: the `buffalo_l` pack of the insightface model zoo, which exprlock never downloads. Put
its `.onnx` files in `<root>/models/buffalo_l/`, where root defaults to `~/.insightface` as in
insightface itself. Licence: insightface's code is MIT, but its pretrained models, buffalo_l
included, are released for non-commercial research purposes only; datasets scored with them carry
that restriction, and the dataset card says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD

from pipeline.errors import AssetError, ImageError
from pipeline.images import as_uint8_images
from pipeline.models.identity import cosine
from pipeline.threads import session_options

PACK = "buffalo_l"
RECOGNITION_FILE = "w600k_r50.onnx"
DETECTION_FILE = "det_10g.onnx"
LICENCE = "insightface model zoo (buffalo_l): non-commercial research use only"


def pack_dir(root: Path | None = None) -> Path:
    """The folder insightface reads `buffalo_l` from: `<root>/models/buffalo_l`, root `~/.insightface`."""
    root = Path(root).expanduser() if root is not None else Path.home() / ".insightface"
    return root / "models" / PACK


def model_file(root: Path | None, filename: str, role: str) -> Path:
    """A file of the pack, or an error saying where to put it (exprlock never downloads)."""
    path = pack_dir(root) / filename
    if not path.is_file():
        raise AssetError(
            f"insightface {role} model not found at {path}; put the {PACK} pack's files "
            f"({RECOGNITION_FILE}, {DETECTION_FILE}, ...) into {path.parent} or pass the root that "
            f"holds models/{PACK}/ (exprlock never downloads them; {LICENCE})"
        )
    return path


def _load(path: Path, kind: type, role: str, providers: Sequence[str] | None) -> ArcFaceONNX | SCRFD:
    """Build insightface's model for `path` and check it is the kind the file name promises."""
    try:
        model = get_model(str(path), providers=list(providers) if providers is not None else None, sess_options=session_options())
    except Exception as error:  # onnx and onnxruntime raise their own types for unreadable files
        raise AssetError(f"{path}: not a readable ONNX model ({error}); replace it with the {PACK} original") from None
    if not isinstance(model, kind):
        found = type(model).__name__ if model is not None else "nothing"
        raise AssetError(
            f"{path}: insightface reads it as {found}, expected a {role} model ({kind.__name__}); "
            f"replace it with the {PACK} original"
        )
    return model


class ArcFaceIdentity:
    """Unit-length ArcFace embeddings of aligned face crops (`pipeline.models.identity.align_crops`).

    Args:
        root: the folder holding `models/buffalo_l/`; None is `~/.insightface`.
        providers: onnxruntime execution providers in order of preference; None lets insightface
            choose (CUDA when onnxruntime-gpu sees a GPU, else the CPU).

    Raises:
        AssetError: `w600k_r50.onnx` is absent or is not an ArcFace graph.
    """

    def __init__(self, root: Path | None = None, *, providers: Sequence[str] | None = None) -> None:
        self.weights_path = model_file(root, RECOGNITION_FILE, "recognition")
        self.model: ArcFaceONNX = _load(self.weights_path, ArcFaceONNX, "recognition", providers)
        width, height = self.model.input_size
        self.crop_size = (height, width)
        self.dim = int(self.model.output_shape[-1])

    def embed(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings `(N, 512)` on the CPU of uint8 RGB crops `(N, 112, 112, 3)`."""
        crops = as_uint8_images(crops, "crops")
        if crops.shape[1:3] != self.crop_size:
            raise ImageError(
                f"crops: expected aligned crops (N, {self.crop_size[0]}, {self.crop_size[1]}, 3), "
                f"got {crops.shape}; align them with pipeline.models.identity.align_crops"
            )
        if len(crops) == 0:
            return torch.empty((0, self.dim))
        # `ArcFaceONNX.forward` takes RGB NCHW pixels and applies the graph's own mean and std.
        features = torch.from_numpy(self.model.forward(crops.transpose(0, 3, 1, 2).astype(np.float32)))
        return F.normalize(features.float(), dim=1)

    cosine = staticmethod(cosine)


@dataclass(frozen=True)
class DetectedFaces:
    """The faces found in one image, highest score first.

    `boxes` `(K, 4)` are (x0, y0, x1, y1) in image pixels; `scores` `(K,)` are detection
    confidences in [0, 1]; `landmarks` `(K, 5, 2)` are (x, y) of, from the viewer's left: eye, eye,
    nose tip, mouth corner, mouth corner (the order of insightface's `arcface_dst` template).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


class SCRFDDetector:
    """SCRFD face detection with five landmarks.

    Args:
        root: the folder holding `models/buffalo_l/`; None is `~/.insightface`.
        input_size: (width, height) the image is letterboxed into before detection; insightface's
            FaceAnalysis uses (640, 640).
        threshold: the lowest score kept.
        providers: onnxruntime execution providers; None lets insightface choose.

    Raises:
        AssetError: `det_10g.onnx` is absent or is not an SCRFD graph with landmarks.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        input_size: tuple[int, int] = (640, 640),
        threshold: float = 0.5,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.weights_path = model_file(root, DETECTION_FILE, "detection")
        self.model: SCRFD = _load(self.weights_path, SCRFD, "detection", providers)
        if not self.model.use_kps:
            raise AssetError(f"{self.weights_path}: this SCRFD graph has no landmark outputs; use the {PACK} original")
        self.input_size = input_size
        self.threshold = threshold

    def detect(self, images: np.ndarray | torch.Tensor) -> list[DetectedFaces]:
        """The faces in each uint8 RGB image of `(N, H, W, 3)`, one `DetectedFaces` per image."""
        images = as_uint8_images(images)
        found = []
        for image in images:
            bgr = np.ascontiguousarray(image[:, :, ::-1])  # insightface takes OpenCV's BGR order
            detections, landmarks = self.model.detect(bgr, input_size=self.input_size, det_thresh=self.threshold)
            found.append(DetectedFaces(detections[:, :4], detections[:, 4], landmarks.astype(np.float32)))
        return found
