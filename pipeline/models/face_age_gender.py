"""face-api.js's age and gender network as a native torch module.

`AgeGenderNet` of face-api.js (Vincent Mühler; maintained as `@vladmandic/face-api`, MIT): a
TinyXception feature extractor on a 112x112 RGB face, a 7x7 average pool and two linear heads,
one giving the age in years, one two logits whose softmax is (male, female).

TinyXception: a 3x3 stride-2 convolution (32 channels); two reduction blocks (64, 128
channels); two main blocks (128); an exit reduction block (256) and a separable convolution to
512 channels. A reduction block takes the ReLU of its input (not in the first block), two
separable convolutions with a ReLU between, a 3x3 stride-2 max pool with TensorFlow's "same"
padding, and adds a 1x1 stride-2 convolution of its raw input; a main block adds three
ReLU-separable convolutions to its input. Input as for face-api's other networks
(`pipeline.models.face_api`), minus the per-channel mean (122.782, 117.001, 104.298), / 255.

Weights: assets `face-api-age-gender` (`model/age_gender_model.bin`) and its tfjs manifest
(`face-api-age-gender-manifest`), from the npm package `@vladmandic/face-api` 1.7.15; checked
against the package running on tfjs in node (`tests/data/face_api_reference.mjs`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.images import to_float_images
from pipeline.models.assets import asset_path
from pipeline.models.face_api import SeparableConv, TfjsWeights, face_api_input, pad_same

MEAN_RGB = (122.782, 117.001, 104.298)
FEATURES = 512
MAIN_BLOCKS = 2


class _ReductionBlock(nn.Module):
    """Two separable convolutions, a stride-2 max pool, plus a 1x1 stride-2 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, activate_input: bool) -> None:
        super().__init__()
        self.activate_input = activate_input
        self.separable0 = SeparableConv(in_channels, out_channels, 1)
        self.separable1 = SeparableConv(out_channels, out_channels, 1)
        self.expansion = nn.Conv2d(in_channels, out_channels, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(x) if self.activate_input else x
        out = self.separable1(torch.relu(self.separable0(out)))
        out = F.max_pool2d(pad_same(out, 3, 2, value=float("-inf")), 3, stride=2)
        return out + self.expansion(x)  # a 1x1 stride-2 "same" convolution needs no padding


class _MainBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.separables = nn.ModuleList(SeparableConv(channels, channels, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for separable in self.separables:
            out = separable(torch.relu(out))
        return out + x


class AgeGenderNet(nn.Module):
    """RGB `(N, 3, 112, 112)` in 0-255 to `(age (N,), gender logits (N, 2))`, gender as (male, female)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, 32, 3, stride=2)
        self.reductions = nn.ModuleList([
            _ReductionBlock(32, 64, activate_input=False), _ReductionBlock(64, 128, activate_input=True),
        ])  # fmt: skip
        self.main = nn.ModuleList(_MainBlock(128) for _ in range(MAIN_BLOCKS))
        self.exit_reduction = _ReductionBlock(128, 256, activate_input=True)
        self.exit_separable = SeparableConv(256, FEATURES, 1)
        self.age = nn.Linear(FEATURES, 1)
        self.gender = nn.Linear(FEATURES, 2)
        self.register_buffer("mean_rgb", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - self.mean_rgb.to(x.dtype)) / 255.0
        x = torch.relu(self.conv_in(pad_same(x, 3, 2)))
        for block in (*self.reductions, *self.main, self.exit_reduction):
            x = block(x)
        features = torch.relu(self.exit_separable(x)).mean(dim=(2, 3))  # the 7x7 pool covers the 7x7 map
        return self.age(features)[:, 0], self.gender(features)


def load_age_gender_net(weights: Path | None = None, manifest: Path | None = None) -> AgeGenderNet:
    """The network with face-api's weights, frozen, in eval mode."""
    manifest = Path(manifest or asset_path("face-api-age-gender-manifest"))
    tfjs = TfjsWeights(manifest, Path(weights or asset_path("face-api-age-gender")), what="age and gender model")

    def reduction(ours: str, theirs: str) -> None:
        tfjs.separable(f"{ours}.separable0", f"{theirs}/separable_conv0")
        tfjs.separable(f"{ours}.separable1", f"{theirs}/separable_conv1")
        tfjs.conv(f"{ours}.expansion", f"{theirs}/expansion_conv")

    tfjs.conv("conv_in", "entry_flow/conv_in")
    for index in range(2):
        reduction(f"reductions.{index}", f"entry_flow/reduction_block_{index}")
    for index in range(MAIN_BLOCKS):
        for conv in range(3):
            tfjs.separable(f"main.{index}.separables.{conv}", f"middle_flow/main_block_{index}/separable_conv{conv}")
    reduction("exit_reduction", "exit_flow/reduction_block")
    tfjs.separable("exit_separable", "exit_flow/separable_conv")
    for head in ("age", "gender"):
        tfjs.dense(head, f"fc/{head}")
    return tfjs.load_into(AgeGenderNet())


class AgeGenderClassifier(nn.Module):
    """Age in years and the probability of female from RGB faces, face-api's way.

    `forward` takes RGB `(N, 3, H, W)` in [-1, 1] and optional face boxes (as the expression
    network does: `pipeline.models.face_api.face_api_input`) and returns `(age, p_female)`;
    `predict` scores uint8 images `(N, H, W, 3)`.
    """

    def __init__(self, weights: Path | None = None, manifest: Path | None = None) -> None:
        super().__init__()
        self.net = load_age_gender_net(weights, manifest)

    @property
    def device(self) -> torch.device:
        return self.net.mean_rgb.device

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        age, gender = self.net(face_api_input(images, boxes))
        return age, gender.softmax(dim=1)[:, 1]

    @torch.no_grad()
    def predict(self, images: torch.Tensor | np.ndarray, boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(age, p_female)`, float32 on the CPU, for uint8 RGB faces `(N, H, W, 3)`."""
        age, female = self(to_float_images(images, self.device), None if boxes is None else boxes.to(self.device))
        return age.float().cpu(), female.float().cpu()
