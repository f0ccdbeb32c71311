"""What StyleGAN2 and StyleGAN3 share: the mapping network z (and class) -> W+, and seeds to W+.

Both families map a standard-normal z, normalised by its second moment, through fully connected
leaky-ReLU layers to w, pull it towards the W average for truncation, and broadcast it to the
`num_ws` rows of W+, the latent exprlock edits. A conditional generator (`c_dim > 0`) also embeds
a one-hot class vector, normalises the embedding the same way and concatenates it to z before the
first layer, as NVIDIA's networks do; its class is fixed per generator (`class_index`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.errors import ConfigError, ImageError
from pipeline.generators.base import FaceGenerator, seeded_normal

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps the activation variance of a leaky ReLU at one


class EqualizedLinear(torch.nn.Module):
    """Fully connected layer with equalised learning rate.

    Weights are stored divided by `lr_multiplier` and scaled by `lr_multiplier / sqrt(in)` at run
    time, the bias by `lr_multiplier`, exactly as NVIDIA's and rosinality's code store them.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        activation: Literal["linear", "lrelu"] = "linear",
    ) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
        return x


def _normalize_2nd_moment(x: Tensor) -> Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


class MappingNetwork(torch.nn.Module):
    """z (and a one-hot class) -> W+: `num_layers` leaky-ReLU layers, then truncation.

    Args:
        z_dim, w_dim: sizes of z and w.
        num_ws: rows of W+ to broadcast w to.
        num_layers: fully connected layers (8 in StyleGAN2, 2 in StyleGAN3).
        lr_multiplier: learning-rate multiplier of those layers; it also scales their weights at
            run time, so it must match the checkpoint (0.01 in the references).
        c_dim: classes of a conditional generator, 0 for none.
        embed_features: size of the class embedding (NVIDIA's default is `w_dim`).
    """

    w_avg: Tensor

    def __init__(
        self,
        *,
        z_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int,
        lr_multiplier: float,
        c_dim: int = 0,
        embed_features: int | None = None,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.num_layers = num_layers
        self.num_ws = num_ws
        embed = (w_dim if embed_features is None else embed_features) if c_dim else 0
        if c_dim:
            self.embed = EqualizedLinear(c_dim, embed)
        features = [z_dim + embed] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = EqualizedLinear(
                features[idx], features[idx + 1], lr_multiplier=lr_multiplier, activation="lrelu"
            )
            self.add_module(f"fc{idx}", layer)
        # Mean of W over the training distribution: the centre that truncation pulls towards.
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def to_w(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """W latents (N, w_dim) for z (N, z_dim) and, when conditional, one-hot c (N, c_dim)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ImageError(f"z: expected shape (N, {self.z_dim}), got {tuple(z.shape)}")
        x = _normalize_2nd_moment(z)
        if self.c_dim:
            if c is None or tuple(c.shape) != (z.shape[0], self.c_dim):
                found = None if c is None else tuple(c.shape)
                raise ImageError(f"c: expected shape ({z.shape[0]}, {self.c_dim}), got {found}")
            x = torch.cat([x, _normalize_2nd_moment(self.embed(c.to(x.dtype)))], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return x

    def forward(
        self, z: Tensor, c: Tensor | None = None, *, psi: float = 1.0, cutoff: int | None = None
    ) -> Tensor:
        """W+ latents (N, num_ws, w_dim) for z (N, z_dim).

        Truncation moves w towards `w_avg`: `w_avg + psi * (w - w_avg)` on the first `cutoff`
        rows (all rows when `cutoff` is None); `psi=1` leaves w unchanged, `psi=0` gives `w_avg`.
        """
        ws = self.to_w(z, c)[:, None].expand(-1, self.num_ws, -1)
        if psi == 1:
            return ws.clone()
        rows = self.num_ws if cutoff is None else cutoff
        truncated = self.w_avg.lerp(ws[:, :rows], float(psi))
        return torch.cat([truncated, ws[:, rows:]], dim=1)


def build_mapping(config: Any) -> MappingNetwork:
    """The mapping network a StyleGAN2 or StyleGAN3 config describes."""
    return MappingNetwork(
        z_dim=config.z_dim,
        w_dim=config.w_dim,
        num_ws=config.num_ws,
        num_layers=config.mapping_layers,
        lr_multiplier=config.mapping_lr_multiplier,
        c_dim=config.c_dim,
    )


class MappedGenerator(FaceGenerator):
    """A StyleGAN generator edited in W+: seeds become W+ latents through `self.mapping`.

    Builds the mapping network from `config` (a `StyleGAN2Config` or `StyleGAN3Config`);
    subclasses add the synthesis network. `source_format` and `w_avg_origin` say where the
    weights came from; the checkpoint loader sets both from the file it reads.
    """

    def __init__(
        self,
        config: Any,
        *,
        truncation_psi: float,
        truncation_cutoff: int | None,
        class_index: int | None,
    ) -> None:
        super().__init__()
        self.config = config
        self.resolution = config.resolution
        self.z_dim, self.w_dim, self.num_ws, self.c_dim = config.z_dim, config.w_dim, config.num_ws, config.c_dim
        self.latent_shape = (config.num_ws, config.w_dim)
        if not math.isfinite(truncation_psi):
            raise ConfigError(f"truncation_psi: expected a finite number, got {truncation_psi}")
        if truncation_cutoff is not None and not 1 <= truncation_cutoff <= config.num_ws:
            raise ConfigError(
                f"truncation_cutoff: expected None or 1..{config.num_ws}, got {truncation_cutoff}"
            )
        self.truncation_psi = float(truncation_psi)
        self.truncation_cutoff = truncation_cutoff
        self.class_index = check_class_index(class_index, config.c_dim)
        self.mapping = build_mapping(config)
        self.source_format = "none (weights not read from a file)"
        self.w_avg_origin = "none (weights not read from a file)"

    def describe(self) -> dict[str, Any]:
        conditional = {"class_index": self.class_index, "classes": self.c_dim} if self.c_dim else {}
        return super().describe() | {
            "format": self.source_format,
            "config": self.config.to_dict(),
            "latent": f"W+ ({self.num_ws} x {self.w_dim}) from z ~ N(0, I) in R^{self.z_dim}, one draw per seed",
            "truncation_psi": self.truncation_psi,
            "truncation_cutoff": self.truncation_cutoff,
            "w_avg": self.w_avg_origin,
            **conditional,
        }

    def class_vector(self, batch: int) -> Tensor | None:
        """The one-hot class `c` (batch, c_dim) of a conditional generator, else None."""
        if not self.c_dim:
            return None
        c = torch.zeros(batch, self.c_dim, device=self.mapping.w_avg.device)
        c[:, self.class_index] = 1
        return c

    def sample_latents(self, seeds: Sequence[int]) -> Tensor:
        """W+ latents (len(seeds), num_ws, w_dim): z per seed, mapped, truncated, broadcast."""
        z = seeded_normal(seeds, (self.z_dim,)).to(self.mapping.w_avg.device)
        options = {"psi": self.truncation_psi, "cutoff": self.truncation_cutoff}
        with torch.no_grad():
            # One mapping call per seed: a batched matmul may take a different kernel for each
            # batch size, and a latent must not depend on the batch it was drawn in.
            rows = [self.mapping(z[i : i + 1], self.class_vector(1), **options) for i in range(len(seeds))]
        return torch.cat(rows) if rows else z.new_empty((0, *self.latent_shape))

    def broadcast_w(self, w: Tensor) -> Tensor:
        """W latents (N, w_dim) as W+ (N, num_ws, w_dim), the same row in every layer."""
        if w.ndim != 2 or w.shape[1] != self.w_dim:
            raise ImageError(f"w: expected shape (N, {self.w_dim}), got {tuple(w.shape)}")
        return w[:, None].expand(-1, self.num_ws, -1)


def check_class_index(class_index: int | None, c_dim: int) -> int | None:
    """A conditional generator needs a class in 0..c_dim-1; an unconditional one takes none."""
    if c_dim == 0:
        if class_index is not None:
            raise ConfigError(
                f"generator.class_index: {class_index} was given but the generator is unconditional; remove it"
            )
        return None
    if class_index is None or not 0 <= int(class_index) < c_dim:
        raise ConfigError(
            f"generator.class_index: a conditional generator with {c_dim} classes needs an index in 0..{c_dim - 1}, "
            f"got {class_index}"
        )
    return int(class_index)
