"""YuNet in torch, so face detection runs batched on a GPU like the other scorers.

OpenCV's `cv2.FaceDetectorYN` stays the runtime on the CPU, where its DNN module runs this tiny
network about four times as fast as torch does. This module reads the same ONNX file: the
block-quantised weights are dequantised once at load (`pipeline.models.onnx_graph`, as for
SFace), and the graph's runtime nodes (convolutions, ReLU, max pooling, nearest upsampling,
additions, the heads' transposes and reshapes, sigmoids) run as torch operations over a whole
batch. The heads are decoded as `FaceDetectorYN` decodes them. A test holds the raw heads and the
decoded best face to OpenCV's on the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from pipeline.errors import AssetError
from pipeline.models.onnx_graph import fold_constants, node_attributes

STRIDES = (8, 16, 32)
_RUNTIME_OPS = {"Conv", "Relu", "MaxPool", "Resize", "Add", "Transpose", "Reshape", "Sigmoid"}


class YuNetGraph(torch.nn.Module):
    """The YuNet ONNX graph as a torch module: BGR float images `(N, 3, H, W)` (0-255, sides
    multiples of 32) to the twelve heads, `cls_8` ... `kps_32`, each `(N, anchors, C)`."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        model = onnx.load(str(path))
        constants, compute = fold_constants(model.graph)
        self._nodes: list[tuple[str, list[str], str, dict[str, Any]]] = []
        for node in compute:
            if node.op_type not in _RUNTIME_OPS:
                raise AssetError(f"{path}: YuNet graph node {node.op_type} is not supported; use the verified `yunet` asset")
            self._nodes.append((node.op_type, list(node.input), node.output[0], node_attributes(node)))
        self._shapes = {name: value.tolist() for name, value in constants.items() if value.dtype == np.int64 and value.ndim == 1}
        self._slots: dict[str, str] = {}
        used = {name for _, inputs, _, _ in self._nodes for name in inputs}
        for index, (name, value) in enumerate(sorted(constants.items())):
            if name in used and value.dtype.kind == "f":
                self._slots[name] = f"constant_{index}"
                self.register_buffer(self._slots[name], torch.from_numpy(value.astype(np.float32)), persistent=False)
        self.outputs = [output.name for output in model.graph.output]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {"input": images}

        def get(name: str) -> torch.Tensor:
            return values[name] if name in values else getattr(self, self._slots[name])

        for op, inputs, output, attributes in self._nodes:
            first = get(inputs[0])
            if op == "Conv":
                pads = attributes["pads"]
                bias = get(inputs[2]) if len(inputs) > 2 else None
                values[output] = torch.nn.functional.conv2d(first, get(inputs[1]), bias, attributes["strides"], (pads[0], pads[1]),
                                                            attributes["dilations"], attributes["group"])  # fmt: skip
            elif op == "Relu":
                values[output] = torch.relu(first)
            elif op == "Sigmoid":
                values[output] = torch.sigmoid(first)
            elif op == "Add":
                values[output] = first + get(inputs[1])
            elif op == "MaxPool":
                values[output] = torch.nn.functional.max_pool2d(first, attributes["kernel_shape"], attributes["strides"])
            elif op == "Resize":  # the FPN's 2x nearest upsampling
                values[output] = torch.nn.functional.interpolate(first, scale_factor=2, mode="nearest")
            elif op == "Transpose":
                values[output] = first.permute(*attributes["perm"])
            else:  # Reshape of a head to (1, anchors, C): the batch takes the leading 1
                values[output] = first.reshape(len(first), *self._shapes[inputs[1]][1:])
        return {name: values[name] for name in self.outputs}


def best_candidates(heads: dict[str, torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, the highest-scoring candidate as `FaceDetectorYN` decodes them: confidence
    sqrt(cls * obj), box (x, y, w, h) and five landmarks in the input's pixels. Its non-maximum
    suppression never removes the best candidate, so the best of all anchors is its best face."""
    width, height = size
    scores, boxes, landmarks = [], [], []
    for stride in STRIDES:
        rows, columns = torch.meshgrid(torch.arange(height // stride), torch.arange(width // stride), indexing="ij")
        column = columns.reshape(1, -1).to(heads["cls_8"])
        row = rows.reshape(1, -1).to(heads["cls_8"])
        scores.append(torch.sqrt(heads[f"cls_{stride}"][..., 0].clamp(0, 1) * heads[f"obj_{stride}"][..., 0].clamp(0, 1)))
        box = heads[f"bbox_{stride}"]
        w, h = torch.exp(box[..., 2]) * stride, torch.exp(box[..., 3]) * stride
        x, y = (column + box[..., 0]) * stride - w / 2, (row + box[..., 1]) * stride - h / 2
        boxes.append(torch.stack([x, y, w, h], dim=-1))
        points = heads[f"kps_{stride}"].reshape(*box.shape[:2], 5, 2)
        landmarks.append(torch.stack([(points[..., 0] + column[..., None]) * stride, (points[..., 1] + row[..., None]) * stride], dim=-1))
    scores, boxes, landmarks = torch.cat(scores, 1), torch.cat(boxes, 1), torch.cat(landmarks, 1)
    best = scores.argmax(dim=1)
    pick = torch.arange(len(best), device=best.device)
    return scores[pick, best], boxes[pick, best], landmarks[pick, best]
