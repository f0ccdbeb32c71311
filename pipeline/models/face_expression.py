"""face-api.js's expression network as a native, differentiable torch module.

The second in-pipeline emotion model, trained on other data than the FER2013 mini-Xception:
`FaceExpressionNet` of face-api.js (Vincent Mühler; maintained as `@vladmandic/face-api`, MIT).
A 112x112 RGB face goes through four dense blocks of depthwise-separable 3x3 convolutions
(32, 64, 128, 256 channels, each block halving the resolution; inside a block every
convolution sees the ReLU of the sum of all earlier outputs), a 7x7 average pool and a 256-7
linear layer; softmax gives seven expression probabilities. Its labels are face-api's
(`FACE_API_LABELS`); `probabilities` reorders them to FER2013's `LABELS` so both models speak
the same order.

Weights: asset `face-api-expression` (`model/face_expression_model.bin`) with its tfjs weights
manifest (asset `face-api-expression-manifest`), from the npm package `@vladmandic/face-api`
1.7.15. The manifest lists each tensor's name, shape and storage: float32, or uint8 quantised
as `q * scale + min`, concatenated in manifest order.

Porting notes, each checked against the package running on tfjs in node
(`tests/data/face_api_reference.mjs`):
- tfjs kernels are HWIO (depthwise: H, W, C, multiplier; fully connected: in, out).
- "same" padding puts the odd padded row and column after the input (TensorFlow's rule).
- Input: RGB in 0-255, minus the per-channel mean (122.782, 117.001, 104.298), divided by 255.
  A face that is not 112x112 is resized as face-api does, by tfjs's `resizeBilinear` without
  half-pixel centres: output pixel i samples input position i * in / out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.images import to_float_images
from pipeline.models.assets import asset_path
from pipeline.models.face_api import SeparableConv, TfjsWeights, face_api_input, pad_same

FACE_API_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
# For each FER2013 label, the index of the same expression among face-api's outputs.
TO_FER_ORDER = (3, 5, 4, 1, 2, 6, 0)
MEAN_RGB = (122.782, 117.001, 104.298)
WIDTHS = (32, 64, 128, 256)
CONVS_PER_BLOCK = 4


class _FirstConv(nn.Module):
    """The first block's plain 3x3 stride-2 convolution on the RGB input."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_same(x, 3, 2))


class _DenseBlock(nn.Module):
    """Four convolutions; each after the first sees the ReLU of the sum of the earlier outputs."""

    def __init__(self, in_channels: int, out_channels: int, *, first: bool) -> None:
        super().__init__()
        entry = _FirstConv(in_channels, out_channels) if first else SeparableConv(in_channels, out_channels, 2)
        rest = [SeparableConv(out_channels, out_channels, 1) for _ in range(CONVS_PER_BLOCK - 1)]
        self.convs = nn.ModuleList([entry, *rest])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.relu(self.convs[0](x))
        for conv in self.convs[1:]:
            total = total + conv(torch.relu(total))
        return torch.relu(total)


class FaceExpressionNet(nn.Module):
    """RGB `(N, 3, 112, 112)` in 0-255 to logits `(N, 7)` in face-api's label order."""

    def __init__(self) -> None:
        super().__init__()
        channels = (3, *WIDTHS)
        self.blocks = nn.ModuleList(
            _DenseBlock(cin, cout, first=i == 0) for i, (cin, cout) in enumerate(zip(channels, channels[1:]))
        )
        self.fc = nn.Linear(WIDTHS[-1], len(FACE_API_LABELS))
        self.register_buffer("mean_rgb", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean_rgb.to(x.dtype)) / 255.0
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


def load_face_expression_net(weights: Path | None = None, manifest: Path | None = None) -> FaceExpressionNet:
    """The network with face-api's weights, frozen, in eval mode."""
    manifest = Path(manifest or asset_path("face-api-expression-manifest"))
    tfjs = TfjsWeights(manifest, Path(weights or asset_path("face-api-expression")), what="face expression model")
    for b in range(len(WIDTHS)):
        for c in range(CONVS_PER_BLOCK):
            ours, theirs = f"blocks.{b}.convs.{c}", f"dense{b}/conv{c}"
            if b == 0 and c == 0:
                tfjs.conv(f"{ours}.conv", theirs)
            else:
                tfjs.separable(ours, theirs)
    tfjs.dense("fc", "fc")
    return tfjs.load_into(FaceExpressionNet())


class FaceExpressionClassifier(nn.Module):
    """Seven expression classes in FER2013's order (`LABELS`) from RGB faces, face-api's way.

    Same interface as `EmotionClassifier`: `forward` takes RGB `(N, 3, H, W)` in [-1, 1] and
    optional face boxes, and returns logits (differentiable, frozen weights); `probabilities`
    scores uint8 images. face-api classifies the crop of its face detector's box, so give boxes
    where the face does not fill the image. Without boxes, a face that is not square is
    zero-padded to a square around its centre, as face-api does, then resized.
    """

    def __init__(self, weights: Path | None = None, manifest: Path | None = None) -> None:
        super().__init__()
        self.net = load_face_expression_net(weights, manifest)
        self.register_buffer("to_fer", torch.tensor(TO_FER_ORDER), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.net.mean_rgb.device

    def preprocess(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """RGB `(N, 3, H, W)` in [-1, 1] to the network input, `(N, 3, 112, 112)` in 0-255
        (`face_api_input`; `boxes` `(N, 4)` crops each face box first)."""
        return face_api_input(images, boxes)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `(N, 7)` in FER2013's label order."""
        return self.net(self.preprocess(images, boxes))[:, self.to_fer]

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class probabilities `(N, 7)` (float32, CPU) for whole uint8 RGB faces `(N, H, W, 3)`."""
        return self(to_float_images(images, self.device)).softmax(dim=1).cpu()

