"""Reading quantised ONNX graphs into torch: attributes, and the weight-only nodes folded.

The SFace and YuNet assets store int8 weights with per-block scales behind DequantizeLinear and
Reshape nodes; folding those once at load leaves float weights and the nodes that compute.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def node_attributes(node: onnx.NodeProto) -> dict:
    """A node's attributes by name, as Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def dequantize(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> np.ndarray:
    """DequantizeLinear (opset 21, per-block scales and zero points) in float64."""
    data, scale, zero = (values[name] for name in node.input)
    attrs = node_attributes(node)
    axis, block = attrs.get("axis", 1) % data.ndim, attrs.get("block_size", 0)
    if block:
        kept = np.arange(data.shape[axis])  # the last block may be partial
        scale = np.repeat(scale, block, axis=axis).take(kept, axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(kept, axis=axis)
    elif scale.ndim == 1 and scale.size > 1:
        shape = [1] * data.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (data.astype(np.float64) - zero.astype(np.float64)) * scale.astype(np.float64)


def fold_constants(graph: onnx.GraphProto) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto]]:
    """Evaluate the weight-only nodes; return all constant values and the remaining compute nodes."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    compute = []
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "DequantizeLinear" and all(name in values for name in node.input):
            values[node.output[0]] = dequantize(node, values)
        elif node.op_type == "Reshape" and all(name in values for name in node.input):
            values[node.output[0]] = values[node.input[0]].reshape(values[node.input[1]])
        else:
            compute.append(node)
    return values, compute
