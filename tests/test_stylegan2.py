"""StyleGAN2 generator: its maths against direct formulations, and the latent contracts.

The generators here are small (16 px, at most 32 channels) with random weights, so every test runs
in well under a second on a CPU. Comparisons with upstream file layouts are in
test_stylegan2_checkpoints.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError, ImageError
from pipeline.generators.base import to_uint8
from pipeline.generators.stylegan2 import (
    StyleGAN2Config,
    StyleGAN2Generator,
    channels_nvidia,
    channels_rosinality,
    make_filter,
    modulated_conv2d,
    upfirdn2d,
)
from stylegan2_fixtures import small_config, small_generator


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# Maths against direct formulations


def direct_upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int, pad: tuple[int, int], gain: float
) -> torch.Tensor:
    """upfirdn2d spelled out: zero insertion, zero padding, then a sum over the flipped taps."""
    batch, channels, height, width = x.shape
    upsampled = torch.zeros(batch, channels, height * up, width * up, dtype=x.dtype)
    upsampled[:, :, ::up, ::up] = x
    size_y, size_x = height * up + sum(pad), width * up + sum(pad)
    padded = torch.zeros(batch, channels, size_y, size_x, dtype=x.dtype)
    padded[:, :, pad[0] : pad[0] + height * up, pad[0] : pad[0] + width * up] = upsampled
    taps_y, taps_x = kernel.shape
    out_y, out_x = size_y - taps_y + 1, size_x - taps_x + 1
    out = torch.zeros(batch, channels, out_y, out_x, dtype=x.dtype)
    for i in range(taps_y):
        for j in range(taps_x):
            # Convolution: output (y, x) takes input (y + i, x + j) times tap (taps - 1 - i, ...).
            weight = kernel[taps_y - 1 - i, taps_x - 1 - j] * gain
            out += weight * padded[:, :, i : i + out_y, j : j + out_x]
    return out


@pytest.mark.parametrize(("up", "pad"), [(1, (1, 1)), (2, (2, 1)), (2, (1, 1))])
def test_upfirdn2d_matches_the_direct_definition(up: int, pad: tuple[int, int]) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    kernel = make_filter([1, 2, 3, 4]).double()  # asymmetric, so a missing flip would show
    expected = direct_upfirdn2d(x, kernel, up, pad, gain=up**2)
    torch.testing.assert_close(upfirdn2d(x, kernel, up=up, pad=pad, gain=up**2), expected)


def per_sample_modulated_conv(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, up: bool
) -> torch.Tensor:
    """One sample at a time, following the paper's equations; upsampling done the other way round.

    With `up`, the input is first upsampled with the FIR filter (upfirdn2d, gain 4) and then
    convolved (true convolution, no padding): NVIDIA's generic reference path, which equals a
    transposed convolution followed by the blur because both are linear shift-invariant.
    """
    outputs = []
    for n in range(x.shape[0]):
        kernel = weight * styles[n][None, :, None, None]  # w'_ijk = s_i * w_ijk
        if demodulate:  # w''_ijk = w'_ijk / sqrt(sum_ik w'_ijk^2 + eps)
            kernel = kernel / (kernel.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        sample = x[n : n + 1]
        if up:
            sample = direct_upfirdn2d(
                sample, make_filter([1, 3, 3, 1]).to(x.dtype), 2, (3, 2), gain=4
            )
            outputs.append(F.conv2d(sample, kernel.flip([2, 3])))
        else:
            outputs.append(F.conv2d(sample, kernel, padding=kernel.shape[-1] // 2))
    return torch.cat(outputs)


@pytest.mark.parametrize("up", [False, True])
@pytest.mark.parametrize("demodulate", [True, False])
def test_grouped_modulated_conv_matches_a_per_sample_loop(up: bool, demodulate: bool) -> None:
    torch.manual_seed(2)
    x = torch.randn(4, 6, 8, 8, dtype=torch.float64)
    weight = torch.randn(5, 6, 3, 3, dtype=torch.float64)
    styles = torch.randn(4, 6, dtype=torch.float64)
    up_filter = make_filter([1, 3, 3, 1]).double() if up else None
    got = modulated_conv2d(x, weight, styles, demodulate=demodulate, up_filter=up_filter)
    assert got.shape == (4, 5, 16, 16) if up else (4, 5, 8, 8)
    torch.testing.assert_close(got, per_sample_modulated_conv(x, weight, styles, demodulate, up))


def test_mapping_matches_the_direct_formula() -> None:
    generator = small_generator()
    config = generator.config
    z = torch.randn(3, config.z_dim)
    x = z / z.square().mean(dim=1, keepdim=True).add(1e-8).sqrt()
    for i in range(config.mapping_layers):
        layer = getattr(generator.mapping, f"fc{i}")
        lr = config.mapping_lr_multiplier
        scaled = x @ (layer.weight * lr / math.sqrt(x.shape[1])).T + layer.bias * lr
        x = F.leaky_relu(scaled, 0.2) * math.sqrt(2)
    torch.testing.assert_close(generator.mapping.to_w(z), x)


# --------------------------------------------------------------------------------------------
# Latent contracts


def test_truncation_with_psi_zero_gives_the_w_average() -> None:
    generator = small_generator(truncation_psi=0.0)
    latents = generator.sample_latents([0, 1, 2])
    torch.testing.assert_close(latents, generator.mapping.w_avg.expand_as(latents), rtol=0, atol=0)


def test_truncation_cutoff_leaves_the_fine_layers_untouched() -> None:
    generator = small_generator()
    z = torch.randn(2, generator.config.z_dim)
    full = generator.mapping(z)
    cut = generator.mapping(z, psi=0.5, cutoff=4)
    w_avg = generator.mapping.w_avg
    torch.testing.assert_close(cut[:, :4], w_avg + 0.5 * (full[:, :4] - w_avg))
    torch.testing.assert_close(cut[:, 4:], full[:, 4:], rtol=0, atol=0)


def test_w_plus_with_equal_rows_renders_as_w() -> None:
    generator = small_generator()
    w = generator.mapping.to_w(torch.randn(2, generator.config.z_dim)).detach()
    rows = w[:, None].repeat(1, generator.num_ws, 1)
    assert torch.equal(generator.synthesize(generator.broadcast_w(w)), generator.synthesize(rows))


def test_same_seed_gives_the_same_image_for_batch_sizes_1_and_8() -> None:
    """Latents must be bit-identical; uint8 renders identical; floats within 1e-5."""
    generator = small_generator()
    seeds = list(range(100, 108))
    batched = generator.sample_latents(seeds)
    single = torch.cat([generator.sample_latents([seed]) for seed in seeds])
    assert torch.equal(batched, single)
    with torch.no_grad():
        images_batched = generator.synthesize(batched)
        images_single = torch.cat([generator.synthesize(single[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(images_batched, images_single, rtol=0, atol=1e-5)
    assert torch.equal(to_uint8(images_batched), to_uint8(images_single))


def test_output_stays_within_the_unit_range() -> None:
    generator = small_generator()
    with torch.no_grad():
        images = generator.synthesize(generator.sample_latents(range(4)) * 20)
    assert images.shape == (4, 3, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    assert (images.abs() == 1).any()  # the raw output did exceed the range: the clamp is live


def test_gradients_reach_the_latents() -> None:
    generator = small_generator().requires_grad_(False)
    latents = generator.sample_latents([3, 4]).requires_grad_(True)
    generator.synthesize(latents).square().mean().backward()
    assert latents.grad is not None
    assert torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0


def test_noise_modes() -> None:
    generator = small_generator()
    latents = generator.sample_latents([5, 6])
    with torch.no_grad():
        const = generator.synthesize(latents)
        assert torch.equal(const, generator.synthesize(latents))
        assert not torch.equal(const, generator.synthesize(latents, noise_mode="none"))
        seeded = generator.synthesize(latents, noise_mode="random", noise_seeds=[1, 2])
        assert torch.equal(
            seeded, generator.synthesize(latents, noise_mode="random", noise_seeds=[1, 2])
        )
        alone = generator.synthesize(latents[1:], noise_mode="random", noise_seeds=[2])
        torch.testing.assert_close(seeded[1:], alone, rtol=0, atol=1e-5)
        assert not torch.equal(
            seeded, generator.synthesize(latents, noise_mode="random", noise_seeds=[3, 4])
        )
        fresh = generator.synthesize(latents, noise_mode="random")
        assert not torch.equal(fresh, generator.synthesize(latents, noise_mode="random"))


def test_bad_latents_are_refused_with_expected_and_actual_shapes() -> None:
    generator = small_generator()
    with pytest.raises(ImageError, match=r"expected shape \(N, 6, 32\), got \(2, 7, 32\)"):
        generator.synthesize(torch.zeros(2, 7, 32))
    with pytest.raises(ImageError, match=r"w: expected shape \(N, 32\), got \(2, 6, 32\)"):
        generator.broadcast_w(torch.zeros(2, 6, 32))
    with pytest.raises(ImageError, match=r"z: expected shape \(N, 32\), got \(2, 24\)"):
        generator.mapping(torch.zeros(2, 24))
    with pytest.raises(ImageError, match="floating-point"):
        generator.synthesize(torch.zeros(2, 6, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match="one seed per latent"):
        generator.synthesize(torch.zeros(2, 6, 32), noise_mode="random", noise_seeds=[1])
    with pytest.raises(ValueError, match="only used with noise_mode='random'"):
        generator.synthesize(torch.zeros(2, 6, 32), noise_seeds=[1, 2])


# --------------------------------------------------------------------------------------------
# Configuration


def test_both_channel_conventions_describe_config_f() -> None:
    assert channels_rosinality(1024, channel_multiplier=2) == channels_nvidia(1024)
    assert channels_nvidia(256) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}


def test_ffhq_config_f_has_the_published_size() -> None:
    config = StyleGAN2Config.ffhq_config_f()
    with torch.device("meta"):
        generator = StyleGAN2Generator(config)
    assert generator.latent_shape == (18, 512)
    # NVIDIA's network summary lists 30,370,060 parameters for the FFHQ 1024x1024 generator.
    assert sum(p.numel() for p in generator.parameters()) == 30_370_060


def test_config_round_trips_and_refuses_unknown_keys() -> None:
    config = small_config(conv_clamp=256.0)
    assert StyleGAN2Config.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"unknown keys \['fmaps'\]"):
        StyleGAN2Config.from_dict({**config.to_dict(), "fmaps": 1})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"resolution": 24}, "power of two"),
        ({"channels": {4: 8, 8: 8}}, "one entry per resolution"),
        ({"mapping_lr_multiplier": 0.0}, "mapping_lr_multiplier"),
        ({"conv_clamp": -1.0}, "conv_clamp"),
    ],
)
def test_bad_configs_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small_config(**overrides)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"truncation_cutoff": 0}, "truncation_cutoff"),
        ({"truncation_psi": float("nan")}, "truncation_psi"),
        ({"noise_mode": "fresh"}, "noise_mode"),
    ],
)
def test_bad_generator_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StyleGAN2Generator(small_config(), **options)  # type: ignore[arg-type]
