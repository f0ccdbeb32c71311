"""StyleGAN3 generators from NVIDIA pickles, read without running them.

NVlabs/stylegan3 pickles a `Generator` whose synthesis network holds a `SynthesisInput` and
`SynthesisLayer`s named `L{i}_{size}_{channels}`. The architecture is rebuilt from the recorded
construction options (NVIDIA's defaults fill the ones left out) and then checked against every
layer record: channels, sizes, resampling factors, padding and kernel must be the ones the options
imply, so a network exprlock would render differently is refused, not approximated. Every
parameter and persistent buffer maps one to one (names are NVIDIA's), the designed low-pass
filters included, so the stored filters are the ones used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.errors import CheckpointError, ConfigError
from pipeline.generators.checkpoint_files import (
    Checkpoint,
    complete_w_avg,
    expected_shapes,
    map_tensors,
    same,
)
from pipeline.generators.mapping import build_mapping
from pipeline.generators.nvidia_pickle import Record, attr, child, flatten_record, require
from pipeline.generators.stylegan3 import StyleGAN3Config, StyleGAN3Generator

STYLEGAN3_CLASSES = frozenset(
    {"Generator", "MappingNetwork", "FullyConnectedLayer", "SynthesisNetwork", "SynthesisInput", "SynthesisLayer"}
)

# Construction options of NVIDIA's StyleGAN3 `Generator` that change the network exprlock builds,
# by the `StyleGAN3Config` field they set, and options with no effect on an inference forward pass.
_CONFIG_OPTIONS = {
    "z_dim": "z_dim", "w_dim": "w_dim", "c_dim": "c_dim", "img_resolution": "resolution",
    "channel_base": "channel_base", "channel_max": "channel_max", "num_layers": "num_layers",
    "num_critical": "num_critical", "first_cutoff": "first_cutoff", "first_stopband": "first_stopband",
    "last_stopband_rel": "last_stopband_rel", "margin_size": "margin_size", "output_scale": "output_scale",
    "conv_kernel": "conv_kernel", "filter_size": "filter_size", "lrelu_upsampling": "lrelu_upsampling",
    "use_radial_filters": "use_radial_filters", "conv_clamp": "conv_clamp",
}  # fmt: skip
_IGNORED_OPTIONS = frozenset(
    {"img_channels", "mapping_kwargs", "num_fp16_res", "magnitude_ema_beta", "w_avg_beta"}
)  # fmt: skip
_MAPPING_OPTIONS = frozenset({"num_layers", "lr_multiplier", "w_avg_beta"})
# Layer attributes checked against the design the options imply.
_LAYER_FIELDS = ("in_channels", "out_channels", "in_size", "out_size", "up_factor", "down_factor",
                 "conv_kernel", "is_torgb", "padding")  # fmt: skip


def is_stylegan3(generator: Record) -> bool:
    """Whether a `G_ema` record is a StyleGAN3 generator (its synthesis starts from Fourier features)."""
    synthesis = (generator.state.get("_modules") or {}).get("synthesis")
    modules = synthesis.state.get("_modules") or {} if isinstance(synthesis, Record) else {}
    return isinstance(modules.get("input"), Record) and modules["input"].class_name == "SynthesisInput"


def read_nvidia_stylegan3(path: Path, generator: Record, supported: str) -> Checkpoint:
    """The StyleGAN3 generator of an NVIDIA pickle, from its `G_ema` record."""

    def check(where: str, record: Record) -> None:
        if record.class_name not in STYLEGAN3_CLASSES:
            raise CheckpointError(
                f"{path}: G_ema.{where} is a {record.class_name!r} module, not one of a StyleGAN3 "
                f"generator's {sorted(STYLEGAN3_CLASSES)}; {supported}"
            )

    source = flatten_record(path, generator, check)
    config = _config(path, generator)
    _check_layers(path, generator, config)
    expected = dict(stylegan3_shapes(config))
    del expected["mapping.w_avg"]  # filled (or estimated) below

    def drop(key: str, value: Tensor) -> bool:
        return key == "mapping.w_avg"

    tensors = map_tensors(path, source, expected, lambda name: (name, same), drop)
    origin = complete_w_avg(path, build_mapping(config), tensors, source.get("mapping.w_avg"))
    return Checkpoint("stylegan3", config, tensors, "nvidia", origin)


def _config(path: Path, generator: Record) -> StyleGAN3Config:
    """The architecture from G_ema's construction options (NVIDIA's defaults for the rest)."""
    if generator.state.get("_init_args"):
        raise CheckpointError(f"{path}: G_ema was built with positional arguments; expected keywords only")
    options = dict(generator.state.get("_init_kwargs") or {})
    mapping_options = dict(options.get("mapping_kwargs") or {})
    unknown = sorted(set(options) - set(_CONFIG_OPTIONS) - _IGNORED_OPTIONS) or sorted(
        set(mapping_options) - _MAPPING_OPTIONS
    )
    if unknown:
        raise CheckpointError(
            f"{path}: G_ema option {unknown[0]!r} is not supported (not a StyleGAN3 generator option exprlock knows)"
        )
    require(path, "G_ema.img_channels", attr(path, generator, "img_channels"), 3, "RGB output is required")
    values: dict[str, Any] = {_CONFIG_OPTIONS[k]: v for k, v in options.items() if k in _CONFIG_OPTIONS}
    mapping = child(path, generator, "mapping")
    values["mapping_layers"] = int(attr(path, mapping, "num_layers"))
    values["mapping_lr_multiplier"] = float(attr(path, child(path, mapping, "fc0"), "bias_gain"))
    for name in ("z_dim", "w_dim", "c_dim"):
        values[name] = int(attr(path, generator, name))
    values["resolution"] = int(attr(path, generator, "img_resolution"))
    try:
        return StyleGAN3Config(**values)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: unsupported StyleGAN3 architecture: {exc}") from None


def _check_layers(path: Path, generator: Record, config: StyleGAN3Config) -> None:
    """Every layer record must have the name, sizes and resampling the config implies."""
    synthesis = child(path, generator, "synthesis")
    specs = config.layers()
    names = [spec.name for spec in specs]
    found = list(attr(path, synthesis, "layer_names"))
    require(path, "G_ema.synthesis.layer_names", found, names, "the layers the recorded options imply")
    for spec in specs:
        layer = child(path, synthesis, spec.name)
        for field in _LAYER_FIELDS:
            value = _plain(attr(path, layer, field))
            wanted = getattr(spec, field)
            if field in ("in_size", "out_size"):
                wanted = [wanted, wanted]
            if field == "padding":
                wanted = list(wanted)
            require(path, f"G_ema.synthesis.{spec.name}.{field}", value, wanted, "the value the recorded options imply")


def _plain(value: Any) -> Any:
    """Numpy arrays and scalars as lists and Python numbers, for comparison and messages."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def stylegan3_shapes(config: StyleGAN3Config) -> Mapping[str, tuple[int, ...]]:
    """Name and shape of every tensor the generator stores, without allocating it."""
    with torch.device("meta"):
        return expected_shapes(StyleGAN3Generator(config, class_index=0 if config.c_dim else None))
