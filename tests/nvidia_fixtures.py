"""NVIDIA's pickle format, written offline: persistence records without NVIDIA's code.

NVIDIA pickles a network as `torch_utils.persistence._reconstruct_persistent_obj(meta)`, where
`meta` holds the module's source, class name and state. `Persistent` modules pickle the same way;
`dump_nvidia` installs stand-in `torch_utils` / `dnnlib` modules only while the bytes are written,
so a loader can never lean on them.
"""

from __future__ import annotations

import math
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pipeline.generators.stylegan2 import StyleGAN2Generator
from pipeline.generators.stylegan3 import StyleGAN3Config
from stylegan2_fixtures import CHANNEL_BASE, CHANNEL_MAX


class EasyDict(dict):  # type: ignore[type-arg]
    """Pickled under dnnlib.util.EasyDict, like NVIDIA's."""


EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"


def _reconstruct_persistent_obj(meta: dict[str, Any]) -> Any:
    raise AssertionError("NVIDIA's persistence code was run during loading")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class Persistent(nn.Module):
    """Pickles like a `@persistence.persistent_class` module: a record with module source."""

    module_src = "# training/networks.py\n"
    _init_kwargs: dict[str, Any]

    def __reduce__(self) -> tuple[Any, ...]:
        meta = {
            "type": "class",
            "version": 6,
            "module_src": self.module_src,
            "class_name": type(self).__name__,
            "state": super().__reduce__()[2],
        }
        return (_reconstruct_persistent_obj, (meta,), None)


def persistent(class_name: str, init_kwargs: dict[str, Any], **attrs: Any) -> Persistent:
    """A module of NVIDIA class `class_name`; like NVIDIA's, it keeps its init kwargs and sets
    most of them, plus `attrs`, as attributes."""
    module = type(class_name, (Persistent,), {})()
    module._init_args, module._init_kwargs = (), dict(init_kwargs)
    for name, value in (init_kwargs | attrs).items():
        setattr(module, name, value)
    return module


def fully_connected(weight: Tensor, bias: Tensor, lr: float, activation: str) -> Persistent:
    out_features, in_features = weight.shape
    kwargs = {"in_features": in_features, "out_features": out_features, "activation": activation}
    layer = persistent(
        "FullyConnectedLayer",
        kwargs | {"lr_multiplier": lr},
        weight_gain=np.float64(lr / math.sqrt(in_features)),
        bias_gain=lr,
    )
    del layer.lr_multiplier  # an init kwarg only, not an attribute
    layer.weight, layer.bias = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())
    return layer


def nvidia_generator(
    generator: StyleGAN2Generator,
    *,
    extra_options: dict[str, Any] | None = None,
    channel_base: int = CHANNEL_BASE,
    channel_max: int = CHANNEL_MAX,
) -> Persistent:
    """StyleGAN2's G_ema as NVIDIA's networks.py builds it: module names, attributes, buffers,
    init kwargs; conditional when `generator.config.c_dim` is."""
    ours, config = generator.state_dict(), generator.config
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    resample_filter = taps.outer(taps) / 64  # upfirdn2d.setup_filter([1, 3, 3, 1])
    clamp = config.conv_clamp

    def affine(prefix: str) -> Persistent:
        weight, bias = ours[f"{prefix}.affine.weight"], ours[f"{prefix}.affine.bias"]
        return fully_connected(weight, bias, 1.0, "linear")

    def synthesis_layer(prefix: str, cin: int, cout: int, res: int, up: int) -> Persistent:
        kwargs: dict[str, Any] = {"in_channels": cin, "out_channels": cout, "w_dim": config.w_dim}
        kwargs |= {"resolution": res, "up": up, "conv_clamp": clamp}
        layer = persistent(
            "SynthesisLayer",
            kwargs,
            use_noise=True,
            activation="lrelu",
            padding=1,
            act_gain=np.float64(math.sqrt(2)),
        )
        layer.register_buffer("resample_filter", resample_filter.clone())
        layer.affine = affine(prefix)
        layer.weight = nn.Parameter(ours[f"{prefix}.weight"].clone())
        layer.register_buffer("noise_const", ours[f"{prefix}.noise_const"].clone())
        layer.noise_strength = nn.Parameter(ours[f"{prefix}.noise_strength"].clone())
        layer.bias = nn.Parameter(ours[f"{prefix}.bias"].clone())
        return layer

    def to_rgb(prefix: str, cin: int) -> Persistent:
        kwargs = {"in_channels": cin, "out_channels": 3, "w_dim": config.w_dim, "conv_clamp": clamp}
        layer = persistent("ToRGBLayer", kwargs, weight_gain=np.float64(1 / math.sqrt(cin)))
        layer.affine = affine(prefix)
        layer.weight = nn.Parameter(ours[f"{prefix}.weight"].clone())
        layer.bias = nn.Parameter(ours[f"{prefix}.bias"].clone())
        return layer

    synthesis = persistent(
        "SynthesisNetwork",
        {"w_dim": config.w_dim, "img_resolution": config.resolution, "img_channels": 3},
        block_resolutions=config.block_resolutions,
        num_ws=config.num_ws,
        num_fp16_res=0,
    )
    for res in config.block_resolutions:
        prefix, cout = f"synthesis.b{res}", config.channels[res]
        cin = 0 if res == 4 else config.channels[res // 2]
        kwargs = {"in_channels": cin, "w_dim": config.w_dim, "resolution": res}
        kwargs |= {"img_channels": 3, "is_last": res == config.resolution}
        block = persistent(
            "SynthesisBlock",
            kwargs | {"out_channels": cout, "use_fp16": False, "conv_clamp": clamp},
            architecture="skip",
            channels_last=False,
            num_conv=1 if res == 4 else 2,
            num_torgb=1,
        )
        del block.out_channels, block.conv_clamp  # init kwargs only
        block.register_buffer("resample_filter", resample_filter.clone())
        if res == 4:
            block.const = nn.Parameter(ours[f"{prefix}.const"].clone())
        else:
            block.conv0 = synthesis_layer(f"{prefix}.conv0", cin, cout, res, up=2)
        block.conv1 = synthesis_layer(f"{prefix}.conv1", cout, cout, res, up=1)
        block.torgb = to_rgb(f"{prefix}.torgb", cout)
        setattr(synthesis, f"b{res}", block)

    mapping = persistent(
        "MappingNetwork",
        {"z_dim": config.z_dim, "c_dim": config.c_dim, "w_dim": config.w_dim, "num_ws": config.num_ws},
        num_layers=config.mapping_layers,
        w_avg_beta=0.995,
    )
    if config.c_dim:
        mapping.embed = fully_connected(ours["mapping.embed.weight"], ours["mapping.embed.bias"], 1.0, "linear")
    for i in range(config.mapping_layers):
        weight, bias = ours[f"mapping.fc{i}.weight"], ours[f"mapping.fc{i}.bias"]
        setattr(mapping, f"fc{i}", fully_connected(weight, bias, 0.01, "lrelu"))
    mapping.register_buffer("w_avg", ours["mapping.w_avg"].clone())

    dims = {"z_dim": config.z_dim, "c_dim": config.c_dim, "w_dim": config.w_dim}
    dims |= {"img_resolution": config.resolution, "img_channels": 3}
    options = dims | {
        "mapping_kwargs": EasyDict(num_layers=config.mapping_layers),
        "synthesis_kwargs": EasyDict(
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=4, conv_clamp=clamp
        ),
    }
    g = persistent("Generator", dims, num_ws=config.num_ws)
    g._init_kwargs = options | (extra_options or {})
    g.synthesis, g.mapping = synthesis, mapping
    return g


def stylegan3_config(meta: dict[str, Any]) -> StyleGAN3Config:
    """exprlock's config for NVIDIA's construction options `meta["options"]`."""
    options = meta["options"]
    layer_options = {key: options[key] for key in ("conv_kernel", "use_radial_filters") if key in options}
    return StyleGAN3Config(
        resolution=options["img_resolution"],
        z_dim=options["z_dim"],
        w_dim=options["w_dim"],
        c_dim=options["c_dim"],
        mapping_layers=options["mapping_kwargs"]["num_layers"],
        channel_base=options["channel_base"],
        channel_max=options["channel_max"],
        **layer_options,
    )


def parameter(state: dict[str, Tensor], key: str) -> nn.Parameter:
    return nn.Parameter(state[key].clone())


def nvidia_stylegan3(meta: dict[str, Any], state: dict[str, Tensor]) -> Persistent:
    """StyleGAN3's G_ema as NVIDIA's networks_stylegan3.py builds it, holding the tensors of `state`
    (NVIDIA's names); `meta["options"]` holds NVIDIA's construction options."""
    options, config = meta["options"], stylegan3_config(meta)
    specs = config.layers()

    def affine(prefix: str, lr: float = 1.0, activation: str = "linear") -> Persistent:
        return fully_connected(state[f"{prefix}.weight"], state[f"{prefix}.bias"], lr, activation)

    first = specs[0]
    size = np.broadcast_to(np.asarray(first.in_size), [2])
    inputs = persistent(
        "SynthesisInput",
        {"w_dim": config.w_dim, "channels": first.in_channels, "size": first.in_size,
         "sampling_rate": first.in_sampling_rate, "bandwidth": first.in_cutoff},
        size=size,
    )  # fmt: skip
    inputs.weight = parameter(state, "synthesis.input.weight")
    inputs.affine = affine("synthesis.input.affine")
    for name in ("transform", "freqs", "phases"):
        inputs.register_buffer(name, state[f"synthesis.input.{name}"].clone())
    synthesis = persistent(
        "SynthesisNetwork",
        {"w_dim": config.w_dim, "img_resolution": config.resolution, "img_channels": 3},
        num_ws=config.num_ws, num_layers=config.num_layers, num_critical=config.num_critical,
        margin_size=config.margin_size, output_scale=config.output_scale, num_fp16_res=4,
        layer_names=[spec.name for spec in specs],
    )  # fmt: skip
    synthesis.input = inputs
    for spec in specs:
        prefix = f"synthesis.{spec.name}"
        layer = persistent(
            "SynthesisLayer",
            {"w_dim": config.w_dim, "is_torgb": spec.is_torgb, "is_critically_sampled": spec.is_critically_sampled,
             "use_fp16": False, "in_channels": spec.in_channels, "out_channels": spec.out_channels,
             "in_size": spec.in_size, "out_size": spec.out_size, "in_sampling_rate": spec.in_sampling_rate,
             "out_sampling_rate": spec.out_sampling_rate, "in_cutoff": np.float64(spec.in_cutoff),
             "out_cutoff": np.float64(spec.out_cutoff), "in_half_width": np.float64(spec.in_half_width),
             "out_half_width": np.float64(spec.out_half_width), "conv_kernel": spec.conv_kernel,
             "use_radial_filters": config.use_radial_filters, "conv_clamp": config.conv_clamp,
             "magnitude_ema_beta": 0.999},
            in_size=np.broadcast_to(np.asarray(spec.in_size), [2]),
            out_size=np.broadcast_to(np.asarray(spec.out_size), [2]),
            up_factor=spec.up_factor, down_factor=spec.down_factor, up_taps=spec.up_taps,
            down_taps=spec.down_taps, down_radial=spec.down_radial, padding=list(spec.padding),
        )  # fmt: skip
        layer.affine = affine(f"{prefix}.affine")
        layer.weight, layer.bias = parameter(state, f"{prefix}.weight"), parameter(state, f"{prefix}.bias")
        layer.register_buffer("magnitude_ema", state[f"{prefix}.magnitude_ema"].clone())
        for name in ("up_filter", "down_filter"):
            layer.register_buffer(name, state[f"{prefix}.{name}"].clone() if f"{prefix}.{name}" in state else None)
        setattr(synthesis, spec.name, layer)
    mapping = persistent(
        "MappingNetwork",
        {"z_dim": config.z_dim, "c_dim": config.c_dim, "w_dim": config.w_dim, "num_ws": config.num_ws},
        num_layers=config.mapping_layers,
        w_avg_beta=0.998,
        embed=None,
    )
    if config.c_dim:
        mapping.embed = affine("mapping.embed")
    for i in range(config.mapping_layers):
        setattr(mapping, f"fc{i}", affine(f"mapping.fc{i}", 0.01, "lrelu"))
    mapping.register_buffer("w_avg", state["mapping.w_avg"].clone())
    init = {key: value for key, value in options.items() if key != "mapping_kwargs"}
    init |= {"mapping_kwargs": EasyDict(options["mapping_kwargs"]), "magnitude_ema_beta": 0.999, "num_fp16_res": 4}
    g = persistent("Generator", {key: options[key] for key in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")})
    g._init_kwargs, g.num_ws = init, config.num_ws
    g.synthesis, g.mapping = synthesis, mapping
    return g


def dump_nvidia(
    path: Path, content: Any, monkeypatch: pytest.MonkeyPatch, *, protocol: int = 4
) -> Path:
    """Pickle with `torch_utils.persistence` / `dnnlib.util` stand-ins present only meanwhile."""
    stand_ins: dict[str, dict[str, Any]] = {
        "torch_utils": {},
        "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
        "dnnlib": {},
        "dnnlib.util": {"EasyDict": EasyDict},
    }
    with monkeypatch.context() as patch:
        for name, attrs in stand_ins.items():
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            patch.setitem(sys.modules, name, module)
        path.write_bytes(pickle.dumps(content, protocol=protocol))
    assert "torch_utils.persistence" not in sys.modules  # the loader cannot lean on the stand-in
    return path
