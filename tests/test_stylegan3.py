"""StyleGAN3's operations against their direct definitions, and the generator's contract.

Parity with NVIDIA's own code is in test_stylegan_reference.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError, ImageError
from pipeline.generators.stylegan3 import StyleGAN3Config, StyleGAN3Generator, filtered_lrelu, lowpass_filter

pytestmark = pytest.mark.usefixtures("one_thread")


def direct_filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp):  # type: ignore[no-untyped-def]
    """The definition step by step: bias, zero insertion, pad or crop, 2-D convolution with the
    outer product of the taps, leaky ReLU, gain, clamp, 2-D convolution, decimation."""
    x = x + b[None, :, None, None]
    n, c, h, w = x.shape
    stuffed = torch.zeros(n, c, h * up, w * up)
    stuffed[:, :, ::up, ::up] = x
    left, right, top, bottom = padding
    x = F.pad(stuffed, [left, right, top, bottom])

    def convolve(signal: torch.Tensor, taps: torch.Tensor | None, scale: float) -> torch.Tensor:
        kernel = torch.ones(1, 1) if taps is None else (taps.outer(taps) if taps.ndim == 1 else taps)
        kernel = (kernel * scale).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
        return F.conv2d(signal, kernel, groups=c)

    x = convolve(x, fu, up * up)
    x = torch.where(x >= 0, x, x * slope) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return convolve(x, fd, 1.0)[:, :, ::down, ::down]


@pytest.mark.parametrize(
    ("up", "down", "padding", "radial"),
    [(2, 2, (5, 4, 5, 4), False), (2, 1, (11, 10, 11, 10), False), (1, 2, (-1, -2, -1, -2), True), (4, 2, (3, 7, 3, 7), False)],
)
def test_filtered_lrelu_matches_the_direct_definition(
    up: int, down: int, padding: tuple[int, int, int, int], radial: bool
) -> None:
    torch.manual_seed(0)
    x, bias = torch.randn(2, 3, 16, 16), torch.randn(3)
    fu = lowpass_filter(6 * up, 3.0, 2.0, 8 * up) if up > 1 else None
    fd = lowpass_filter(6 * down, 2.5, 2.0, 8 * up, radial=radial) if down > 1 else None
    options = {"up": up, "down": down, "padding": padding, "gain": math.sqrt(2), "slope": 0.2, "clamp": 1.5}
    got = filtered_lrelu(x, up_filter=fu, down_filter=fd, bias=bias, **options)
    expected = direct_filtered_lrelu(x, fu, fd, bias, **options)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def small(**options: object) -> StyleGAN3Generator:
    torch.manual_seed(0)
    config = StyleGAN3Config.config_t(32, z_dim=16, w_dim=16, channel_base=256, channel_max=8, **options)  # type: ignore[arg-type]
    generator = StyleGAN3Generator(config)
    with torch.no_grad():
        generator.synthesis.input.affine.weight.normal_(0, 0.3)
    return generator.eval()


def test_a_latent_renders_the_same_alone_and_in_a_batch() -> None:
    generator = small()
    latents = generator.sample_latents([3, 4, 5])
    with torch.no_grad():
        alone = generator.synthesize(latents[1:2])
        batch = generator.synthesize(latents)
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def test_gradients_reach_the_latents_and_w_plus_rows_act_separately() -> None:
    generator = small()
    latents = generator.sample_latents([0]).requires_grad_(True)
    generator.synthesize(latents).square().mean().backward()
    assert latents.grad is not None and (latents.grad.abs().sum(dim=2) > 0).all()
    assert torch.equal(generator.broadcast_w(latents[:, 0].detach()), latents[:, :1].detach().expand(-1, generator.num_ws, -1))


def test_moving_the_input_translates_the_image() -> None:
    """Config T is translation-equivariant: a shift of the Fourier input by a whole number of
    pixels moves the image by that much (away from the borders, up to aliasing)."""
    generator = small()
    latents = generator.sample_latents([1])
    with torch.no_grad():
        still = generator.synthesize(latents)
        generator.set_input_transform(translate=(4 / 32, 0.0))
        moved = generator.synthesize(latents)
    inner = (slice(None), slice(None), slice(8, 24))
    shifted_error = (moved[..., 12:24][inner] - still[..., 8:20][inner]).abs().mean()
    unshifted_error = (moved[inner] - still[inner]).abs().mean()
    assert shifted_error < 0.5 * unshifted_error


def test_configs_t_and_r_and_bad_configs() -> None:
    assert StyleGAN3Config.config_t(1024).name == "T" and StyleGAN3Config.config_r(1024).name == "R"
    r = StyleGAN3Config.config_r(256)
    assert (r.channel_base, r.channel_max, r.conv_kernel) == (65536, 1024, 1)
    assert StyleGAN3Config.from_dict(r.to_dict()) == r
    assert StyleGAN3Config.config_t(1024).num_ws == 16
    with pytest.raises(ConfigError, match=r"resolution: expected a power of two >= 4, got 100"):
        StyleGAN3Config(resolution=100)
    with pytest.raises(ConfigError, match=r"unknown keys \['blur_kernel'\]"):
        StyleGAN3Config.from_dict(r.to_dict() | {"blur_kernel": [1, 3, 3, 1]})
    with pytest.raises(ImageError, match=r"latents: expected shape \(N, 16, 16\)"):
        small().synthesize(torch.zeros(1, 18, 16))


@pytest.mark.parametrize("make", [StyleGAN3Config.config_t, StyleGAN3Config.config_r])
def test_backward_with_onednn_equals_the_native_kernels(make) -> None:  # type: ignore[no-untyped-def]
    """Editor training backpropagates through the channels-last strided filters with oneDNN on."""
    torch.manual_seed(0)
    generator = StyleGAN3Generator(make(32, z_dim=16, w_dim=16, channel_base=256, channel_max=8)).eval()
    latents = generator.sample_latents([0, 1]).requires_grad_(True)
    generator.synthesize(latents).square().mean().backward()
    assert latents.grad is not None
    onednn, latents.grad = latents.grad.clone(), None
    with torch.backends.mkldnn.flags(enabled=False):
        generator.synthesize(latents).square().mean().backward()
    assert ((onednn - latents.grad).norm() / latents.grad.norm()) < 1e-4


@pytest.mark.parametrize("family", ["stylegan2", "stylegan3"])
def test_a_saved_generator_loads_back_to_the_same_network(tmp_path, family: str) -> None:
    """`save_generator` writes a module (here one built with random weights, as the GPU
    benchmark does) that `load_stylegan` reads back bit for bit, conditional class included."""
    from pipeline.errors import CheckpointError
    from pipeline.generators.checkpoints import load_stylegan, save_generator
    from stylegan2_fixtures import small_config, small_generator

    if family == "stylegan3":
        torch.manual_seed(0)
        config = StyleGAN3Config.config_r(32, z_dim=16, w_dim=16, channel_base=256, channel_max=8, c_dim=3)
        generator = StyleGAN3Generator(config, class_index=2).eval()
    else:
        generator = small_generator(small_config(c_dim=3), class_index=2)
    path = save_generator(generator, tmp_path / "g.safetensors")
    loaded = load_stylegan(path, class_index=2)
    assert type(loaded) is type(generator) and loaded.config == generator.config
    latents = generator.sample_latents([0, 1])
    assert torch.equal(loaded.sample_latents([0, 1]), latents)
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(latents), generator.synthesize(latents))
    with pytest.raises(CheckpointError, match="already exists"):
        save_generator(generator, path)
