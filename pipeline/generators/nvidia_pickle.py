"""NVIDIA network pickles read without running them.

NVIDIA (NVlabs/stylegan2-ada-pytorch, NVlabs/stylegan3) pickles each network together with the
source code of its module (`torch_utils.persistence`) and normally rebuilds it by executing that
code. Here a restricted unpickler maps the few globals such a file needs to inert stand-ins: a
persistence record becomes a `Record` holding the class name and the module state
(`_parameters`, `_buffers`, `_modules`, attributes, `_init_kwargs`); tensors are rebuilt through
`torch.load(weights_only=True)`; numpy scalars and arrays are decoded from their bytes (numeric
types only). Every pickle protocol from 2 to 5 is read: each global a protocol names is in an
allow-list with its reason (`_PICKLE_GLOBALS`). The stored source is dropped unread, and any
other global is refused. The generator families read records with `flatten_record`, `child`,
`attr` and `require`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.errors import CheckpointError
from pipeline.generators.checkpoint_files import describe, one_line_reason


@dataclass(frozen=True, slots=True)
class Record:
    """Inert stand-in for an object that NVIDIA's persistence would rebuild by running code."""

    class_name: str
    state: dict[str, Any]


class _EasyDict(dict):  # type: ignore[type-arg]
    """Stand-in for `dnnlib.util.EasyDict`, which pickles as a plain dict subclass."""


class _NumpyDType:
    """Stand-in for `numpy.dtype`: keeps the type code and byte order that decoding needs.

    Pickles call it as `dtype(code, align, copy)`; the two flags do not matter for plain numbers.
    """

    def __init__(self, code: str, align: bool = False, copy: bool = False) -> None:
        self.code = code
        self.byte_order = "="

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.byte_order = state[1]

    def numpy(self) -> np.dtype[Any]:
        """The real dtype, for numeric codes only (object and structured dtypes carry code)."""
        if self.code not in _NUMPY_CODES:
            raise pickle.UnpicklingError(f"unsupported numpy dtype {self.code!r}")
        order = ">" if self.byte_order == ">" else "<"
        return np.dtype(self.code).newbyteorder(order)


_NUMPY_CODES = frozenset({"f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "b1"})


def _numpy_scalar(dtype: _NumpyDType, data: bytes) -> float | int | bool:
    """Decode a pickled numpy scalar (NVIDIA stores gains as `np.float64`) from its bytes."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype.numpy(), count=1)[0].item()


def _numpy_array(dtype: Any, data: Any, shape: Any, fortran: bool) -> np.ndarray:
    """A numeric array from its raw bytes; object arrays (pickled element by element) refused."""
    if not isinstance(dtype, _NumpyDType):
        raise pickle.UnpicklingError("numpy array without a dtype")
    numeric = dtype.numpy()
    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError("numpy array without raw data")
    flat = np.frombuffer(bytes(data), dtype=numeric)
    native = flat.astype(flat.dtype.newbyteorder("="))
    return native.reshape(tuple(shape), order="F" if fortran else "C")


class _NumpyArrayType:
    """Stand-in for the `numpy.ndarray` class named in `_reconstruct(ndarray, ...)`."""


class _NumpyArray:
    """What `numpy...multiarray._reconstruct` returns: filled by `__setstate__` (protocols 2-4).

    The decoded array is `value`; record attributes are unwrapped to it by `_persistent_record`.
    """

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, fortran, data = state[-4:]
        self.value = _numpy_array(dtype, data, shape, bool(fortran))


def _numpy_reconstruct(subtype: Any, shape: Any, typecode: Any) -> _NumpyArray:
    if subtype is not _NumpyArrayType:
        raise pickle.UnpicklingError("numpy array subclass")
    return _NumpyArray()


def _numpy_frombuffer(data: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """Protocol 5 writes contiguous arrays as `_frombuffer(buffer, dtype, shape, order)`."""
    return _numpy_array(dtype, data, shape, order == "F")


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    """Protocol 2 has no bytes opcode and writes `bytes` as `_codecs.encode(text, 'latin1')`."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only to rebuild latin-1 bytes")
    return text.encode("latin-1")


def _persistent_record(meta: Any) -> Record:
    """Replaces `torch_utils.persistence._reconstruct_persistent_obj`; `module_src` is ignored."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("malformed persistence record")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise pickle.UnpicklingError("persistence record without class name or state")
    plain = {k: v.value if isinstance(v, _NumpyArray) else v for k, v in state.items()}
    return Record(class_name, plain)


def _storage_from_bytes(data: bytes) -> Any:
    """Replaces `torch.storage._load_from_bytes` with a weights-only load of the same bytes."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_tensor(
    storage: Any, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> Tensor:
    """Replaces `torch._utils._rebuild_tensor_v2`; gradient flags and hooks are not needed."""
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}")
    dtype = storage.dtype if isinstance(storage, torch.TypedStorage) else torch.uint8
    return torch.empty(0, dtype=dtype).set_(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Tensor, *_: Any) -> Tensor:
    """Replaces `torch._utils._rebuild_parameter(_with_state)`: the data is all that is used."""
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError("parameter without tensor data")
    return data


class _TensorType:
    """Stand-in for the classes named by `torch._tensor._rebuild_from_type_v2`."""


def _rebuild_from_type(
    func: Callable[..., Tensor], new_type: Any, args: tuple[Any, ...], state: Any
) -> Tensor:
    if new_type is not _TensorType or func not in (_rebuild_tensor, _rebuild_parameter):
        raise pickle.UnpicklingError("tensor subclass")
    return func(*args)


@dataclass(frozen=True)
class _Allowed:
    """A global an NVIDIA pickle may name: what it resolves to here, and why it is needed."""

    stand_in: Any
    reason: str


# Every global any pickle protocol from 2 to 5 uses for a network record. Protocols 2 and 3
# (Python 3.7's default, which stylegan2-ada-pytorch recommends) have no opcodes for sets and
# (protocol 2) bytes, so they name builtins for them; numpy 1 and numpy 2 name their modules
# differently. Anything not listed is refused without being resolved.
_PICKLE_GLOBALS: dict[tuple[str, str], _Allowed] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Allowed(
        _persistent_record, "every network module; becomes an inert record, its source unread"),
    ("dnnlib.util", "EasyDict"): _Allowed(_EasyDict, "init kwargs and training options"),
    ("collections", "OrderedDict"): _Allowed(
        collections.OrderedDict, "module parameter, buffer and submodule tables"),
    ("builtins", "set"): _Allowed(set, "`_non_persistent_buffers_set` under protocols 2-3"),
    ("builtins", "frozenset"): _Allowed(frozenset, "frozen sets under protocols 2-3"),
    ("_codecs", "encode"): _Allowed(_latin1_bytes, "bytes under protocol 2 (latin-1 only)"),
    ("torch.storage", "_load_from_bytes"): _Allowed(
        _storage_from_bytes, "tensor storage, read by a weights-only torch.load"),
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(_rebuild_tensor, "tensors"),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter, "parameters"),
    ("torch._utils", "_rebuild_parameter_with_state"): _Allowed(
        _rebuild_parameter, "parameters with extra state"),
    ("torch._tensor", "_rebuild_from_type_v2"): _Allowed(
        _rebuild_from_type, "tensors pickled with their (plain) type"),
    ("torch", "Tensor"): _Allowed(_TensorType, "the plain tensor type"),
    ("torch.nn.parameter", "Parameter"): _Allowed(_TensorType, "the parameter type"),
    ("numpy", "dtype"): _Allowed(_NumpyDType, "the type of numpy scalars and arrays"),
    ("numpy", "ndarray"): _Allowed(_NumpyArrayType, "the class of pickled numpy arrays"),
    ("numpy.core.multiarray", "scalar"): _Allowed(_numpy_scalar, "numpy scalars (numpy 1)"),
    ("numpy._core.multiarray", "scalar"): _Allowed(_numpy_scalar, "numpy scalars (numpy 2)"),
    ("numpy.core.multiarray", "_reconstruct"): _Allowed(
        _numpy_reconstruct, "numpy arrays, protocols 2-4 (numpy 1)"),
    ("numpy._core.multiarray", "_reconstruct"): _Allowed(
        _numpy_reconstruct, "numpy arrays, protocols 2-4 (numpy 2)"),
    ("numpy.core.numeric", "_frombuffer"): _Allowed(
        _numpy_frombuffer, "numpy arrays, protocol 5 (numpy 1)"),
    ("numpy._core.numeric", "_frombuffer"): _Allowed(
        _numpy_frombuffer, "numpy arrays, protocol 5 (numpy 2)"),
}  # fmt: skip


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _NvidiaUnpickler(pickle.Unpickler):
    """Resolves only the globals in `_PICKLE_GLOBALS`; everything else is refused unresolved."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 writes Python 2 names (`__builtin__.set`); map them as pickle itself would.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _PICKLE_GLOBALS[(module, name)].stand_in
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by network pickles")

def unpickle_nvidia(path: Path) -> Any:
    """The object in an NVIDIA pickle, with network modules as inert `Record`s."""
    try:
        with path.open("rb") as handle:
            return _NvidiaUnpickler(handle).load()
    except _RefusedGlobal as exc:
        hint = ""
        if str(exc).startswith("dnnlib.tflib"):
            hint = "; this is a TensorFlow pickle: convert it with NVIDIA's legacy.py first"
        raise CheckpointError(
            f"{path}: refused to unpickle {exc}: only StyleGAN network records, tensors and plain "
            f"containers are read from NVIDIA pickles, and no code in them is run{hint}"
        ) from None
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged pickle can raise nearly any exception type
        raise CheckpointError(
            f"{path}: not a readable NVIDIA network pickle ({one_line_reason(exc)})"
        ) from None


def flatten_record(
    path: Path, record: Record, check: Callable[[str, Record], None], prefix: str = ""
) -> dict[str, Any]:
    """Parameters and persistent buffers of a module record, under their dotted names.

    `check(where, record)` is called on every module first, so a family refuses what it cannot
    read with its own message.
    """
    check(prefix.rstrip(".") or "<root>", record)
    state = record.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    tensors: dict[str, Any] = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None and name not in skip:
                tensors[prefix + name] = value
    for name, module in (state.get("_modules") or {}).items():
        if module is None:
            continue
        if not isinstance(module, Record):
            raise CheckpointError(
                f"{path}: G_ema.{prefix}{name} is a {describe(module)}, not a network module"
            )
        tensors |= flatten_record(path, module, check, f"{prefix}{name}.")
    return tensors


def child(path: Path, record: Record, name: str) -> Record:
    child = (record.state.get("_modules") or {}).get(name)
    if not isinstance(child, Record):
        raise CheckpointError(f"{path}: {record.class_name} record has no {name!r} submodule")
    return child


def attr(path: Path, record: Record, name: str) -> Any:
    if name not in record.state:
        raise CheckpointError(f"{path}: {record.class_name} record lacks attribute {name!r}")
    return record.state[name]


def require(path: Path, where: str, found: Any, expected: Any, reason: str = "") -> None:
    if found != expected:
        why = f": {reason}" if reason else ""
        raise CheckpointError(f"{path}: {where} is {found!r}, expected {expected!r}{why}")
