"""What face-api.js's networks share, in torch: tfjs weight files, TensorFlow's "same" padding,
depthwise-separable convolutions, tfjs's bilinear resize and face-api's input preparation.

face-api.js (Vincent Mühler; maintained as `@vladmandic/face-api`, MIT) ships each network as a
tfjs weights manifest and one binary shard: tensors in manifest order, float32 or uint8
quantised as `q * scale + min`, kernels in HWIO order (depthwise: H, W, C, multiplier). Every
network takes a face as face-api's `toBatchTensor(112, true)` makes it: zero-padded to a square
around its centre, resized by tfjs's `resizeBilinear` without half-pixel centres, RGB in 0-255.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError, ImageError
from pipeline.models.emotion import crop_resize

INPUT_SIZE = 112
Network = TypeVar("Network", bound=nn.Module)


def pad_same(x: torch.Tensor, kernel: int, stride: int, *, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's "same" padding: the larger half after the input (`value`: -inf for a max pool,
    whose window TensorFlow never lets see the padding)."""
    pads = []
    for size in (x.shape[3], x.shape[2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


class SeparableConv(nn.Module):
    """Depthwise 3x3 (with the stride) then pointwise 1x1 with bias, "same" padding: one pixel
    each side at stride 1, which the convolution pads itself without copying its input; at
    stride 2 TensorFlow pads more after the input than before, so the input is padded first."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        padding = 1 if stride == 1 else 0
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=padding, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x if self.stride == 1 else pad_same(x, 3, self.stride)))


def tfjs_tensors(manifest_path: Path, weights_path: Path, *, what: str) -> dict[str, np.ndarray]:
    """Every tensor of a tfjs weights manifest and its single shard, dequantised to float32."""
    try:
        groups = json.loads(manifest_path.read_text())
        data = weights_path.read_bytes()
        tensors, offset = {}, 0
        for spec in (w for group in groups for w in group["weights"]):
            count = math.prod(spec["shape"])
            quant = spec.get("quantization")
            if quant:
                if quant["dtype"] != "uint8":
                    raise ValueError(f"{spec['name']}: quantisation {quant['dtype']} is not uint8")
                raw = np.frombuffer(data, np.uint8, count, offset).astype(np.float32)
                value, offset = raw * np.float32(quant["scale"]) + np.float32(quant["min"]), offset + count
            else:
                if spec["dtype"] != "float32":
                    raise ValueError(f"{spec['name']}: dtype {spec['dtype']} is not float32")
                value, offset = np.frombuffer(data, "<f4", count, offset).copy(), offset + 4 * count
            tensors[spec["name"]] = value.reshape(spec["shape"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{weights_path}: not a readable tfjs {what} ({exc})") from None
    if offset != len(data):
        raise CheckpointError(f"{weights_path}: {len(data) - offset} bytes left after the manifest's tensors")
    return tensors


class TfjsWeights:
    """A face-api network's tfjs tensors, taken one by one into a torch state dict in torch's
    layout, then loaded into the network; a tensor missing, left over or of the wrong shape is
    refused naming the weights file."""

    def __init__(self, manifest: Path, weights: Path, *, what: str) -> None:
        self.weights, self.what = weights, what
        self.tensors = tfjs_tensors(manifest, weights, what=what)
        self.state: dict[str, torch.Tensor] = {}

    def take(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise CheckpointError(f"{self.weights}: missing tensor {name}")
        return torch.from_numpy(self.tensors.pop(name))

    def conv(self, ours: str, theirs: str) -> None:
        """A convolution: `filters` (HWIO) and `bias`."""
        self.state[f"{ours}.weight"] = self.take(f"{theirs}/filters").permute(3, 2, 0, 1)
        self.state[f"{ours}.bias"] = self.take(f"{theirs}/bias")

    def separable(self, ours: str, theirs: str) -> None:
        """A `SeparableConv`: depthwise (H, W, C, 1), pointwise (HWIO) and the pointwise bias."""
        self.state[f"{ours}.depthwise.weight"] = self.take(f"{theirs}/depthwise_filter").permute(2, 3, 0, 1)
        self.state[f"{ours}.pointwise.weight"] = self.take(f"{theirs}/pointwise_filter").permute(3, 2, 0, 1)
        self.state[f"{ours}.pointwise.bias"] = self.take(f"{theirs}/bias")

    def dense(self, ours: str, theirs: str) -> None:
        """A fully connected layer: `weights` (in, out) and `bias`."""
        self.state[f"{ours}.weight"] = self.take(f"{theirs}/weights").T
        self.state[f"{ours}.bias"] = self.take(f"{theirs}/bias")

    def load_into(self, network: Network) -> Network:
        """`network` with the weights taken, frozen, in eval mode."""
        if self.tensors:
            raise CheckpointError(f"{self.weights}: unexpected tensors {sorted(self.tensors)[:3]}")
        try:
            network.load_state_dict({k: v.contiguous() for k, v in self.state.items()}, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{self.weights}: tensor shapes do not fit face-api's {self.what} ({exc})") from None
        return network.requires_grad_(False).eval()


def resize_like_tfjs(x: torch.Tensor, size: int) -> torch.Tensor:
    """tfjs `resizeBilinear` without corner alignment or half-pixel centres, differentiably."""

    def axis(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position = torch.arange(size, device=x.device, dtype=x.dtype) * (length / size)
        low = position.floor().long().clamp(max=length - 1)
        return low, (low + 1).clamp(max=length - 1), position - low

    y0, y1, wy = axis(x.shape[2])
    x0, x1, wx = axis(x.shape[3])
    rows = x[:, :, y0] * (1 - wy)[:, None] + x[:, :, y1] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def face_api_input(images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
    """RGB `(N, 3, H, W)` in [-1, 1] to a face-api network's input, `(N, 3, 112, 112)` in 0-255.

    `boxes` `(N, 4)` crops each face box `(x0, y0, x1, y1)` in pixels first (`crop_resize`).
    Without boxes, a face that is not square is zero-padded to a square around its centre, as
    face-api does, then resized.
    """
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ImageError(f"images: expected float RGB (N, 3, H, W) in [-1, 1], got {images.dtype} of shape {tuple(images.shape)}")
    pixels = (images + 1) * 127.5
    if boxes is not None:
        if tuple(boxes.shape) != (images.shape[0], 4):
            raise ImageError(f"boxes: expected shape ({images.shape[0]}, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}")
        return crop_resize(pixels, boxes, INPUT_SIZE)
    height, width = pixels.shape[2:]
    if height != width:
        extra = abs(height - width)
        after = math.floor(extra / 2 + 0.5)  # JavaScript's Math.round
        pads = [extra - after, after, 0, 0] if height > width else [0, 0, extra - after, after]
        pixels = F.pad(pixels, pads)
    side = pixels.shape[2]
    return pixels if side == INPUT_SIZE else resize_like_tfjs(pixels, INPUT_SIZE)
