"""StyleGAN2 generator weights from rosinality and NVIDIA files, read without running.

`pipeline.generators.checkpoints` recognises the format and family from the file's content and
calls the readers here:

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
  Networks are read as inert records by `pipeline.generators.nvidia_pickle`, which runs no code
  from the file. Only `G_ema` (the weight average used for inference) is read; a conditional
  generator's class embedding is read with it.

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

import argparse
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.errors import CheckpointError, ConfigError
from pipeline.generators.checkpoint_files import (
    Checkpoint,
    ShapeRule,
    complete_w_avg,
    describe,
    expected_shapes,
    map_tensors,
    one_line_reason,
    same,
)
from pipeline.generators.mapping import build_mapping
from pipeline.generators.stylegan2 import (
    StyleGAN2Config,
    StyleGAN2Generator,
    make_filter,
)
from pipeline.generators.nvidia_pickle import (
    Record,
    attr,
    child,
    flatten_record,
    require,
)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile wrappers


# --------------------------------------------------------------------------------------------
# Shapes and checks shared by both formats


def stylegan2_shapes(config: StyleGAN2Config) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor the generator stores, without allocating it."""
    with torch.device("meta"):
        return expected_shapes(StyleGAN2Generator(config, class_index=0 if config.c_dim else None))


def _leading_one(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *shape)


def _check_filter(path: Path, key: str, value: Tensor, expected: Tensor) -> bool:
    """Drop a stored resampling filter after checking it is the one the config implies."""
    if tuple(value.shape) != tuple(expected.shape) or not torch.allclose(value.float(), expected):
        raise CheckpointError(
            f"{path}: filter {key!r} differs from the expected {list(expected.shape)} blur filter; "
            "only the blur kernel recorded in the network options is supported"
        )
    return True


def _make_config(path: Path, **options: Any) -> StyleGAN2Config:
    try:
        return StyleGAN2Config(**options)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: unsupported architecture: {exc}") from exc


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
    "affine.weight": ("conv.modulation.weight", same),
    "affine.bias": ("conv.modulation.bias", same),
    "bias": ("activate.bias", same),
    "noise_strength": ("noise.weight", lambda shape: (1,)),
}
_ROSINALITY_TORGB: dict[str, tuple[str, ShapeRule]] = {
    "weight": ("conv.weight", _leading_one),
    "affine.weight": ("conv.modulation.weight", same),
    "affine.bias": ("conv.modulation.bias", same),
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
        return f"style.{int(match[1]) + 1}.{match[2]}", same
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


def read_rosinality(path: Path) -> Checkpoint:
    """The StyleGAN2 generator of a rosinality-layout torch archive."""
    content = _torch_load(path)
    state, latent_avg, args = _rosinality_parts(path, content)
    config = _rosinality_config(path, state, args)
    expected = stylegan2_shapes(config)
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

    tensors = map_tensors(path, state, expected, locate, drop)
    w_avg = None if latent_avg is None else _rosinality_latent_avg(path, latent_avg, config)
    origin = complete_w_avg(path, build_mapping(config), tensors, w_avg)
    return Checkpoint("stylegan2", config, tensors, "rosinality", origin)


def _torch_load(path: Path) -> Any:
    # Namespace objects only carry attributes; allowing them lets rosinality's `args` load.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: cannot read the torch archive: {one_line_reason(exc)}"
        ) from exc


def _rosinality_parts(
    path: Path, content: Any
) -> tuple[dict[str, Any], Tensor | None, argparse.Namespace | None]:
    """The generator state dict, latent_avg and training options, from any rosinality layout."""
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{path}: expected a dict in the torch archive, found {describe(content)}"
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
            f"found {describe(value)}"
        )
    rows = value.reshape(-1, config.w_dim)
    if not torch.equal(rows, rows[:1].expand_as(rows)):
        raise CheckpointError(f"{path}: latent_avg: rows differ, so it is not one W average")
    return rows[0]


# --------------------------------------------------------------------------------------------
# NVIDIA stylegan2-ada-pytorch / stylegan3 pickles


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


def read_nvidia_stylegan2(path: Path, generator: Record, supported: str) -> Checkpoint:
    """The StyleGAN2 generator of an NVIDIA pickle, from its `G_ema` record; `supported` says
    what exprlock reads, for refusals."""
    source = flatten_record(path, generator, lambda where, record: _check_module(path, where, record, supported))
    config = _nvidia_config(path, generator, source, supported)
    expected = stylegan2_shapes(config)
    del expected["mapping.w_avg"]  # absent when the network was built without tracking it
    resample_filter = make_filter(config.blur_kernel)

    def drop(key: str, value: Tensor) -> bool:
        if key == "mapping.w_avg":
            return True  # used below
        return key.endswith(".resample_filter") and _check_filter(path, key, value, resample_filter)

    tensors = map_tensors(path, source, expected, lambda name: (name, same), drop)
    origin = complete_w_avg(path, build_mapping(config), tensors, source.get("mapping.w_avg"))
    return Checkpoint("stylegan2", config, tensors, "nvidia", origin)


def _check_module(path: Path, where: str, record: Record, supported: str) -> None:
    """Refuse a module a StyleGAN2 generator does not have."""
    if record.class_name in _NVIDIA_G_CLASSES:
        return
    raise CheckpointError(
        f"{path}: G_ema.{where} is a {record.class_name!r} module, not one of a StyleGAN2 generator's {sorted(_NVIDIA_G_CLASSES)}; {supported}"
    )


def _nvidia_config(
    path: Path, generator: Record, source: Mapping[str, Any], supported: str
) -> StyleGAN2Config:
    """Architecture from G_ema's module attributes and tensor shapes, refusing what we lack."""
    options = _nvidia_options(path, generator)
    require(
        path,
        "G_ema.img_channels",
        attr(path, generator, "img_channels"),
        3,
        "RGB output is required",
    )
    mapping = child(path, generator, "mapping")
    synthesis = child(path, generator, "synthesis")
    num_layers = int(attr(path, mapping, "num_layers"))
    fc_layers = [child(path, mapping, f"fc{i}") for i in range(num_layers)]
    for i, layer in enumerate(fc_layers):
        require(path, f"G_ema.mapping.fc{i}.activation", attr(path, layer, "activation"), "lrelu")
    lr_multiplier = float(attr(path, fc_layers[0], "bias_gain"))
    resolutions = [int(r) for r in attr(path, synthesis, "block_resolutions")]
    clamps = set()
    for res in resolutions:
        block = child(path, synthesis, f"b{res}")
        require(
            path, f"G_ema.synthesis.b{res}.architecture", attr(path, block, "architecture"), "skip", supported
        )
        for name in ("conv0", "conv1") if res > 4 else ("conv1",):
            layer = child(path, block, name)
            where = f"G_ema.synthesis.b{res}.{name}"
            require(path, f"{where}.activation", attr(path, layer, "activation"), "lrelu")
            require(path, f"{where}.use_noise", attr(path, layer, "use_noise"), True)
            clamps.add(attr(path, layer, "conv_clamp"))
        clamps.add(attr(path, child(path, block, "torgb"), "conv_clamp"))
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
        z_dim=int(attr(path, generator, "z_dim")),
        c_dim=int(attr(path, generator, "c_dim")),
        w_dim=shape(f"mapping.fc{num_layers - 1}.weight")[0],
        mapping_layers=num_layers,
        mapping_lr_multiplier=lr_multiplier,
        blur_kernel=tuple(options.get("resample_filter", (1, 3, 3, 1))),
        conv_clamp=clamps.pop(),
    )


def _nvidia_options(path: Path, generator: Record) -> dict[str, Any]:
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


