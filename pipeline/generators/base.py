"""The face-generator interface every profile implements.

A generator speaks in seeds: `sample_latents(seeds)` draws one latent per seed from its own
random state, so an image depends only on its seed, never on batch or shard size. `synthesize`
is the differentiable path (float images in [-1, 1]) that editing losses backpropagate through;
`render` is the inference path that returns uint8 RGB for saving.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pipeline.errors import ImageError


class FaceGenerator(nn.Module, ABC):
    """A pretrained generator mapping latents to RGB faces.

    Subclasses set `latent_shape` (the per-sample shape of the latents that edits move, e.g.
    `(100,)` for the DCGAN z or `(num_ws, w_dim)` for StyleGAN2 W+) and `resolution` (the side
    of the square output in pixels).
    """

    latent_shape: tuple[int, ...]
    resolution: int

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abstractmethod
    def sample_latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """Latents of shape `(len(seeds), *latent_shape)`, one independent draw per seed."""

    @abstractmethod
    def synthesize(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable rendering: `(N, *latent_shape)` to float images `(N, 3, R, R)` in [-1, 1]."""

    def describe(self) -> dict[str, Any]:
        """What a dataset card says of the generator: family, architecture, latent space, and
        (where there is one) how the W average was obtained. Plain JSON values."""
        return {"family": type(self).__name__, "resolution": self.resolution, "latent_shape": list(self.latent_shape)}

    @torch.no_grad()
    def render(self, latents: torch.Tensor) -> torch.Tensor:
        """Images as uint8 RGB `(N, R, R, 3)` on the CPU, ready to save."""
        return to_uint8(self.synthesize(latents.to(self.device)))

    def check_latents(self, latents: torch.Tensor) -> None:
        """Refuse latents whose per-sample shape is not `latent_shape`."""
        if latents.ndim != len(self.latent_shape) + 1 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ImageError(
                f"latents: expected shape (N, {', '.join(map(str, self.latent_shape))}), "
                f"got {tuple(latents.shape)}"
            )


def seeded_normal(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Standard-normal draws, one CPU random state per seed, stacked to `(len(seeds), *shape)`.

    Drawing on the CPU makes the values identical on every device and for every batch size.
    """
    draws = []
    for seed in seeds:
        if not 0 <= int(seed) < 2**63:
            raise ValueError(f"seed: expected an integer in [0, 2**63), got {seed}")
        state = torch.Generator(device="cpu").manual_seed(int(seed))
        draws.append(torch.randn(shape, generator=state))
    return torch.stack(draws) if draws else torch.empty((0, *shape))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float `(N, 3, H, W)` in [-1, 1] to uint8 `(N, H, W, 3)` on the CPU (round half to even)."""
    scaled = (images.detach().float().clamp(-1, 1) + 1) * 127.5
    return scaled.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()
