"""PyEmotion's FER2013 CNN, as a held-out judge of the emotion a face shows.

PyEmotion 1.0.0 (Karthick Nagarajan, MIT) classifies a grey 48x48 face into the 7 FER2013
classes with four reflection-padded 3x3 convolutions (32, 64, 128, 256 channels, the last three
with stride 2), each followed by batch normalisation and ReLU, then a 9216-256-7 perceptron.
It shares no weights, architecture or face crop with the pipeline's mini-Xception.

The authors' crop is kept: the box of facenet-pytorch's MTCNN (`pipeline.judges.mtcnn`, the
largest face), cut from the grey image (OpenCV's BT.601 luma) at rounded corners, resized to
48x48 by PIL's bilinear filter (what torchvision's `Resize` does to a PIL image), scaled to
[-1, 1]. (Their code hands MTCNN OpenCV's BGR frame; MTCNN expects RGB and gets RGB here.) Their network ends in a
sigmoid and ranks those outputs; probabilities here are the softmax of the logits before it,
so they sum to 1 and compare with the pipeline's distributions (same argmax).
Weights: asset `pyemotion`, `PyEmotion/model/main_model.pkl` (a torch state dict under
`network`, read with `weights_only=True`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from data_schemas import EMOTION_LABELS
from pipeline.errors import CheckpointError
from pipeline.images import as_uint8_images
from pipeline.models.assets import asset_path

# PyEmotion's class indices are FER2013's, which is the manifest's label order.
LABELS = EMOTION_LABELS
INPUT_SIZE = 48
WIDTHS = (32, 64, 128, 256)


class _ConvUnit(nn.Module):
    """Reflection pad 1, 3x3 convolution, batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(self.pad(x))))


class PyEmotionNet(nn.Module):
    """Grey `(N, 1, 48, 48)` in [-1, 1] to FER2013 class logits `(N, 7)`."""

    def __init__(self) -> None:
        super().__init__()
        channels = (1, *WIDTHS)
        self.units = nn.ModuleList(
            _ConvUnit(cin, cout, stride=1 if i == 0 else 2) for i, (cin, cout) in enumerate(zip(channels, channels[1:]))
        )
        self.hidden = nn.Linear(WIDTHS[-1] * 6 * 6, 256)
        self.logits = nn.Linear(256, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return self.logits(torch.relu(self.hidden(x.flatten(1))))


# PyEmotion's module names (`conv_2.1` is the second unit's convolution) to this module's.
_RENAMES = {"linear.0": "hidden", "linear.2": "logits"} | {
    f"conv_{i + 1}.{part}": f"units.{i}.{name}" for i in range(len(WIDTHS)) for part, name in (("1", "conv"), ("2", "norm"))
}


def _our_name(theirs: str) -> str:
    module, leaf = theirs.rsplit(".", 1)
    return f"{_RENAMES.get(module, module)}.{leaf}"


def load_pyemotion(path: Path | None = None) -> PyEmotionNet:
    """The network with PyEmotion's weights, in eval mode with frozen parameters."""
    path = Path(path or asset_path("pyemotion"))
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)["network"]
        state = {_our_name(name): value for name, value in stored.items()}
    except Exception as exc:  # a damaged or foreign file can fail in many ways
        raise CheckpointError(f"{path}: not PyEmotion's main_model.pkl ({type(exc).__name__}: {exc})") from None
    network = PyEmotionNet()
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: PyEmotion weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return network.requires_grad_(False).eval()


def face_crops(images: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
    """The authors' input for each face: grey box crop, 48x48 bilinear, in [-1, 1].

    `boxes` are `(x0, y0, x1, y1)` in pixels (NaN rows give zero crops, masked by the caller);
    corners are rounded and clipped to the image, as slicing a frame with them does.
    """
    images = as_uint8_images(images)
    crops = np.zeros((len(images), 1, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, (image, box) in enumerate(zip(images, boxes, strict=True)):
        if np.isnan(box).any():
            continue
        height, width = image.shape[:2]
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, x1 = np.clip([x0, x1], 0, width)
        y0, y1 = np.clip([y0, y1], 0, height)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[y0:y1, x0:x1]
        if grey.size == 0:
            continue
        resized = Image.fromarray(grey).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
        crops[i, 0] = (np.asarray(resized, dtype=np.float32) / 255.0 - 0.5) / 0.5
    return torch.from_numpy(crops)


class PyEmotionJudge:
    """Emotion probabilities `(N, 7)` for faces in given boxes; NaN rows where there is no box."""

    def __init__(self, path: Path | None = None) -> None:
        self.network = load_pyemotion(path)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        probabilities = torch.softmax(self.network(face_crops(images, boxes)), dim=1).numpy().astype(np.float64)
        probabilities[np.isnan(boxes).any(axis=1)] = np.nan
        return probabilities
