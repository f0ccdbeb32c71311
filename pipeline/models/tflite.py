"""A small reader of TensorFlow Lite model files, enough to rebuild float graphs in torch.

A `.tflite` file is a FlatBuffer laid out by TensorFlow's `schema.fbs`
(https://github.com/tensorflow/tensorflow/blob/master/tensorflow/compiler/mlir/lite/schema/schema.fbs):
a `Model` holds operator codes, subgraphs (tensors and operators) and raw buffers. This module
reads the first subgraph into plain Python records: every tensor with its shape, dtype and
constant data (if any), every operator with its builtin name, inputs, outputs and the options
of the operators listed in `_OPTION_FIELDS`. It needs only numpy and never runs the model;
`pipeline.models.facemesh` turns the records into torch layers.

Only what float vision models use is decoded: quantisation parameters, sparsity, custom
options and signatures are ignored, and callers refuse operators they do not implement.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import AssetError

# BuiltinOperator codes (schema.fbs) of the operators whose names callers need.
BUILTIN_NAMES: dict[int, str] = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE",
    9: "FULLY_CONNECTED",
    14: "LOGISTIC",
    17: "MAX_POOL_2D",
    18: "MUL",
    19: "RELU",
    21: "RELU6",
    22: "RESHAPE",
    34: "PAD",
    54: "PRELU",
}

# TensorType codes to numpy dtypes; other types are read as shape-only tensors.
_TENSOR_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f2"),
    2: np.dtype("<i4"),
    3: np.dtype("u1"),
    4: np.dtype("<i8"),
    9: np.dtype("i1"),
}

# Builtin options tables, field by field in schema order: (name, struct format, default).
# A format of "[i" is a vector of int32.
_CONV_FIELDS = (
    ("padding", "b", 0),
    ("stride_w", "i", 0),
    ("stride_h", "i", 0),
    ("fused_activation_function", "b", 0),
    ("dilation_w_factor", "i", 1),
    ("dilation_h_factor", "i", 1),
)
_DEPTHWISE_FIELDS = (
    ("padding", "b", 0),
    ("stride_w", "i", 0),
    ("stride_h", "i", 0),
    ("depth_multiplier", "i", 0),
    ("fused_activation_function", "b", 0),
    ("dilation_w_factor", "i", 1),
    ("dilation_h_factor", "i", 1),
)
_POOL_FIELDS = (
    ("padding", "b", 0),
    ("stride_w", "i", 0),
    ("stride_h", "i", 0),
    ("filter_width", "i", 0),
    ("filter_height", "i", 0),
    ("fused_activation_function", "b", 0),
)
_OPTION_FIELDS: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "CONV_2D": _CONV_FIELDS,
    "DEPTHWISE_CONV_2D": _DEPTHWISE_FIELDS,
    "MAX_POOL_2D": _POOL_FIELDS,
    "AVERAGE_POOL_2D": _POOL_FIELDS,
    "ADD": (("fused_activation_function", "b", 0),),
    "RESHAPE": (("new_shape", "[i", None),),
}

# Enum values used in the options above.
PADDING_SAME, PADDING_VALID = 0, 1
ACTIVATIONS: dict[int, str] = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH"}


@dataclass(frozen=True)
class TFLiteTensor:
    """One tensor of the graph; `data` holds the constant values of weights, else None."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype | None
    data: np.ndarray | None


@dataclass(frozen=True)
class TFLiteOperator:
    """One operator: its builtin name, tensor indices (-1 = optional input left out), options."""

    opcode: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TFLiteGraph:
    """The first subgraph of a model, in execution order."""

    tensors: tuple[TFLiteTensor, ...]
    operators: tuple[TFLiteOperator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


class _Table:
    """A FlatBuffer table: a position in the buffer plus its vtable of field offsets."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        size = struct.unpack_from("<H", buf, vtable)[0]
        self._slots = struct.unpack_from(f"<{(size - 4) // 2}H", buf, vtable + 4)

    def _field(self, index: int) -> int:
        """Absolute position of field `index`, or 0 when the field is absent (use the default)."""
        if index >= len(self._slots) or self._slots[index] == 0:
            return 0
        return self.pos + self._slots[index]

    def scalar(self, index: int, fmt: str, default: Any) -> Any:
        at = self._field(index)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def _target(self, index: int) -> int:
        at = self._field(index)
        return at + struct.unpack_from("<I", self.buf, at)[0] if at else 0

    def table(self, index: int) -> _Table | None:
        at = self._target(index)
        return _Table(self.buf, at) if at else None

    def string(self, index: int) -> str:
        at = self._target(index)
        if not at:
            return ""
        length = struct.unpack_from("<I", self.buf, at)[0]
        return self.buf[at + 4 : at + 4 + length].decode("utf-8")

    def vector(self, index: int, fmt: str) -> tuple:
        """A vector of scalars (`fmt` a struct code) as a tuple; empty when absent."""
        at = self._target(index)
        if not at:
            return ()
        length = struct.unpack_from("<I", self.buf, at)[0]
        return struct.unpack_from(f"<{length}{fmt}", self.buf, at + 4)

    def bytes_view(self, index: int) -> memoryview:
        at = self._target(index)
        if not at:
            return memoryview(b"")
        length = struct.unpack_from("<I", self.buf, at)[0]
        return memoryview(self.buf)[at + 4 : at + 4 + length]

    def tables(self, index: int) -> list[_Table]:
        at = self._target(index)
        if not at:
            return []
        length = struct.unpack_from("<I", self.buf, at)[0]
        elements = (at + 4 + 4 * i for i in range(length))
        return [_Table(self.buf, e + struct.unpack_from("<I", self.buf, e)[0]) for e in elements]


def read_tflite(path: Path) -> TFLiteGraph:
    """Parse the first subgraph of the `.tflite` file at `path`."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise AssetError(f"{path}: cannot read the TensorFlow Lite model ({error.strerror})") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise AssetError(f"{path}: not a TensorFlow Lite model (expected the 'TFL3' identifier at byte 4)")
    try:
        return _read_graph(data)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as error:
        raise AssetError(f"{path}: truncated or corrupt TensorFlow Lite file ({error})") from None


def _read_graph(data: bytes) -> TFLiteGraph:
    model = _Table(data, struct.unpack_from("<I", data, 0)[0])
    opcodes = [_builtin_name(code) for code in model.tables(1)]
    subgraphs = model.tables(2)
    if not subgraphs:
        raise ValueError("the model has no subgraph")
    buffers = model.tables(4)
    graph = subgraphs[0]
    tensors = tuple(_read_tensor(i, t, buffers, data) for i, t in enumerate(graph.tables(0)))
    operators = tuple(_read_operator(op, opcodes) for op in graph.tables(3))
    return TFLiteGraph(tensors, operators, tuple(graph.vector(1, "i")), tuple(graph.vector(2, "i")))


def _builtin_name(code: _Table) -> str:
    # Codes above 127 live in `builtin_code`; older files only fill `deprecated_builtin_code`.
    number = max(code.scalar(0, "b", 0), code.scalar(3, "i", 0))
    return BUILTIN_NAMES.get(number, f"BUILTIN_{number}")


def _read_tensor(index: int, tensor: _Table, buffers: list[_Table], data: bytes) -> TFLiteTensor:
    shape = tuple(tensor.vector(0, "i"))
    dtype = _TENSOR_DTYPES.get(tensor.scalar(1, "b", 0))
    buffer = buffers[tensor.scalar(2, "I", 0)]
    raw = buffer.bytes_view(0)
    offset = buffer.scalar(1, "Q", 0)
    if not len(raw) and offset > 1:  # models over 2 GB keep buffers after the FlatBuffer
        raw = memoryview(data)[offset : offset + buffer.scalar(2, "Q", 0)]
    values = None
    if len(raw) and dtype is not None:
        count = int(np.prod(shape, dtype=np.int64))
        values = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()
    return TFLiteTensor(index, tensor.string(3), shape, dtype, values)


def _read_operator(op: _Table, opcodes: list[str]) -> TFLiteOperator:
    name = opcodes[op.scalar(0, "I", 0)]
    options: dict[str, Any] = {}
    table = op.table(4)
    for position, (key, fmt, default) in enumerate(_OPTION_FIELDS.get(name, ())):
        if fmt.startswith("["):
            options[key] = table.vector(position, fmt[1:]) if table else default
        else:
            options[key] = table.scalar(position, fmt, default) if table else default
    return TFLiteOperator(name, tuple(op.vector(1, "i")), tuple(op.vector(2, "i")), options)
