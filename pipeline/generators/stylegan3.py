"""StyleGAN3 generator in plain PyTorch: configs T (translation) and R (rotation equivariant).

Karras, Aittala, Laine, Härkönen, Hellsten, Lehtinen and Aila, "Alias-Free Generative Adversarial
Networks", NeurIPS 2021 (arXiv:2106.12423). The synthesis network starts from Fourier features
(sinusoids of fixed frequencies inside a disc, rotated and translated per sample by an affine of
the first W+ row, and by a user transform), then runs `num_layers` modulated convolutions, each
followed by a *filtered* leaky ReLU: upsample by `up` with a Kaiser low-pass filter, add the bias,
apply the leaky ReLU at the higher rate, clamp, low-pass and downsample by `down`. Cutoffs and
stopbands follow a geometric progression from `first_cutoff` to half the image resolution; the
last `num_critical` layers are critically sampled. Config R uses 1x1 convolutions and radially
symmetric (jinc) downsampling filters. A final 1x1 toRGB layer (no demodulation) and
`output_scale` give the image.

The maths follows NVIDIA's reference (NVlabs/stylegan3 `training/networks_stylegan3.py` and the
reference paths of `torch_utils/ops/filtered_lrelu.py` and `upfirdn2d.py`); module and parameter
names are NVIDIA's (`synthesis.L3_52_1024.affine.weight`), so an NVIDIA state maps one to one.
There is no compiled extension: resampling is zero insertion, `F.pad` and depthwise `F.conv2d`
(separable where the filter is). Everything runs in float32; NVIDIA runs the highest layers in
float16 on CUDA, so its CUDA images differ in the last bits.

One deliberate difference: before demodulation NVIDIA normalises the styles by their mean square
over the whole batch. Demodulation cancels any per-sample scale of the styles (up to its 1e-8
guard), so exprlock normalises each sample by its own mean square: the same image, and an image
that never depends on the batch it was rendered in.

Latents: W+ has `num_layers + 2` rows (the input's transform, each layer, toRGB). There is no
per-layer noise. No weights ship with exprlock; NVIDIA's published StyleGAN3 weights are under the
NVIDIA Source Code License-NC, for non-commercial use only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import scipy.signal
import scipy.special
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import ConfigError, ImageError
from pipeline.generators.mapping import LRELU_GAIN, LRELU_SLOPE, EqualizedLinear, MappedGenerator

_DEMOD_EPS = 1e-8


@dataclass(frozen=True)
class StyleGAN3Config:
    """Everything that fixes the generator's tensors and its maths (NVIDIA's option names).

    `config_t` and `config_r` give the published configurations; the defaults are config T.
    """

    resolution: int
    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 0
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    num_layers: int = 14
    num_critical: int = 2
    first_cutoff: float = 2.0
    first_stopband: float = 2**2.1
    last_stopband_rel: float = 2**0.3
    margin_size: int = 10
    output_scale: float = 0.25
    conv_kernel: int = 3
    filter_size: int = 6
    lrelu_upsampling: int = 2
    use_radial_filters: bool = False
    conv_clamp: float | None = 256.0

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or self.resolution < 4 or self.resolution & (self.resolution - 1):
            raise ConfigError(f"resolution: expected a power of two >= 4, got {self.resolution!r}")
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "conv_kernel",
                     "filter_size", "lrelu_upsampling"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.c_dim < 0 or self.margin_size < 0:
            raise ConfigError(f"c_dim, margin_size: expected >= 0, got {self.c_dim}, {self.margin_size}")
        if not 0 <= self.num_critical < self.num_layers:
            raise ConfigError(
                f"num_critical: expected 0..num_layers-1 ({self.num_layers - 1}), got {self.num_critical}"
            )
        if self.conv_clamp is not None and not self.conv_clamp > 0:
            raise ConfigError(f"conv_clamp: expected None or a positive number, got {self.conv_clamp}")

    @classmethod
    def config_t(cls, resolution: int, **options: Any) -> StyleGAN3Config:
        """StyleGAN3-T as NVIDIA's `train.py --cfg=stylegan3-t` builds it."""
        return cls(resolution=resolution, **options)

    @classmethod
    def config_r(cls, resolution: int, **options: Any) -> StyleGAN3Config:
        """StyleGAN3-R: 1x1 convolutions, radial filters, twice the channels of T."""
        values = {"channel_base": 65536, "channel_max": 1024, "conv_kernel": 1, "use_radial_filters": True}
        return cls(resolution=resolution, **(values | options))

    @property
    def name(self) -> str:
        """'T' or 'R' for the published layer designs, else 'custom'."""
        if self.conv_kernel == 3 and not self.use_radial_filters:
            return "T"
        if self.conv_kernel == 1 and self.use_radial_filters:
            return "R"
        return "custom"

    @property
    def num_ws(self) -> int:
        """Rows of W+: the input's transform, one per layer, one for toRGB."""
        return self.num_layers + 2

    def layers(self) -> list[LayerSpec]:
        """The input (index 0 of the lists below) and every layer's sampling design."""
        return _layer_specs(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `from_dict` reverses it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StyleGAN3Config:
        """Rebuild from `to_dict` output, refusing unknown or missing keys."""
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - known), sorted(known - set(data))
        if unknown or missing:
            raise ConfigError(f"StyleGAN3 config: unknown keys {unknown}, missing keys {missing}")
        return cls(**data)


@dataclass(frozen=True)
class LayerSpec:
    """Sizes, rates and filters of one synthesis layer, as NVIDIA's `SynthesisLayer` derives them."""

    name: str
    is_torgb: bool
    is_critically_sampled: bool
    in_channels: int
    out_channels: int
    in_size: int
    out_size: int
    in_sampling_rate: int
    out_sampling_rate: int
    in_cutoff: float
    out_cutoff: float
    in_half_width: float
    out_half_width: float
    conv_kernel: int
    up_factor: int
    down_factor: int
    up_taps: int
    down_taps: int
    down_radial: bool
    padding: tuple[int, int, int, int]


def _layer_specs(config: StyleGAN3Config) -> list[LayerSpec]:
    """Design of the Fourier input (spec 0, a pseudo-layer) and of each layer after it.

    Computed in float64 numpy like the reference, so sizes and paddings round the same way.
    """
    n = config.num_layers
    last_cutoff = config.resolution / 2
    last_stopband = last_cutoff * config.last_stopband_rel
    exponents = np.minimum(np.arange(n + 1) / (n - config.num_critical), 1)
    cutoffs = config.first_cutoff * (last_cutoff / config.first_cutoff) ** exponents
    stopbands = config.first_stopband * (last_stopband / config.first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, config.resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + config.margin_size * 2
    sizes[-2:] = config.resolution
    channels = np.rint(np.minimum((config.channel_base / 2) / cutoffs, config.channel_max))
    channels[-1] = 3
    specs = []
    for idx in range(n + 1):
        prev = max(idx - 1, 0)
        is_torgb = idx == n
        critical = idx >= n - config.num_critical
        in_rate, out_rate = int(rates[prev]), int(rates[idx])
        tmp_rate = max(in_rate, out_rate) * (1 if is_torgb else config.lrelu_upsampling)
        up, down = tmp_rate // in_rate, tmp_rate // out_rate
        kernel = 1 if is_torgb else config.conv_kernel
        up_taps = config.filter_size * up if up > 1 and not is_torgb else 1
        down_taps = config.filter_size * down if down > 1 and not is_torgb else 1
        in_size, out_size = int(sizes[prev]), int(sizes[idx])
        # Output size before downsampling, minus the upsampled input, plus what the filters trim;
        # the low side gets the extra sample, shifting to the symmetric sample positions.
        pad_total = (out_size - 1) * down + 1 - (in_size + kernel - 1) * up + up_taps + down_taps - 2
        pad_lo = (pad_total + up) // 2
        pad_hi = pad_total - pad_lo
        specs.append(
            LayerSpec(
                name=f"L{idx}_{out_size}_{int(channels[idx])}",
                is_torgb=is_torgb,
                is_critically_sampled=critical,
                in_channels=int(channels[prev]),
                out_channels=int(channels[idx]),
                in_size=in_size,
                out_size=out_size,
                in_sampling_rate=in_rate,
                out_sampling_rate=out_rate,
                in_cutoff=float(cutoffs[prev]),
                out_cutoff=float(cutoffs[idx]),
                in_half_width=float(half_widths[prev]),
                out_half_width=float(half_widths[idx]),
                conv_kernel=kernel,
                up_factor=up,
                down_factor=down,
                up_taps=up_taps,
                down_taps=down_taps,
                down_radial=config.use_radial_filters and not critical,
                padding=(pad_lo, pad_hi, pad_lo, pad_hi),
            )
        )
    return specs


# --------------------------------------------------------------------------------------------
# Operations


def lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, *, radial: bool = False) -> Tensor | None:
    """Kaiser-windowed low-pass filter: 1-D separable taps, or a 2-D jinc for `radial`.

    None for a single tap (no filtering). The 1-D design is `scipy.signal.firwin`; the radial one
    is the jinc of the cutoff times the outer product of the Kaiser window, normalised to unit sum.
    """
    if numtaps == 1:
        return None
    if not radial:
        return torch.as_tensor(scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs), dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    jinc = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    taps = jinc * np.outer(window, window)
    return torch.as_tensor(taps / taps.sum(), dtype=torch.float32)


def _upsample(x: Tensor, taps: Tensor | None, up: int, padding: tuple[int, int, int, int]) -> Tensor:
    """Zero insertion by `up`, `padding` (negative crops), then the separable low-pass `taps`
    with gain up**2, computed without the zeros: a stride-`up` transposed convolution per axis
    is the full convolution of the zero-stuffed signal, cut to the padded window."""
    left, right, top, bottom = padding
    if taps is None:
        if up != 1:
            raise ValueError(f"upsampling by {up} needs a low-pass filter")
        return F.pad(x, [left, right, top, bottom])
    if taps.ndim != 1:
        raise ValueError(f"the upsampling filter must be separable (1-D taps), got shape {tuple(taps.shape)}")
    channels, k = x.shape[1], taps.shape[0]
    line = (taps * up).to(x.dtype)  # gain up per axis
    x = F.conv_transpose2d(x, line.view(1, 1, 1, k).repeat(channels, 1, 1, 1), stride=(1, up), groups=channels)
    x = F.conv_transpose2d(x, line.view(1, 1, k, 1).repeat(channels, 1, 1, 1), stride=(up, 1), groups=channels)
    # The full convolution starts k - 1 samples before the padded window and ends up - 1 early.
    return F.pad(x, [left - k + 1, right - k + up, top - k + 1, bottom - k + up])


def _downsample(x: Tensor, taps: Tensor | None, down: int) -> Tensor:
    """The low-pass `taps` (flipped: a true convolution; 1-D ones run separably), keeping every
    `down`-th sample."""
    channels = x.shape[1]
    if taps is None:
        return x[:, :, ::down, ::down] if down > 1 else x
    taps = taps.to(x.dtype)
    if taps.ndim == 2:
        return F.conv2d(x, taps.flip([0, 1])[None, None].repeat(channels, 1, 1, 1), stride=down, groups=channels)
    line = taps.flip([0])
    x = F.conv2d(x, line.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), stride=(1, down), groups=channels)
    return F.conv2d(x, line.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), stride=(down, 1), groups=channels)


def filtered_lrelu(
    x: Tensor,
    *,
    up_filter: Tensor | None,
    down_filter: Tensor | None,
    bias: Tensor,
    up: int,
    down: int,
    padding: tuple[int, int, int, int],
    gain: float,
    slope: float,
    clamp: float | None,
) -> Tensor:
    """Bias, upsample (zero insertion, pad, low-pass with gain up**2), leaky ReLU times `gain`,
    clamp to +-`clamp`, low-pass and downsample: NVIDIA's `filtered_lrelu` semantics.

    `padding` is (left, right, top, bottom) on the upsampled signal; negative values crop. The
    depthwise filtering runs in channels-last layout, several times faster on CPU; the result is
    returned contiguous for the next layer's convolution.
    """
    x = (x + bias.to(x.dtype)[None, :, None, None]).contiguous(memory_format=torch.channels_last)
    x = _upsample(x, up_filter, up, padding)
    if slope != 1:
        x = F.leaky_relu(x, slope)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return _downsample(x, down_filter, down).contiguous()


def modulated_conv2d(
    x: Tensor, weight: Tensor, styles: Tensor, *, demodulate: bool, padding: int, input_gain: Tensor
) -> Tensor:
    """Per-sample style-scaled (and optionally demodulated) convolution as one grouped conv.

    With demodulation, weight and styles are first normalised by their mean squares (per output
    channel, per sample) to keep float16 in range in the reference; demodulation cancels both.
    `input_gain` scales the input channels (the inverse RMS of the input seen in training).
    """
    batch, in_channels = x.shape[:2]
    out_channels, _, kh, kw = weight.shape
    if demodulate:
        weight = weight * weight.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()
        styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
    kernels = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        kernels = kernels * (kernels.square().sum(dim=(2, 3, 4), keepdim=True) + _DEMOD_EPS).rsqrt()
    kernels = kernels * input_gain
    x = x.reshape(1, batch * in_channels, *x.shape[2:])
    out = F.conv2d(x, kernels.reshape(batch * out_channels, in_channels, kh, kw), padding=padding, groups=batch)
    return out.reshape(batch, out_channels, *out.shape[2:])


# --------------------------------------------------------------------------------------------
# Layers


class SynthesisInput(nn.Module):
    """Fourier features: `channels` sinusoids sampled on a `size` grid, rotated and translated by
    an affine of w, then mixed by a learned `channels x channels` matrix."""

    transform: Tensor
    freqs: Tensor
    phases: Tensor

    def __init__(self, *, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float) -> None:
        super().__init__()
        self.channels = channels
        self.size = size
        self.sampling_rate = sampling_rate
        self.bandwidth = bandwidth
        # Frequencies drawn inside a disc of radius `bandwidth` (the reference's construction).
        freqs = torch.randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.affine = EqualizedLinear(w_dim, 4)
        with torch.no_grad():  # the reference starts from the identity transform
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        # Inverse of a user transform of the output image (translation, rotation); identity.
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(channels) - 0.5)

    def forward(self, w: Tensor) -> Tensor:
        batch = w.shape[0]
        t = self.affine(w)  # (cos, sin, tx, ty) up to scale
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        cos, sin, tx, ty = t.unbind(dim=1)
        zeros, ones = torch.zeros_like(cos), torch.ones_like(cos)
        rotation = torch.stack([cos, -sin, zeros, sin, cos, zeros, zeros, zeros, ones], dim=1).reshape(batch, 3, 3)
        translation = torch.stack([ones, zeros, -tx, zeros, ones, -ty, zeros, zeros, ones], dim=1).reshape(batch, 3, 3)
        transforms = rotation @ translation @ self.transform[None]
        phases = self.phases[None] + (self.freqs[None] @ transforms[:, :2, 2:]).squeeze(2)
        freqs = self.freqs[None] @ transforms[:, :2, :2]  # (N, C, 2)
        # Fade out frequencies the user transform pushes beyond the band the layer can carry.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        # Sample positions: pixel centres of a `size` grid, in units of the sampling period.
        coords = (torch.arange(self.size, device=w.device, dtype=w.dtype) + 0.5 - self.size / 2) / self.sampling_rate
        grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
        grid = torch.stack([grid_x, grid_y], dim=-1)  # (H, W, 2)
        x = torch.einsum("hwk,nck->nhwc", grid, freqs) + phases[:, None, None]
        x = torch.sin(x * (2 * math.pi)) * amplitudes[:, None, None]
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)


class SynthesisLayer(nn.Module):
    """Modulated convolution and filtered leaky ReLU (or the final 1x1 toRGB)."""

    magnitude_ema: Tensor
    up_filter: Tensor | None
    down_filter: Tensor | None

    def __init__(self, spec: LayerSpec, *, w_dim: int, conv_clamp: float | None) -> None:
        super().__init__()
        self.spec = spec
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(w_dim, spec.in_channels, bias_init=1.0)
        k = spec.conv_kernel
        self.weight = nn.Parameter(torch.randn(spec.out_channels, spec.in_channels, k, k))
        self.bias = nn.Parameter(torch.zeros(spec.out_channels))
        # Running mean square of the layer's input during training; its inverse root scales it.
        self.register_buffer("magnitude_ema", torch.ones(()))
        tmp_rate = spec.in_sampling_rate * spec.up_factor
        self.register_buffer(
            "up_filter", lowpass_filter(spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, tmp_rate)
        )
        self.register_buffer(
            "down_filter",
            lowpass_filter(spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, tmp_rate, radial=spec.down_radial),
        )

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        spec = self.spec
        styles = self.affine(w)
        if spec.is_torgb:
            styles = styles / math.sqrt(spec.in_channels * spec.conv_kernel**2)
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            demodulate=not spec.is_torgb,
            padding=spec.conv_kernel - 1,
            input_gain=self.magnitude_ema.rsqrt(),
        )
        return filtered_lrelu(
            x,
            up_filter=self.up_filter,
            down_filter=self.down_filter,
            bias=self.bias,
            up=spec.up_factor,
            down=spec.down_factor,
            padding=spec.padding,
            gain=1.0 if spec.is_torgb else LRELU_GAIN,
            slope=1.0 if spec.is_torgb else LRELU_SLOPE,
            clamp=self.conv_clamp,
        )


class SynthesisNetwork(nn.Module):
    """W+ -> image: the Fourier input, then layers `L{i}_{size}_{channels}` as NVIDIA names them."""

    def __init__(self, config: StyleGAN3Config) -> None:
        super().__init__()
        self.num_ws = config.num_ws
        self.output_scale = config.output_scale
        specs = config.layers()
        first = specs[0]
        self.input = SynthesisInput(
            w_dim=config.w_dim,
            channels=first.in_channels,
            size=first.in_size,
            sampling_rate=first.in_sampling_rate,
            bandwidth=first.in_cutoff,
        )
        self.layer_names = [spec.name for spec in specs]
        for spec in specs:
            layer = SynthesisLayer(spec, w_dim=config.w_dim, conv_clamp=config.conv_clamp)
            self.add_module(spec.name, layer)

    def forward(self, ws: Tensor) -> Tensor:
        """Unclamped RGB images (N, 3, R, R) for W+ latents (N, num_ws, w_dim)."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ImageError(f"ws: expected shape (N, {self.num_ws}, w_dim), got {tuple(ws.shape)}")
        rows = ws.unbind(dim=1)
        x = self.input(rows[0])
        for name, w in zip(self.layer_names, rows[1:], strict=True):
            x = getattr(self, name)(x, w)
        return x * self.output_scale if self.output_scale != 1 else x


# --------------------------------------------------------------------------------------------
# The generator


class StyleGAN3Generator(MappedGenerator):
    """StyleGAN3 behind the `FaceGenerator` interface, editing in W+.

    Args:
        config: the architecture (`StyleGAN3Config.config_t(1024)` for `stylegan3-t-ffhq-1024x1024`).
            Weights start random; `pipeline.generators.checkpoints.load_stylegan` fills them.
        truncation_psi, truncation_cutoff: as for StyleGAN2 (1.0: none).
        class_index: the class a conditional generator renders; None for an unconditional one.
    """

    def __init__(
        self,
        config: StyleGAN3Config,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        class_index: int | None = None,
    ) -> None:
        super().__init__(
            config, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, class_index=class_index
        )
        self.synthesis = SynthesisNetwork(config)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "family": f"StyleGAN3-{self.config.name}",
        }

    def set_input_transform(self, *, translate: Sequence[float] = (0.0, 0.0), rotate: float = 0.0) -> None:
        """Translate (in image-widths) and rotate (degrees) every output image, by moving the
        Fourier features: the input's transform becomes the inverse of that motion."""
        angle = math.radians(rotate)
        motion = torch.tensor(
            [[math.cos(angle), math.sin(angle), translate[0]], [-math.sin(angle), math.cos(angle), translate[1]], [0, 0, 1]],
            dtype=torch.float64,
        )
        self.synthesis.input.transform.copy_(torch.linalg.inv(motion).to(torch.float32))

    def synthesize(self, latents: Tensor) -> Tensor:
        """Differentiable rendering of W+ latents to float images (N, 3, R, R) in [-1, 1]."""
        self.check_latents(latents)
        if not latents.is_floating_point():
            raise ImageError(f"latents: expected a floating-point tensor, got {latents.dtype}")
        return self.synthesis(latents.to(self.mapping.w_avg.dtype)).clamp(-1, 1)
