"""What every checkpoint reader shares: the `Checkpoint` record, format detection from content,
the tensor-mapping engine, the W-average completion and one-line error helpers."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from pipeline.errors import CheckpointError
from pipeline.generators.mapping import MappingNetwork

CheckpointFormat = Literal["rosinality", "nvidia", "safetensors"]
Family = Literal["stylegan2", "stylegan3"]

W_AVG_SAMPLES = 10_000
W_AVG_SEED = 0
_TORCH_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # pre-1.6 torch.save header

ShapeRule = Callable[[tuple[int, ...]], tuple[int, ...]]
"""Expected source shape, given the destination tensor's shape."""


@dataclass(frozen=True)
class Checkpoint:
    """A generator read from a file: architecture, tensors under exprlock's names, provenance.

    `config` is a `StyleGAN2Config` or `StyleGAN3Config` (its type names the family);
    `source_format` is the format of the file read; `w_avg_origin` says whether the W average
    came from a file ('checkpoint') or was estimated, and how.
    """

    family: Family
    config: Any
    tensors: dict[str, Tensor]
    source_format: CheckpointFormat
    w_avg_origin: str


def detect_format(path: str | os.PathLike[str]) -> CheckpointFormat:
    """Which format `path` is in, from its first bytes."""
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


def same(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The `ShapeRule` of a tensor stored as exprlock stores it."""
    return shape


def expected_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor in a module's state dict (build it on the meta device)."""
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def describe(value: object) -> str:
    """What a value is, for an error message: a tensor's dtype and shape, else its type."""
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def one_line_reason(exc: BaseException) -> str:
    """One line out of an error, e.g. torch.load's multi-paragraph weights-only message."""
    text = str(exc)
    if match := re.search(r"GLOBAL ([\w.]+)", text):
        return f"it refers to {match[1]}, which is not on the weights-only allowlist"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def complete_w_avg(path: Path, mapping: MappingNetwork, tensors: dict[str, Tensor], w_avg: object) -> str:
    """Store `mapping.w_avg` in `tensors`, estimating it when the file has none; returns its origin.

    The estimate is the mean of `W_AVG_SAMPLES` mapped z (seed `W_AVG_SEED`), with classes drawn
    uniformly from the same random state for a conditional generator.
    """
    w_dim = mapping.w_avg.shape[0]
    if w_avg is not None:
        if not isinstance(w_avg, Tensor) or tuple(w_avg.shape) != (w_dim,):
            raise CheckpointError(f"{path}: W average: expected shape ({w_dim},), found {describe(w_avg)}")
        tensors["mapping.w_avg"] = w_avg.detach().to(torch.float32)
        return "checkpoint"
    weights = {k.removeprefix("mapping."): v for k, v in tensors.items() if k.startswith("mapping.")}
    mapping.load_state_dict({**weights, "w_avg": torch.zeros(w_dim)}, strict=True)
    state = torch.Generator(device="cpu").manual_seed(W_AVG_SEED)
    z = torch.randn(W_AVG_SAMPLES, mapping.z_dim, generator=state)
    c = None
    if mapping.c_dim:
        classes = torch.randint(mapping.c_dim, (W_AVG_SAMPLES,), generator=state)
        c = torch.nn.functional.one_hot(classes, mapping.c_dim).float()
    with torch.no_grad():
        tensors["mapping.w_avg"] = mapping.to_w(z, c).mean(dim=0)
    return f"estimated: mean of {W_AVG_SAMPLES} mapped z (seed {W_AVG_SEED})"


def map_tensors(
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
                f"{path}: {key!r}: expected a float tensor, found {describe(value)}"
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
            f"{path}: unexpected tensor {unexpected[0]!r}{more}: no rule for this generator uses it"
        )
    return tensors
