"""Small StyleGAN2 generators with random weights, and rosinality checkpoints of them.

Small enough (16 or 32 px, at most 32 channels) that rendering, training and scoring take well
under a second per batch on a CPU, yet built and saved exactly like a released network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pipeline.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator, channels_nvidia

RESOLUTION = 16
CHANNEL_BASE, CHANNEL_MAX = 256, 32


def small_config(**overrides: object) -> StyleGAN2Config:
    resolution = int(overrides.pop("resolution", RESOLUTION))  # type: ignore[call-overload]
    options: dict[str, object] = {
        "resolution": resolution,
        "channels": channels_nvidia(resolution, CHANNEL_BASE, CHANNEL_MAX),
        "z_dim": 32,
        "w_dim": 32,
        "mapping_layers": 2,
    }
    options.update(overrides)
    return StyleGAN2Config(**options)  # type: ignore[arg-type]


def small_generator(config: StyleGAN2Config | None = None, *, seed: int = 0, **options: object) -> StyleGAN2Generator:
    """Random weights with visible noise, a non-zero W average and images mostly inside [-1, 1]."""
    torch.manual_seed(seed)
    generator = StyleGAN2Generator(config or small_config(), **options)  # type: ignore[arg-type]
    with torch.no_grad():
        for layer in generator.synthesis.layers():
            layer.noise_strength.fill_(0.3)
        for block in generator.synthesis.blocks():
            block.torgb.weight.mul_(0.2)
        generator.mapping.w_avg.normal_()
    return generator.eval()


def rosinality_kernel() -> Tensor:
    """rosinality's `make_kernel([1, 3, 3, 1]) * factor**2`, stored in every blur/upsample."""
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = taps[None, :] * taps[:, None]
    return kernel / kernel.sum() * 4


def rosinality_state_dict(generator: StyleGAN2Generator) -> dict[str, Tensor]:
    """`Generator.state_dict()` of rosinality's model.py for the same weights."""
    ours = generator.state_dict()
    config = generator.config
    state: dict[str, Tensor] = {}
    for i in range(config.mapping_layers):
        state[f"style.{i + 1}.weight"] = ours[f"mapping.fc{i}.weight"]
        state[f"style.{i + 1}.bias"] = ours[f"mapping.fc{i}.bias"]
    state["input.input"] = ours["synthesis.b4.const"][None]

    def styled_conv(name: str, layer: str, noise: int, upsample: bool) -> None:
        state[f"{name}.conv.weight"] = ours[f"{layer}.weight"][None]
        state[f"{name}.conv.modulation.weight"] = ours[f"{layer}.affine.weight"]
        state[f"{name}.conv.modulation.bias"] = ours[f"{layer}.affine.bias"]
        if upsample:
            state[f"{name}.conv.blur.kernel"] = rosinality_kernel()
        state[f"{name}.noise.weight"] = ours[f"{layer}.noise_strength"].reshape(1)
        state[f"{name}.activate.bias"] = ours[f"{layer}.bias"]
        state[f"noises.noise_{noise}"] = ours[f"{layer}.noise_const"][None, None]

    def to_rgb(name: str, layer: str, upsample: bool) -> None:
        if upsample:
            state[f"{name}.upsample.kernel"] = rosinality_kernel()
        state[f"{name}.bias"] = ours[f"{layer}.bias"].reshape(1, 3, 1, 1)
        state[f"{name}.conv.weight"] = ours[f"{layer}.weight"][None]
        state[f"{name}.conv.modulation.weight"] = ours[f"{layer}.affine.weight"]
        state[f"{name}.conv.modulation.bias"] = ours[f"{layer}.affine.bias"]

    styled_conv("conv1", "synthesis.b4.conv1", 0, upsample=False)
    to_rgb("to_rgb1", "synthesis.b4.torgb", upsample=False)
    for k, res in enumerate(config.block_resolutions[1:]):
        styled_conv(f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1, upsample=True)
        styled_conv(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2, upsample=False)
        to_rgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb", upsample=True)
    return {key: value.clone() for key, value in state.items()}


def save_rosinality(generator: StyleGAN2Generator, path: Path) -> Path:
    """The converted-weights file rosinality's convert_weight.py writes (`g_ema`, `latent_avg`)."""
    torch.save({"g_ema": rosinality_state_dict(generator), "latent_avg": generator.mapping.w_avg.clone()}, path)
    return path
