"""StyleGAN checkpoints of every supported family and format: read, load, convert.

The format is recognised from the file's content (`detect_format`), never its name, and the
family from what the file holds: a rosinality archive is StyleGAN2; an NVIDIA pickle is StyleGAN3
when its synthesis network starts from Fourier features (`SynthesisInput`), else StyleGAN2; an
exprlock safetensors file names its family in its metadata. The readers of each family live in
`stylegan2_checkpoints` and `stylegan3_checkpoints`; NVIDIA pickles are read as inert records by
`nvidia_pickle`, which runs no code from the file.

exprlock's own format is safetensors, written by `convert_checkpoint` (from any supported file)
and `save_generator` (from a module), with the family, the
architecture (the config's `to_dict()` as JSON) and the provenance in the header metadata.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.errors import CheckpointError, ConfigError
from pipeline.generators.checkpoint_files import (
    Checkpoint,
    Family,
    describe,
    detect_format,
    file_digest,
    map_tensors,
    one_line_reason,
    same,
)
from pipeline.generators.mapping import MappedGenerator, check_class_index
from pipeline.generators.nvidia_pickle import Record, unpickle_nvidia
from pipeline.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator
from pipeline.generators.stylegan2_checkpoints import (
    read_nvidia_stylegan2,
    read_rosinality,
    stylegan2_shapes,
)
from pipeline.generators.stylegan3 import StyleGAN3Config, StyleGAN3Generator
from pipeline.generators.stylegan3_checkpoints import (
    is_stylegan3,
    read_nvidia_stylegan3,
    stylegan3_shapes,
)

SAFETENSORS_FORMATS: dict[str, Family] = {
    "exprlock-stylegan2": "stylegan2",
    "exprlock-stylegan3": "stylegan3",
}
SAFETENSORS_VERSION = "1"

SUPPORTED = (
    "exprlock reads StyleGAN2 generators of the 'skip' architecture, unconditional or conditional "
    "(NVIDIA's stylegan2-ada-pytorch and stylegan3 pickles, rosinality .pt files, exprlock "
    "safetensors) and StyleGAN3 generators of configs T and R, unconditional or conditional "
    "(NVIDIA's stylegan3 pickles, exprlock safetensors)"
)
_NVIDIA_TOP_LEVEL = ("G", "D", "G_ema", "augment_pipe", "training_set_kwargs")


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Family, architecture and tensors (exprlock names, float32, CPU) of the generator in `path`."""
    path = Path(path)
    source_format = detect_format(path)
    if source_format == "rosinality":
        return read_rosinality(path)
    if source_format == "safetensors":
        return _read_safetensors(path)
    data = unpickle_nvidia(path)
    generator = data.get("G_ema") if isinstance(data, dict) else None
    if not isinstance(generator, Record) or generator.class_name != "Generator":
        found = sorted(map(str, data)) if isinstance(data, dict) else describe(data)
        raise CheckpointError(
            f"{path}: expected a dict with a 'G_ema' Generator network "
            f"(keys {list(_NVIDIA_TOP_LEVEL)}), found {found}"
        )
    if is_stylegan3(generator):
        return read_nvidia_stylegan3(path, generator, SUPPORTED)
    return read_nvidia_stylegan2(path, generator, SUPPORTED)


def check_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint, *, kind: Family, class_index: int | None) -> None:
    """The file holds the family `generator.kind` names, and `class_index` fits its classes."""
    if checkpoint.family != kind:
        name = checkpoint.family.replace("stylegan", "StyleGAN")
        raise CheckpointError(
            f"generator.checkpoint: {Path(path)} holds a {name} generator but generator.kind is {kind!r}; "
            f"set generator.kind: {checkpoint.family}"
        )
    check_class_index(class_index, checkpoint.config.c_dim)


def load_stylegan(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    class_index: int | None = None,
    kind: Family | None = None,
    **options: Any,
) -> MappedGenerator:
    """A ready `StyleGAN2Generator` or `StyleGAN3Generator` for the file, whichever it holds
    (only the family `kind` when it is given).

    The parameters are frozen (`requires_grad=False`) and the module is in eval mode: gradients
    flow to latents, never to the weights. `options` go to the family's generator (StyleGAN2:
    `noise_mode`).
    """
    checkpoint = read_checkpoint(path)
    if kind is not None:
        check_checkpoint(path, checkpoint, kind=kind, class_index=class_index)
    family_class = StyleGAN3Generator if checkpoint.family == "stylegan3" else StyleGAN2Generator
    generator = family_class(
        checkpoint.config,
        truncation_psi=truncation_psi,
        truncation_cutoff=truncation_cutoff,
        class_index=class_index,
        **options,
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
    src_path = Path(src)
    checkpoint = read_checkpoint(src_path)
    provenance = {
        "source_format": checkpoint.source_format,
        "source_file": src_path.name,
        "source_sha256": file_digest(src_path),
        "w_avg": checkpoint.w_avg_origin,
    }
    return _write_safetensors(checkpoint.family, checkpoint.config, checkpoint.tensors, provenance, Path(dst), overwrite)


def save_generator(generator: MappedGenerator, dst: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a StyleGAN2 or StyleGAN3 module (loaded, built or trained here) as an exprlock
    safetensors file that `load_stylegan` reads back to the same network; as safe as
    `convert_checkpoint` against a half-written or overwritten `dst`."""
    family: Family = "stylegan3" if isinstance(generator, StyleGAN3Generator) else "stylegan2"
    provenance = {
        "source_format": generator.source_format,
        "source_file": "",
        "source_sha256": "",
        "w_avg": generator.w_avg_origin,
    }
    return _write_safetensors(family, generator.config, generator.state_dict(), provenance, Path(dst), overwrite)


def _write_safetensors(
    family: Family,
    config: StyleGAN2Config | StyleGAN3Config,
    tensors: dict[str, torch.Tensor],
    provenance: dict[str, str],
    dst: Path,
    overwrite: bool,
) -> Path:
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: already exists; pass overwrite=True to replace it")
    metadata = {
        "format": f"exprlock-{family}",
        "format_version": SAFETENSORS_VERSION,
        "config": json.dumps(config.to_dict(), sort_keys=True),
        **provenance,
    }
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _read_safetensors(path: Path) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            source = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own, unexported error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({one_line_reason(exc)})") from None
    family = SAFETENSORS_FORMATS.get(metadata.get("format", ""))
    if family is None:
        raise CheckpointError(
            f"{path}: metadata 'format' is {metadata.get('format')!r}, expected one of {sorted(SAFETENSORS_FORMATS)}"
        )
    if metadata.get("format_version") != SAFETENSORS_VERSION:
        raise CheckpointError(
            f"{path}: metadata 'format_version' is {metadata.get('format_version')!r}, "
            f"expected {SAFETENSORS_VERSION!r}"
        )
    config_class = StyleGAN3Config if family == "stylegan3" else StyleGAN2Config
    try:
        config = config_class.from_dict(json.loads(metadata.get("config", "")))
    except (ConfigError, json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: metadata 'config': {exc}") from None
    shapes = stylegan3_shapes(config) if family == "stylegan3" else stylegan2_shapes(config)
    tensors = map_tensors(path, source, shapes, lambda n: (n, same), lambda k, v: False)
    return Checkpoint(family, config, tensors, "safetensors", metadata.get("w_avg", "checkpoint"))
