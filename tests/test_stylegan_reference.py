"""StyleGAN3 and conditional generators render what NVIDIA's own code renders.

`data/stylegan_reference.npz` holds small random networks built, randomised and rendered by
NVlabs/stylegan3 (`data/make_stylegan_reference.py`): configs T and R at 64 px, T at 256 px, T with
a moved input (translation and rotation), and conditional StyleGAN3-T and StyleGAN2 networks. Each
is written here as an NVIDIA pickle (persistence records named and shaped as NVIDIA's modules are)
from NVIDIA's state dict, loaded by exprlock and rendered from NVIDIA's W+ latents.
"""

from __future__ import annotations

import json
import pickle
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from nvidia_fixtures import EasyDict, Persistent, dump_nvidia, fully_connected, nvidia_generator, persistent
from pipeline.errors import CheckpointError
from pipeline.generators.checkpoints import convert_checkpoint, load_stylegan, read_checkpoint
from pipeline.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator, channels_nvidia
from pipeline.generators.stylegan3 import StyleGAN3Config, StyleGAN3Generator

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = Path(__file__).parent / "data" / "stylegan_reference.npz"
STYLEGAN3_CASES = ["t64", "t64_moved", "r64", "t256", "t64_conditional"]


@cache
def reference(name: str) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """(meta, NVIDIA state dict, arrays z / ws / images) of one stored case."""
    with np.load(REFERENCE) as data:
        meta = json.loads(str(data[f"{name}/meta"]))
        prefix = f"{name}/state/"
        state = {key[len(prefix):]: torch.from_numpy(data[key].copy()) for key in data.files if key.startswith(prefix)}
        arrays = {part: torch.from_numpy(data[f"{name}/{part}"].copy()) for part in ("z", "ws", "images")}
    return meta, state, arrays


def stylegan3_config(meta: dict[str, Any]) -> StyleGAN3Config:
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
    """G_ema as NVIDIA's networks_stylegan3.py builds it, holding NVIDIA's tensors."""
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


def class_of(meta: dict[str, Any], row: int) -> int | None:
    """Rows of a conditional case take the classes in turn (one-hot c = eye(c_dim), repeated)."""
    c_dim = meta["options"]["c_dim"]
    return row % c_dim if c_dim else None


@pytest.mark.parametrize("name", STYLEGAN3_CASES)
def test_stylegan3_pickle_renders_as_nvidia_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    meta, state, arrays = reference(name)
    path = dump_nvidia(tmp_path / "g.pkl", {"G_ema": nvidia_stylegan3(meta, state), "G": None, "D": None}, monkeypatch)
    checkpoint = read_checkpoint(path)
    assert (checkpoint.family, checkpoint.config) == ("stylegan3", stylegan3_config(meta))
    expected = arrays["images"].clamp(-1, 1)
    for row in range(expected.shape[0]):
        loaded = load_stylegan(path, truncation_psi=meta["psi"], truncation_cutoff=meta["cutoff"], class_index=class_of(meta, row))
        assert isinstance(loaded, StyleGAN3Generator)
        with torch.no_grad():
            ws = loaded.mapping(arrays["z"][row : row + 1], loaded.class_vector(1), psi=meta["psi"], cutoff=meta["cutoff"])
            torch.testing.assert_close(ws, arrays["ws"][row : row + 1], rtol=1e-5, atol=1e-5)
            image = loaded.synthesize(arrays["ws"][row : row + 1])
        assert (image - expected[row : row + 1]).abs().max() < 1e-3


def test_input_transform_is_the_one_nvidia_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, state, _ = reference("t64_moved")
    generator = StyleGAN3Generator(stylegan3_config(meta))
    generator.set_input_transform(translate=meta["translate"], rotate=meta["rotate"])
    torch.testing.assert_close(generator.synthesis.input.transform, state["synthesis.input.transform"])


def test_every_pickle_protocol_renders_stylegan3_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, state, arrays = reference("r64")
    record = {"G_ema": nvidia_stylegan3(meta, state), "G": None, "D": None}
    rendered = []
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        path = dump_nvidia(tmp_path / f"p{protocol}.pkl", record, monkeypatch, protocol=protocol)
        with torch.no_grad():
            rendered.append(load_stylegan(path).synthesize(arrays["ws"]))
    assert all(torch.equal(image, rendered[0]) for image in rendered[1:])


def test_stylegan3_converts_to_safetensors_and_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, state, arrays = reference("t64_conditional")
    source = dump_nvidia(tmp_path / "g.pkl", {"G_ema": nvidia_stylegan3(meta, state)}, monkeypatch)
    target = convert_checkpoint(source, tmp_path / "g.safetensors")
    converted, original = load_stylegan(target, class_index=2), load_stylegan(source, class_index=2)
    assert converted.describe() | {"format": None} == original.describe() | {"format": None}
    assert converted.describe()["family"] == "StyleGAN3-T" and converted.describe()["format"] == "safetensors"
    with torch.no_grad():
        assert torch.equal(converted.synthesize(arrays["ws"]), original.synthesize(arrays["ws"]))
    assert torch.equal(converted.sample_latents([5]), original.sample_latents([5]))


def test_layers_that_differ_from_the_recorded_options_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, state, _ = reference("t64")
    g_ema: Any = nvidia_stylegan3(meta, state)
    name = g_ema.synthesis.layer_names[3]
    getattr(g_ema.synthesis, name).padding = [0, 0, 0, 0]
    path = dump_nvidia(tmp_path / "g.pkl", {"G_ema": g_ema}, monkeypatch)
    with pytest.raises(CheckpointError, match=rf"G_ema.synthesis.{name}.padding is \[0, 0, 0, 0\], expected \[\d+, \d+, \d+, \d+\]"):
        load_stylegan(path)
    g_ema = nvidia_stylegan3(meta, state)
    g_ema._init_kwargs["pixel_norm"] = True
    path = dump_nvidia(tmp_path / "option.pkl", {"G_ema": g_ema}, monkeypatch)
    with pytest.raises(CheckpointError, match=r"G_ema option 'pixel_norm' is not supported"):
        load_stylegan(path)


def test_conditional_stylegan2_renders_each_class_as_nvidia_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, state, arrays = reference("sg2_32_conditional")
    options = meta["options"]
    config = StyleGAN2Config(
        resolution=options["img_resolution"],
        channels=channels_nvidia(options["img_resolution"], options["channel_base"], options["channel_max"]),
        z_dim=options["z_dim"],
        w_dim=options["w_dim"],
        mapping_layers=options["mapping_kwargs"]["num_layers"],
        c_dim=options["c_dim"],
        conv_clamp=None,
    )
    ours = StyleGAN2Generator(config, class_index=0)
    ours.load_state_dict({key: value for key, value in state.items() if not key.endswith("resample_filter")})
    g_ema = nvidia_generator(ours, channel_base=options["channel_base"], channel_max=options["channel_max"])
    path = dump_nvidia(tmp_path / "g.pkl", {"G_ema": g_ema}, monkeypatch)
    for row in range(arrays["z"].shape[0]):
        loaded = load_stylegan(path, truncation_psi=meta["psi"], truncation_cutoff=meta["cutoff"], class_index=class_of(meta, row))
        with torch.no_grad():
            ws = loaded.mapping(arrays["z"][row : row + 1], loaded.class_vector(1), psi=meta["psi"], cutoff=meta["cutoff"])
            torch.testing.assert_close(ws, arrays["ws"][row : row + 1], rtol=1e-5, atol=1e-5)
            image = loaded.synthesize(arrays["ws"][row : row + 1], noise_mode="const")
        assert (image - arrays["images"][row : row + 1].clamp(-1, 1)).abs().max() < 1e-5
