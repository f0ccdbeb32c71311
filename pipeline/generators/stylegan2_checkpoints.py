"""StyleGAN2 generator weights from rosinality, NVIDIA and exprlock files, read without running.

The format is recognised from the file's content (magic bytes, then structure), never its name:

- **rosinality** (rosinality/stylegan2-pytorch, and pSp / e4e / ReStyle encoders built on it): a
  `torch.save` archive. Layouts: a dict with `g_ema` (the generator's state dict), `latent_avg`
  when made by `convert_weight.py`, and training records (`g`, `d`, `g_optim`, `d_optim`, `args`,
  `ada_aug_p`); a pSp-style dict whose `state_dict` holds the generator under `decoder.` with
  `latent_avg` beside it; or a bare generator state dict. It is read with
  `torch.load(weights_only=True)`, whose allowlist gains one class, `argparse.Namespace`:
  rosinality's `train.py` stores its command-line options under `args`, and a namespace only
  carries attributes.
- **nvidia** (NVlabs/stylegan2-ada-pytorch, NVlabs/stylegan3, TensorFlow networks converted by their
  `legacy.py`): a pickle of a dict with `G`, `D`, `G_ema`, `augment_pipe` and `training_set_kwargs`.
  NVIDIA pickles each network together with the source code of its module
  (`torch_utils.persistence`) and normally rebuilds it by executing that code. Here a restricted
  unpickler maps the few globals such a file needs to inert stand-ins: a persistence record becomes
  a `_Record` holding the class name and the module state (`_parameters`, `_buffers`, `_modules`,
  attributes, `_init_kwargs`); tensors are rebuilt through `torch.load(weights_only=True)`; numpy
  scalars and arrays are decoded from their bytes (numeric types only). Every pickle protocol from
  2 to 5 is read: each global a protocol names is in an allow-list with its reason
  (`_PICKLE_GLOBALS`). The stored source is dropped unread, and any other global is refused.
  Only `G_ema` (the weight average used for inference) is read.
- **safetensors**: exprlock's own format, written by `convert_checkpoint`, with the architecture
  (`StyleGAN2Config.to_dict()` as JSON) and the provenance in the header metadata.

Every tensor of the generator is claimed by exactly one mapping rule below, every source tensor is
used or dropped on purpose (resampling filters, which are checked to equal the expected filter
first), every shape is checked, and records outside the generator (discriminator, optimiser state,
encoder, training options) are dropped whole because they cannot change an image. A rosinality
training checkpoint carries no W average; it is then estimated as the mean of 10,000 mapped z
(seed 0) and the estimate is recorded in the converted file's metadata.

Every refusal is a one-line `CheckpointError` naming the file, the key and what was expected.

The rules were written from the public layouts of rosinality's `model.py` / `convert_weight.py`
and NVIDIA's `training/networks.py` / `legacy.py` / `torch_utils/persistence.py`.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import hashlib
import io
import json
import math
import os
import pickle
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from pipeline.errors import CheckpointError, ConfigError
from pipeline.generators.stylegan2 import (
    MappingNetwork,
    NoiseMode,
    StyleGAN2Config,
    StyleGAN2Generator,
    make_filter,
)

CheckpointFormat = Literal["rosinality", "nvidia", "safetensors"]

SAFETENSORS_FORMAT = "exprlock-stylegan2"
SAFETENSORS_VERSION = "1"

_W_AVG_SAMPLES = 10_000
_W_AVG_SEED = 0
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile wrappers
_TORCH_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # pre-1.6 torch.save header

ShapeRule = Callable[[tuple[int, ...]], tuple[int, ...]]
"""Expected source shape, given the destination tensor's shape."""


@dataclass(frozen=True)
class Checkpoint:
    """A generator read from a file: architecture, tensors under exprlock's names, provenance.

    `source_format` is the family of the file read; `w_avg_origin` says whether the W average
    came from a file ('checkpoint') or was estimated, and how.
    """

    config: StyleGAN2Config
    tensors: dict[str, Tensor]
    source_format: CheckpointFormat
    w_avg_origin: str


# --------------------------------------------------------------------------------------------
# Public entry points


def load_stylegan2(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    noise_mode: NoiseMode = "const",
) -> StyleGAN2Generator:
    """A ready `StyleGAN2Generator` from a rosinality `.pt`, NVIDIA `.pkl` or exprlock safetensors.

    The parameters are frozen (`requires_grad=False`) and the module is in eval mode: gradients
    flow to latents, never to the weights. The options are those of `StyleGAN2Generator`.
    """
    checkpoint = read_checkpoint(path)
    generator = StyleGAN2Generator(
        checkpoint.config,
        truncation_psi=truncation_psi,
        truncation_cutoff=truncation_cutoff,
        noise_mode=noise_mode,
    )
    generator.load_state_dict(checkpoint.tensors, strict=True)
    generator.source_format, generator.w_avg_origin = checkpoint.source_format, checkpoint.w_avg_origin
    return generator.requires_grad_(False).eval().to(device)


def convert_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the generator of `src` (any supported format) as an exprlock safetensors file.

    The file is written under a temporary name in the destination folder and renamed into place,
    so `dst` is either absent, untouched or complete. An existing `dst` is refused unless
    `overwrite` is set.
    """
    src_path, dst_path = Path(src), Path(dst)
    if dst_path.exists() and not overwrite:
        raise CheckpointError(f"{dst_path}: already exists; pass overwrite=True to replace it")
    checkpoint = read_checkpoint(src_path)
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "format_version": SAFETENSORS_VERSION,
        "config": json.dumps(checkpoint.config.to_dict(), sort_keys=True),
        "source_format": checkpoint.source_format,
        "source_file": src_path.name,
        "source_sha256": _sha256(src_path),
        "w_avg": checkpoint.w_avg_origin,
    }
    tensors = {
        name: t.detach().to("cpu").contiguous().clone() for name, t in checkpoint.tensors.items()
    }
    tmp = dst_path.with_name(f".{dst_path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, dst_path)
    finally:
        tmp.unlink(missing_ok=True)
    return dst_path


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Architecture and tensors (exprlock names, float32, CPU) of the generator in `path`."""
    path = Path(path)
    readers: dict[CheckpointFormat, Callable[[Path], Checkpoint]] = {
        "rosinality": _read_rosinality,
        "nvidia": _read_nvidia,
        "safetensors": _read_safetensors,
    }
    return readers[detect_format(path)](path)


def detect_format(path: str | os.PathLike[str]) -> CheckpointFormat:
    """Which family wrote `path`, from its first bytes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror})") from exc
    if head.startswith((_TORCH_ZIP_MAGIC, _TORCH_LEGACY_MAGIC)):
        return "rosinality"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if len(head) >= 2 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        return "nvidia"
    raise CheckpointError(
        f"{path}: unrecognised checkpoint (starts with {head[:8]!r}); expected a torch.save "
        "archive (rosinality .pt), a pickle (NVIDIA .pkl) or an exprlock .safetensors file"
    )


# --------------------------------------------------------------------------------------------
# The mapping engine shared by all formats


def _expected_shapes(config: StyleGAN2Config) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor the generator stores, without allocating it."""
    with torch.device("meta"):
        generator = StyleGAN2Generator(config)
    return {name: tuple(t.shape) for name, t in generator.state_dict().items()}


def _same(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape


def _leading_one(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *shape)


def _map_tensors(
    path: Path,
    source: Mapping[str, Tensor],
    expected: Mapping[str, tuple[int, ...]],
    locate: Callable[[str], tuple[str, ShapeRule]],
    drop: Callable[[str, Tensor], bool],
) -> dict[str, Tensor]:
    """Fill every expected tensor through `locate` and account for every source tensor.

    `locate(name)` gives the source key and its expected shape for destination `name` (raising
    when no rule claims it); `drop(key, tensor)` says whether an unused source tensor is dropped
    on purpose (raising when it is recognised but wrong).
    """
    tensors: dict[str, Tensor] = {}
    used: set[str] = set()
    for name, shape in expected.items():
        key, shape_rule = locate(name)
        if key not in source:
            raise CheckpointError(f"{path}: missing tensor {key!r} (needed for {name})")
        value = source[key]
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise CheckpointError(
                f"{path}: {key!r}: expected a float tensor, found {_describe(value)}"
            )
        want, found = shape_rule(shape), tuple(value.shape)
        if found != want:
            raise CheckpointError(f"{path}: tensor {key!r}: expected shape {want}, found {found}")
        tensors[name] = value.detach().reshape(shape).to(torch.float32)
        used.add(key)
    unexpected = [key for key in source if key not in used and not drop(key, source[key])]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(
            f"{path}: unexpected tensor {unexpected[0]!r}{more}: no StyleGAN2 rule uses it"
        )
    return tensors


def _check_filter(path: Path, key: str, value: Tensor, expected: Tensor) -> bool:
    """Drop a stored resampling filter after checking it is the one the config implies."""
    if tuple(value.shape) != tuple(expected.shape) or not torch.allclose(value.float(), expected):
        raise CheckpointError(
            f"{path}: filter {key!r} differs from the expected {list(expected.shape)} blur filter; "
            "only the blur kernel recorded in the network options is supported"
        )
    return True


def _complete_w_avg(
    path: Path, config: StyleGAN2Config, tensors: dict[str, Tensor], w_avg: Any
) -> str:
    """Store `mapping.w_avg`, estimating it when the file has none; returns its origin."""
    if w_avg is not None:
        if not isinstance(w_avg, Tensor) or tuple(w_avg.shape) != (config.w_dim,):
            raise CheckpointError(
                f"{path}: W average: expected shape ({config.w_dim},), found {_describe(w_avg)}"
            )
        tensors["mapping.w_avg"] = w_avg.detach().to(torch.float32)
        return "checkpoint"
    mapping = MappingNetwork(config)
    weights = {
        k.removeprefix("mapping."): v for k, v in tensors.items() if k.startswith("mapping.")
    }
    mapping.load_state_dict({**weights, "w_avg": torch.zeros(config.w_dim)}, strict=True)
    state = torch.Generator(device="cpu").manual_seed(_W_AVG_SEED)
    z = torch.randn(_W_AVG_SAMPLES, config.z_dim, generator=state)
    with torch.no_grad():
        tensors["mapping.w_avg"] = mapping.to_w(z).mean(dim=0)
    return f"estimated: mean of {_W_AVG_SAMPLES} mapped z (seed {_W_AVG_SEED})"


def _make_config(path: Path, **options: Any) -> StyleGAN2Config:
    try:
        return StyleGAN2Config(**options)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: unsupported architecture: {exc}") from exc


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _strip_wrappers(key: str) -> str:
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _unwrap_keys(path: Path, state: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in state.items():
        stripped = _strip_wrappers(key)
        if stripped in out:
            raise CheckpointError(
                f"{path}: key {key!r} duplicates {stripped!r} once wrappers are removed"
            )
        out[stripped] = value
    return out


# --------------------------------------------------------------------------------------------
# rosinality/stylegan2-pytorch


_ROSINALITY_CONV: dict[str, tuple[str, ShapeRule]] = {
    "weight": ("conv.weight", _leading_one),
    "affine.weight": ("conv.modulation.weight", _same),
    "affine.bias": ("conv.modulation.bias", _same),
    "bias": ("activate.bias", _same),
    "noise_strength": ("noise.weight", lambda shape: (1,)),
}
_ROSINALITY_TORGB: dict[str, tuple[str, ShapeRule]] = {
    "weight": ("conv.weight", _leading_one),
    "affine.weight": ("conv.modulation.weight", _same),
    "affine.bias": ("conv.modulation.bias", _same),
    "bias": ("bias", lambda shape: (1, shape[0], 1, 1)),
}
_ROSINALITY_FILTER = re.compile(r"(convs\.\d+\.conv\.blur|to_rgbs\.\d+\.upsample)\.kernel")
_ROSINALITY_TRAINING_RECORDS = ("g", "d", "g_optim", "d_optim", "args", "ada_aug_p")


def _rosinality_locate(name: str) -> tuple[str, ShapeRule]:
    """The rosinality key holding exprlock tensor `name`.

    rosinality numbers the layers above 4x4 consecutively: block k (resolution 2**(k+3)) has
    `convs.{2k}` (upsampling), `convs.{2k+1}` and `to_rgbs.{k}`; the 4x4 block is `conv1` and
    `to_rgb1`; noise images are `noises.noise_{i}` in layer order, 0 being the 4x4 conv.
    """
    if match := re.fullmatch(r"mapping\.fc(\d+)\.(weight|bias)", name):
        return f"style.{int(match[1]) + 1}.{match[2]}", _same
    if name == "synthesis.b4.const":
        return "input.input", _leading_one
    match = re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(.+)", name)
    if match is None:
        raise CheckpointError(f"no rosinality rule claims {name!r}")
    resolution, layer, param = int(match[1]), match[2], match[3]
    level = int(math.log2(resolution)) - 3
    if layer == "torgb":
        module = "to_rgb1" if resolution == 4 else f"to_rgbs.{level}"
        key, shape_rule = _ROSINALITY_TORGB[param]
        return f"{module}.{key}", shape_rule
    index = 2 * level + (layer == "conv1")
    if param == "noise_const":
        return f"noises.noise_{0 if resolution == 4 else index + 1}", lambda s: (1, 1, *s)
    key, shape_rule = _ROSINALITY_CONV[param]
    return f"{'conv1' if resolution == 4 else f'convs.{index}'}.{key}", shape_rule


def _read_rosinality(path: Path) -> Checkpoint:
    content = _torch_load(path)
    state, latent_avg, args = _rosinality_parts(path, content)
    config = _rosinality_config(path, state, args)
    expected = _expected_shapes(config)
    del expected["mapping.w_avg"]  # lives outside the state dict, or is estimated
    upsample_filter = make_filter(config.blur_kernel) * 4

    def drop(key: str, value: Tensor) -> bool:
        return bool(_ROSINALITY_FILTER.fullmatch(key)) and _check_filter(
            path, key, value, upsample_filter
        )

    def locate(name: str) -> tuple[str, ShapeRule]:
        try:
            return _rosinality_locate(name)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None

    tensors = _map_tensors(path, state, expected, locate, drop)
    w_avg = None if latent_avg is None else _rosinality_latent_avg(path, latent_avg, config)
    origin = _complete_w_avg(path, config, tensors, w_avg)
    return Checkpoint(config, tensors, "rosinality", origin)


def _torch_load(path: Path) -> Any:
    # Namespace objects only carry attributes; allowing them lets rosinality's `args` load.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: cannot read the torch archive: {_one_line_reason(exc)}"
        ) from exc


def _one_line_reason(exc: BaseException) -> str:
    """One line out of an error, e.g. torch.load's multi-paragraph weights-only message."""
    text = str(exc)
    if match := re.search(r"GLOBAL ([\w.]+)", text):
        return f"it refers to {match[1]}, which is not on the weights-only allowlist"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _rosinality_parts(
    path: Path, content: Any
) -> tuple[dict[str, Any], Tensor | None, argparse.Namespace | None]:
    """The generator state dict, latent_avg and training options, from any rosinality layout."""
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{path}: expected a dict in the torch archive, found {_describe(content)}"
        )
    content = _unwrap_keys(path, content)
    if "g_ema" in content:
        state = _unwrap_keys(path, content["g_ema"])
        args = content.get("args")
        return (
            state,
            content.get("latent_avg"),
            args if isinstance(args, argparse.Namespace) else None,
        )
    if isinstance(content.get("state_dict"), Mapping):
        nested = _unwrap_keys(path, content["state_dict"])
        state = {
            k.removeprefix("decoder."): v for k, v in nested.items() if k.startswith("decoder.")
        }
        if state:
            state = _unwrap_keys(path, state)
            return state, content.get("latent_avg", nested.get("latent_avg")), None
    if "style.1.weight" in content:
        return content, None, None
    keys = sorted(map(str, content))[:8]
    raise CheckpointError(
        f"{path}: no StyleGAN2 generator found: expected 'g_ema', 'state_dict' with 'decoder.*' "
        f"keys, or a bare generator state dict; top-level keys are {keys}"
    )


def _rosinality_config(
    path: Path, state: Mapping[str, Any], args: argparse.Namespace | None
) -> StyleGAN2Config:
    """Architecture from tensor shapes, cross-checked against the training options when present."""

    def shape(key: str) -> tuple[int, ...]:
        value = state.get(key)
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: missing tensor {key!r}; not a rosinality StyleGAN2 generator"
            )
        return tuple(value.shape)

    mapping_layers = _count_consecutive(state, "style.{}.weight", start=1)
    levels = _count_consecutive(state, "to_rgbs.{}.conv.weight", start=0)
    resolution = 2 ** (levels + 2)
    w_dim = shape("style.1.weight")[1]
    channels = {4: shape("input.input")[1]}
    channels |= {2 ** (k + 3): shape(f"convs.{2 * k}.conv.weight")[1] for k in range(levels)}
    if args is not None:
        for option, value in (("size", resolution), ("latent", w_dim), ("n_mlp", mapping_layers)):
            stored = getattr(args, option, value)
            if stored != value:
                raise CheckpointError(
                    f"{path}: args.{option} is {stored!r} but the g_ema tensors imply {value}"
                )
    return _make_config(
        path,
        resolution=resolution,
        channels=channels,
        z_dim=w_dim,
        w_dim=w_dim,
        mapping_layers=mapping_layers,
    )


def _count_consecutive(state: Mapping[str, Any], template: str, start: int) -> int:
    """How many of template.format(start), template.format(start + 1), ... are present."""
    count = 0
    while template.format(start + count) in state:
        count += 1
    return count


def _rosinality_latent_avg(path: Path, value: Any, config: StyleGAN2Config) -> Tensor:
    """`latent_avg` as (w_dim,): stored as (w_dim,), (1, w_dim) or repeated per W+ row (pSp)."""
    if not isinstance(value, Tensor) or value.shape[-1:] != (config.w_dim,) or value.ndim > 2:
        raise CheckpointError(
            f"{path}: latent_avg: expected shape ({config.w_dim},) or (rows, {config.w_dim}), "
            f"found {_describe(value)}"
        )
    rows = value.reshape(-1, config.w_dim)
    if not torch.equal(rows, rows[:1].expand_as(rows)):
        raise CheckpointError(f"{path}: latent_avg: rows differ, so it is not one W average")
    return rows[0]


# --------------------------------------------------------------------------------------------
# NVIDIA stylegan2-ada-pytorch / stylegan3 pickles


@dataclass(frozen=True, slots=True)
class _Record:
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


def _persistent_record(meta: Any) -> _Record:
    """Replaces `torch_utils.persistence._reconstruct_persistent_obj`; `module_src` is ignored."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("malformed persistence record")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise pickle.UnpicklingError("persistence record without class name or state")
    plain = {k: v.value if isinstance(v, _NumpyArray) else v for k, v in state.items()}
    return _Record(class_name, plain)


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


SUPPORTED = (
    "exprlock reads unconditional StyleGAN2 generators of the 'skip' architecture (NVIDIA's "
    "stylegan2-ada-pytorch and stylegan3 pickles of the StyleGAN2 config, rosinality .pt files, "
    "exprlock safetensors)"
)
# Modules only StyleGAN3 (configs T and R) has: the Fourier-feature input and its layers.
_STYLEGAN3_CLASSES = frozenset({"SynthesisInput"})
_NVIDIA_G_CLASSES = frozenset(
    {"Generator", "MappingNetwork", "FullyConnectedLayer", "SynthesisNetwork", "SynthesisBlock",
     "SynthesisLayer", "ToRGBLayer"}
)  # fmt: skip

# Options a StyleGAN2 `Generator` is built with (top level, `mapping_kwargs`, `synthesis_kwargs`).
# Their effective values are read from the modules' attributes and tensors; this list only
# refuses options that exprlock does not know.
_NVIDIA_OPTIONS = frozenset(
    {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
     "synthesis_kwargs", "channel_base", "channel_max", "conv_clamp", "architecture",
     "resample_filter", "use_noise", "activation", "kernel_size",
     # mapping network
     "num_layers", "embed_features", "layer_features", "lr_multiplier",
     # training-time only: no effect on a forward pass of G_ema
     "w_avg_beta", "freeze_layers", "freeze_embed",
     # execution only: precision, memory layout, fused or split modulated convolution
     "num_fp16_res", "channels_last", "fp16_channels_last", "fused_modconv_default"}
)  # fmt: skip
_NVIDIA_TOP_LEVEL = ("G", "D", "G_ema", "augment_pipe", "training_set_kwargs")


def _read_nvidia(path: Path) -> Checkpoint:
    data = _unpickle_nvidia(path)
    generator = data.get("G_ema") if isinstance(data, dict) else None
    if not isinstance(generator, _Record) or generator.class_name != "Generator":
        found = sorted(map(str, data)) if isinstance(data, dict) else _describe(data)
        raise CheckpointError(
            f"{path}: expected a dict with a 'G_ema' Generator network "
            f"(keys {list(_NVIDIA_TOP_LEVEL)}), found {found}"
        )
    source = _flatten_record(path, generator)
    config = _nvidia_config(path, generator, source)
    expected = _expected_shapes(config)
    del expected["mapping.w_avg"]  # absent when the network was built without tracking it
    resample_filter = make_filter(config.blur_kernel)

    def drop(key: str, value: Tensor) -> bool:
        if key == "mapping.w_avg":
            return True  # used below
        return key.endswith(".resample_filter") and _check_filter(path, key, value, resample_filter)

    tensors = _map_tensors(path, source, expected, lambda name: (name, _same), drop)
    origin = _complete_w_avg(path, config, tensors, source.get("mapping.w_avg"))
    return Checkpoint(config, tensors, "nvidia", origin)


def _unpickle_nvidia(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            return _NvidiaUnpickler(handle).load()
    except _RefusedGlobal as exc:
        hint = ""
        if str(exc).startswith("dnnlib.tflib"):
            hint = "; this is a TensorFlow pickle: convert it with NVIDIA's legacy.py first"
        raise CheckpointError(
            f"{path}: refused to unpickle {exc}: only StyleGAN2 network records, tensors and plain "
            f"containers are read from NVIDIA pickles, and no code in them is run{hint}"
        ) from None
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged pickle can raise nearly any exception type
        raise CheckpointError(
            f"{path}: not a readable NVIDIA network pickle ({_one_line_reason(exc)})"
        ) from None


def _flatten_record(path: Path, record: _Record, prefix: str = "") -> dict[str, Any]:
    """Parameters and persistent buffers of a module record, under their dotted names."""
    if record.class_name not in _NVIDIA_G_CLASSES:
        where = f"G_ema.{prefix.rstrip('.') or '<root>'} is a {record.class_name!r} module"
        if record.class_name in _STYLEGAN3_CLASSES:
            raise CheckpointError(f"{path}: a StyleGAN3 generator ({where}); {SUPPORTED}")
        raise CheckpointError(
            f"{path}: {where}, not one of a StyleGAN2 generator's {sorted(_NVIDIA_G_CLASSES)}; {SUPPORTED}"
        )
    state = record.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    tensors: dict[str, Any] = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None and name not in skip:
                tensors[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _Record):
            raise CheckpointError(
                f"{path}: G_ema.{prefix}{name} is a {_describe(child)}, not a network module"
            )
        tensors |= _flatten_record(path, child, f"{prefix}{name}.")
    return tensors


def _nvidia_config(path: Path, generator: _Record, source: Mapping[str, Any]) -> StyleGAN2Config:
    """Architecture from G_ema's module attributes and tensor shapes, refusing what we lack."""
    options = _nvidia_options(path, generator)
    _require(
        path,
        "G_ema.c_dim",
        _attr(path, generator, "c_dim"),
        0,
        f"a conditional generator; {SUPPORTED}",
    )
    _require(
        path,
        "G_ema.img_channels",
        _attr(path, generator, "img_channels"),
        3,
        "RGB output is required",
    )
    mapping = _child(path, generator, "mapping")
    synthesis = _child(path, generator, "synthesis")
    num_layers = int(_attr(path, mapping, "num_layers"))
    fc_layers = [_child(path, mapping, f"fc{i}") for i in range(num_layers)]
    for i, layer in enumerate(fc_layers):
        _require(path, f"G_ema.mapping.fc{i}.activation", _attr(path, layer, "activation"), "lrelu")
    lr_multiplier = float(_attr(path, fc_layers[0], "bias_gain"))
    resolutions = [int(r) for r in _attr(path, synthesis, "block_resolutions")]
    clamps = set()
    for res in resolutions:
        block = _child(path, synthesis, f"b{res}")
        _require(
            path, f"G_ema.synthesis.b{res}.architecture", _attr(path, block, "architecture"), "skip", SUPPORTED
        )
        for name in ("conv0", "conv1") if res > 4 else ("conv1",):
            layer = _child(path, block, name)
            where = f"G_ema.synthesis.b{res}.{name}"
            _require(path, f"{where}.activation", _attr(path, layer, "activation"), "lrelu")
            _require(path, f"{where}.use_noise", _attr(path, layer, "use_noise"), True)
            clamps.add(_attr(path, layer, "conv_clamp"))
        clamps.add(_attr(path, _child(path, block, "torgb"), "conv_clamp"))
    if len(clamps) != 1:
        raise CheckpointError(
            f"{path}: layers use different conv_clamp values {sorted(map(str, clamps))}"
        )

    def shape(key: str) -> tuple[int, ...]:
        value = source.get(key)
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: missing tensor G_ema.{key}")
        return tuple(value.shape)

    return _make_config(
        path,
        resolution=resolutions[-1],
        channels={res: shape(f"synthesis.b{res}.conv1.weight")[0] for res in resolutions},
        z_dim=shape("mapping.fc0.weight")[1],
        w_dim=shape(f"mapping.fc{num_layers - 1}.weight")[0],
        mapping_layers=num_layers,
        mapping_lr_multiplier=lr_multiplier,
        blur_kernel=tuple(options.get("resample_filter", (1, 3, 3, 1))),
        conv_clamp=clamps.pop(),
    )


def _nvidia_options(path: Path, generator: _Record) -> dict[str, Any]:
    """The Generator's construction options, flattened, with unknown ones refused."""
    if generator.state.get("_init_args"):
        raise CheckpointError(
            f"{path}: G_ema was built with positional arguments; expected keywords only"
        )
    options = dict(generator.state.get("_init_kwargs") or {})
    for nested in ("mapping_kwargs", "synthesis_kwargs"):
        options |= dict(options.get(nested) or {})
    unknown = sorted(set(options) - _NVIDIA_OPTIONS)
    if unknown:
        raise CheckpointError(
            f"{path}: G_ema option {unknown[0]!r}={options[unknown[0]]!r} is not supported "
            "(not a StyleGAN2 generator option exprlock knows)"
        )
    return options


def _child(path: Path, record: _Record, name: str) -> _Record:
    child = (record.state.get("_modules") or {}).get(name)
    if not isinstance(child, _Record):
        raise CheckpointError(f"{path}: {record.class_name} record has no {name!r} submodule")
    return child


def _attr(path: Path, record: _Record, name: str) -> Any:
    if name not in record.state:
        raise CheckpointError(f"{path}: {record.class_name} record lacks attribute {name!r}")
    return record.state[name]


def _require(path: Path, where: str, found: Any, expected: Any, reason: str = "") -> None:
    if found != expected:
        why = f": {reason}" if reason else ""
        raise CheckpointError(f"{path}: {where} is {found!r}, expected {expected!r}{why}")


# --------------------------------------------------------------------------------------------
# exprlock safetensors


def _read_safetensors(path: Path) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            source = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own, unexported error types
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_one_line_reason(exc)})"
        ) from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(
            f"{path}: metadata 'format' is {metadata.get('format')!r}, "
            f"expected {SAFETENSORS_FORMAT!r}"
        )
    if metadata.get("format_version") != SAFETENSORS_VERSION:
        raise CheckpointError(
            f"{path}: metadata 'format_version' is {metadata.get('format_version')!r}, "
            f"expected {SAFETENSORS_VERSION!r}"
        )
    try:
        config = StyleGAN2Config.from_dict(json.loads(metadata.get("config", "")))
    except (ConfigError, json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: metadata 'config': {exc}") from None
    tensors = _map_tensors(
        path, source, _expected_shapes(config), lambda n: (n, _same), lambda k, v: False
    )
    return Checkpoint(config, tensors, "safetensors", metadata.get("w_avg", "checkpoint"))
