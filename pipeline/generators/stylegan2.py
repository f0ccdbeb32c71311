"""StyleGAN2 generator in plain PyTorch, for the `ffhq` profile.

Karras, Laine, Aittala, Hellsten, Lehtinen and Aila, "Analyzing and Improving the Image Quality of
StyleGAN", CVPR 2020 (arXiv:1912.04958): the config E/F generator, i.e. a mapping network from z to
w, a synthesis network of modulated and demodulated 3x3 convolutions on a learned 4x4 constant, with
per-layer noise and skip-connected toRGB outputs.

The maths follows NVIDIA's PyTorch reference (NVlabs/stylegan2-ada-pytorch `training/networks.py`,
the same network as NVlabs/stylegan3 `training/networks_stylegan2.py`) and
rosinality/stylegan2-pytorch `model.py`. Parameter names are NVIDIA's (`mapping.fc0.weight`,
`synthesis.b8.conv0.affine.bias`, ...), so an NVIDIA state maps one to one;
`pipeline.generators.stylegan2_checkpoints` maps rosinality's names; `pipeline.generators.checkpoints`
reads every file format.
There is no compiled extension: resampling is upfirdn2d written with `F.pad` and `F.conv2d`, and
each modulated convolution runs as one grouped convolution over the whole batch. Everything is
computed in float32; NVIDIA's code runs the highest resolutions in float16 on CUDA when a network
was trained that way, so its CUDA images differ in the last bits.

Latent spaces: Z (`z_dim`, standard normal), W (`w_dim`, output of the mapping network) and W+
(`num_ws` rows of W: one per convolution, plus one for the last toRGB; every other toRGB shares
the row of the convolution after it). W+ is the editing latent: `latent_shape` is
`(num_ws, w_dim)`.

No weights ship with exprlock. The FFHQ config-f weights (NVIDIA's `stylegan2-ffhq-1024x1024.pkl`,
or rosinality's conversion `stylegan2-ffhq-config-f.pt`) are under the NVIDIA Source Code
License-NC, for non-commercial use only; datasets generated from them carry that restriction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import ConfigError, ImageError
from pipeline.generators.base import seeded_normal
from pipeline.generators.mapping import (
    LRELU_GAIN,
    LRELU_SLOPE,
    EqualizedLinear,
    MappedGenerator,
)

NoiseMode = Literal["const", "random", "none"]
"""Per-layer noise: the generator's stored noise images, fresh Gaussian noise, or no noise."""

_DEMOD_EPS = 1e-8


# --------------------------------------------------------------------------------------------
# Architecture description


def channels_rosinality(resolution: int, channel_multiplier: int = 2) -> dict[int, int]:
    """Feature maps per resolution as rosinality's `Generator` sets them (config-f: 2)."""
    table = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }
    if resolution not in table:
        raise ConfigError(f"resolution: rosinality channels exist for 4..1024, got {resolution}")
    return {res: ch for res, ch in table.items() if res <= resolution}


def channels_nvidia(
    resolution: int, channel_base: int = 32768, channel_max: int = 512
) -> dict[int, int]:
    """Feature maps per resolution as NVIDIA sets them: `min(channel_base // res, channel_max)`.

    The defaults are config-f (`fmap_base` 16384 in the TensorFlow code, doubled on conversion).
    """
    _check_resolution(resolution)
    return {
        2**i: min(channel_base // 2**i, channel_max)
        for i in range(2, int(math.log2(resolution)) + 1)
    }


@dataclass(frozen=True)
class StyleGAN2Config:
    """Everything that fixes the generator's tensors and its maths.

    Attributes:
        resolution: side of the square output image, a power of two >= 4.
        channels: feature maps of the synthesis block at each resolution 4, 8, ..., `resolution`
            (see `channels_rosinality` and `channels_nvidia`).
        z_dim: size of the input latent z.
        w_dim: size of the intermediate latent w (and of each W+ row).
        mapping_layers: fully connected layers in the mapping network.
        mapping_lr_multiplier: learning-rate multiplier of the mapping layers; it also scales
            their weights at run time, so it must match the checkpoint (0.01 in both references).
        blur_kernel: 1-D taps of the separable low-pass filter used when upsampling.
        conv_clamp: clamp of every layer output to +-value, as NVIDIA networks trained with
            mixed precision do (256); None means no clamping (TensorFlow-converted and rosinality
            networks).
        c_dim: classes of a conditional generator (embedded and concatenated to z by the
            mapping network), 0 for an unconditional one.
    """

    resolution: int
    channels: Mapping[int, int]
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    blur_kernel: tuple[float, ...] = (1, 3, 3, 1)
    conv_clamp: float | None = None
    c_dim: int = 0

    def __post_init__(self) -> None:
        _check_resolution(self.resolution)
        channels = {int(res): int(ch) for res, ch in dict(self.channels).items()}
        expected = [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]
        if sorted(channels) != expected:
            raise ConfigError(
                f"channels: expected one entry per resolution {expected}, got {sorted(channels)}"
            )
        if min(channels.values()) < 1:
            raise ConfigError(f"channels: expected positive counts, got {channels}")
        object.__setattr__(self, "channels", MappingProxyType(dict(sorted(channels.items()))))
        object.__setattr__(self, "blur_kernel", tuple(float(tap) for tap in self.blur_kernel))
        for name in ("z_dim", "w_dim", "mapping_layers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if int(self.c_dim) < 0:
            raise ConfigError(f"c_dim: expected 0 or a positive integer, got {self.c_dim}")
        if not self.mapping_lr_multiplier > 0:
            raise ConfigError(
                f"mapping_lr_multiplier: expected > 0, got {self.mapping_lr_multiplier}"
            )
        if not self.blur_kernel or sum(self.blur_kernel) == 0:
            raise ConfigError(
                f"blur_kernel: expected taps with a non-zero sum, got {self.blur_kernel}"
            )
        if self.conv_clamp is not None and not self.conv_clamp > 0:
            raise ConfigError(
                f"conv_clamp: expected None or a positive number, got {self.conv_clamp}"
            )

    @classmethod
    def ffhq_config_f(cls) -> StyleGAN2Config:
        """The FFHQ 1024x1024 config-f network (512-d z and w, 8 mapping layers, 18 ws)."""
        return cls(resolution=1024, channels=channels_nvidia(1024))

    @property
    def num_ws(self) -> int:
        """Rows of W+: two per resolution above 4x4, one for the 4x4 conv, one for the last RGB."""
        return 2 * int(math.log2(self.resolution)) - 2

    @property
    def block_resolutions(self) -> list[int]:
        return list(self.channels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `from_dict` reverses it."""
        return {
            "resolution": self.resolution,
            "channels": {str(res): ch for res, ch in self.channels.items()},
            "z_dim": self.z_dim,
            "w_dim": self.w_dim,
            "mapping_layers": self.mapping_layers,
            "mapping_lr_multiplier": self.mapping_lr_multiplier,
            "blur_kernel": list(self.blur_kernel),
            "conv_clamp": self.conv_clamp,
            "c_dim": self.c_dim,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StyleGAN2Config:
        """Rebuild from `to_dict` output, refusing unknown or missing keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"StyleGAN2 config: unknown keys {unknown}; known: {sorted(known)}")
        missing = sorted(known - set(data) - set(_ADDED_KEYS))
        if missing:
            raise ConfigError(f"StyleGAN2 config: missing keys {missing}")
        values = _ADDED_KEYS | dict(data)
        values["channels"] = {int(res): ch for res, ch in data["channels"].items()}
        values["blur_kernel"] = tuple(data["blur_kernel"])
        return cls(**values)


# Keys added after the first safetensors files were written, with the value those files imply.
_ADDED_KEYS: dict[str, Any] = {"c_dim": 0}


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, int) or resolution < 4 or resolution & (resolution - 1):
        raise ConfigError(f"resolution: expected a power of two >= 4, got {resolution!r}")


# --------------------------------------------------------------------------------------------
# Operations


def make_filter(taps: Sequence[float]) -> Tensor:
    """The 2-D separable low-pass filter `outer(taps, taps)`, normalised to unit sum."""
    kernel = torch.as_tensor(taps, dtype=torch.float32)
    kernel = torch.outer(kernel, kernel)
    return kernel / kernel.sum()


def upfirdn2d(
    x: Tensor, kernel: Tensor, *, up: int = 1, pad: tuple[int, int] = (0, 0), gain: float = 1.0
) -> Tensor:
    """Upsample by zero insertion, pad, then convolve each channel with a 2-D FIR filter.

    The semantics of NVIDIA's and rosinality's `upfirdn2d` without downsampling: `up - 1` zeros
    follow each input sample, `pad` adds (before, after) zeros on both axes (negative values
    crop), and the filter, scaled by `gain`, is applied as a true convolution (flipped), all in
    `F.pad` and a depthwise `F.conv2d`.
    """
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = (kernel * gain).flip([0, 1]).to(x.dtype)
    # A materialised (not expanded) depthwise weight keeps the conv on its fast CPU path.
    weight = weight[None, None].repeat(channels, 1, 1, 1)
    return F.conv2d(x, weight, groups=channels)


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    *,
    demodulate: bool,
    up_filter: Tensor | None = None,
) -> Tensor:
    """Convolve each sample with its own style-scaled (and optionally demodulated) kernel.

    `x` is (N, I, H, W), `weight` (O, I, k, k) and `styles` (N, I). The N per-sample kernels are
    stacked into one grouped convolution with N groups, so the batch runs as a single op. With
    `up_filter`, the convolution is a stride-2 transposed convolution followed by the FIR blur,
    doubling H and W ("same" padding either way).
    """
    batch, in_channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    kernels = weight[None] * styles.reshape(batch, 1, in_channels, 1, 1)
    if demodulate:
        kernels = kernels * (kernels.square().sum(dim=(2, 3, 4), keepdim=True) + _DEMOD_EPS).rsqrt()
    x = x.reshape(1, batch * in_channels, height, width)
    if up_filter is None:
        kernels = kernels.reshape(batch * out_channels, in_channels, kh, kw)
        out = F.conv2d(x, kernels, padding=kh // 2, groups=batch)
    else:
        kernels = kernels.transpose(1, 2).reshape(batch * in_channels, out_channels, kh, kw)
        out = F.conv_transpose2d(x, kernels, stride=2, groups=batch)
        taps = up_filter.shape[0]
        # Transposed conv output is 2H + k - 2; pad so that the blurred result is exactly 2H.
        pad = (kh // 2 + (taps + 1) // 2 - (kh - 1), kh // 2 + (taps - 2) // 2 - (kh - 2))
        out = upfirdn2d(out, up_filter, pad=pad, gain=4.0)
    return out.reshape(batch, out_channels, *out.shape[2:])


def upsample_image(img: Tensor, kernel: Tensor) -> Tensor:
    """Double the size of the skip-connected RGB image with the FIR filter (upfirdn2d, up=2)."""
    taps = kernel.shape[0]
    return upfirdn2d(img, kernel, up=2, pad=((taps + 1) // 2, (taps - 2) // 2), gain=4.0)


# --------------------------------------------------------------------------------------------
# Layers


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally upsampling x2), noise, bias, leaky ReLU."""

    noise_const: Tensor
    resample_filter: Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        w_dim: int,
        resolution: int,
        up: bool,
        blur_kernel: Sequence[float],
        conv_clamp: float | None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer(
            "resample_filter", make_filter(blur_kernel) if up else None, persistent=False
        )

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None) -> Tensor:
        """`noise` is (N, 1, R, R), the stored (R, R) image, or None for no noise."""
        styles = self.affine(w)
        x = modulated_conv2d(
            x, self.weight, styles, demodulate=True, up_filter=self.resample_filter
        )
        if noise is not None:
            x = x + noise * self.noise_strength
        x = F.leaky_relu(x + self.bias[:, None, None], LRELU_SLOPE) * LRELU_GAIN
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to RGB, without demodulation."""

    def __init__(self, in_channels: int, *, w_dim: int, conv_clamp: float | None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        x = x + self.bias[:, None, None]
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


class SynthesisBlock(nn.Module):
    """One resolution: (upsampling conv0,) conv1 and toRGB added onto the upsampled skip image.

    The 4x4 block starts from the learned constant `const` instead of conv0.
    """

    resample_filter: Tensor

    def __init__(self, config: StyleGAN2Config, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        out_channels = config.channels[resolution]
        layer_options: dict[str, Any] = {
            "w_dim": config.w_dim,
            "resolution": resolution,
            "blur_kernel": config.blur_kernel,
            "conv_clamp": config.conv_clamp,
        }
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            in_channels = config.channels[resolution // 2]
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=True, **layer_options)
        self.conv1 = SynthesisLayer(out_channels, out_channels, up=False, **layer_options)
        self.torgb = ToRGBLayer(out_channels, w_dim=config.w_dim, conv_clamp=config.conv_clamp)
        self.register_buffer("resample_filter", make_filter(config.blur_kernel), persistent=False)

    def layers(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.resolution == 4 else [self.conv0, self.conv1]

    def forward(
        self, x: Tensor | None, img: Tensor | None, ws: Tensor, noises: Sequence[Tensor | None]
    ) -> tuple[Tensor, Tensor]:
        """`ws` holds this block's rows of W+: one per conv layer, then one for toRGB."""
        if x is None:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        for idx, (layer, noise) in enumerate(zip(self.layers(), noises, strict=True)):
            x = layer(x, ws[:, idx], noise)
        rgb = self.torgb(x, ws[:, -1])
        img = rgb if img is None else upsample_image(img, self.resample_filter) + rgb
        return x, img


class SynthesisNetwork(nn.Module):
    """W+ -> image: one `SynthesisBlock` per resolution, named `b4`, `b8`, ... as NVIDIA does."""

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__()
        self.block_resolutions = config.block_resolutions
        self.num_ws = config.num_ws
        for res in self.block_resolutions:
            self.add_module(f"b{res}", SynthesisBlock(config, res))

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def layers(self) -> list[SynthesisLayer]:
        """Every noise-taking layer, in the order of the W+ rows and of the noise draws."""
        return [layer for block in self.blocks() for layer in block.layers()]

    def make_noise(
        self,
        batch: int,
        mode: NoiseMode,
        seeds: Sequence[int] | None,
        device: torch.device,
    ) -> list[Tensor | None]:
        """Noise input for each layer.

        'random' with `seeds` draws all of a sample's noise images from its own CPU random state
        (`seeded_normal`, split in `layers()` order), so they depend only on the seed; without
        seeds it draws fresh noise from the global random state.
        """
        layers = self.layers()
        if mode == "none":
            return [None] * len(layers)
        if mode == "const":
            return [layer.noise_const for layer in layers]
        if seeds is None:
            return [
                torch.randn(batch, 1, layer.resolution, layer.resolution, device=device)
                for layer in layers
            ]
        sizes = [layer.resolution**2 for layer in layers]
        draws = seeded_normal(seeds, (sum(sizes),)).to(device).split(sizes, dim=1)
        return [
            draw.reshape(-1, 1, layer.resolution, layer.resolution)
            for draw, layer in zip(draws, layers, strict=True)
        ]

    def forward(
        self,
        ws: Tensor,
        *,
        noise_mode: NoiseMode = "const",
        noise_seeds: Sequence[int] | None = None,
    ) -> Tensor:
        """Unclamped RGB images (N, 3, R, R) for W+ latents (N, num_ws, w_dim)."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ImageError(f"ws: expected shape (N, {self.num_ws}, w_dim), got {tuple(ws.shape)}")
        noises = self.make_noise(ws.shape[0], noise_mode, noise_seeds, ws.device)
        first, *rest = self.blocks()
        x, img = first(None, None, ws[:, :2], noises[:1])
        # Block k > 0 reads W+ rows 2k-1, 2k (its convs) and 2k+1 (its toRGB, shared with the
        # next block's conv0); layer i's noise is noises[i], so both advance together.
        idx = 1
        for block in rest:
            x, img = block(x, img, ws[:, idx : idx + 3], noises[idx : idx + 2])
            idx += 2
        return img


# --------------------------------------------------------------------------------------------
# The generator


class StyleGAN2Generator(MappedGenerator):
    """StyleGAN2 behind the `FaceGenerator` interface, editing in W+.

    Args:
        config: the architecture; `StyleGAN2Config.ffhq_config_f()` for the FFHQ network.
            Weights start random; `pipeline.generators.checkpoints.load_stylegan` fills
            them from a file.
        truncation_psi: truncation applied by `sample_latents`. The default 1.0 applies none, as
            both references do: truncation trades variety for typicality and pulls expressions
            towards the average face as well, which a dataset about expressions should opt into
            knowingly (0.7 is the common choice for cleaner faces).
        truncation_cutoff: truncate only the first this-many W+ rows (the coarse layers); None
            truncates all rows.
        noise_mode: default noise for `synthesize`: 'const' (the stored noise images;
            deterministic, the default), 'random' (fresh Gaussian noise; reproducible per sample
            when `noise_seeds` are passed to `synthesize`) or 'none'.
        class_index: the class a conditional generator (`config.c_dim > 0`) renders; None for
            an unconditional one.
    """

    def __init__(
        self,
        config: StyleGAN2Config,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseMode = "const",
        class_index: int | None = None,
    ) -> None:
        super().__init__(
            config, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, class_index=class_index
        )
        self.noise_mode = _check_noise_mode(noise_mode)
        self.synthesis = SynthesisNetwork(config)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "family": "StyleGAN2",
            "noise_mode": self.noise_mode,
        }

    def synthesize(
        self,
        latents: Tensor,
        *,
        noise_mode: NoiseMode | None = None,
        noise_seeds: Sequence[int] | None = None,
    ) -> Tensor:
        """Differentiable rendering of W+ latents to float images (N, 3, R, R) in [-1, 1].

        StyleGAN2's raw output is unbounded; it is clamped to [-1, 1] (gradients pass inside the
        range). `noise_mode` overrides the generator default; `noise_seeds` (one per sample) make
        'random' noise reproducible and independent of the batch.
        """
        self.check_latents(latents)
        if not latents.is_floating_point():
            raise ImageError(f"latents: expected a floating-point tensor, got {latents.dtype}")
        mode = self.noise_mode if noise_mode is None else _check_noise_mode(noise_mode)
        if noise_seeds is not None:
            if mode != "random":
                raise ValueError(f"noise_seeds: only used with noise_mode='random', got {mode!r}")
            if len(noise_seeds) != latents.shape[0]:
                raise ValueError(
                    f"noise_seeds: expected one seed per latent ({latents.shape[0]}), "
                    f"got {len(noise_seeds)}"
                )
        ws = latents.to(self.mapping.w_avg.dtype)
        return self.synthesis(ws, noise_mode=mode, noise_seeds=noise_seeds).clamp(-1, 1)


def _check_noise_mode(mode: str) -> NoiseMode:
    if mode not in get_args(NoiseMode):
        raise ConfigError(f"noise_mode: expected one of {get_args(NoiseMode)}, got {mode!r}")
    return mode  # type: ignore[return-value]
