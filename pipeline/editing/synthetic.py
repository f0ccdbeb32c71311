"""Tiny differentiable stand-ins for a face generator and a landmark detector.

They let the editing code (directions, editor training, HFLD, refinement) run end to end in a
fraction of a second, with no model files: for tests, and for trying a configuration before
spending time on real models. Both are fixed random maps drawn from a seed, so they are the
same on every machine. Nothing here looks like a face.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pipeline.generators.base import FaceGenerator, seeded_normal


class TinyGenerator(FaceGenerator):
    """Latents `(N, *latent_shape)` to images `(N, 3, R, R)` in [-1, 1]: `tanh` of a random linear map."""

    def __init__(self, latent_shape: Sequence[int] = (8,), *, resolution: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.resolution = resolution
        generator = torch.Generator().manual_seed(seed)
        fan_in = math.prod(self.latent_shape)
        self.weight = nn.Parameter(
            torch.randn(3 * resolution * resolution, fan_in, generator=generator) / math.sqrt(fan_in)
        )
        self.requires_grad_(False)

    def sample_latents(self, seeds: Sequence[int]) -> torch.Tensor:
        return seeded_normal(seeds, self.latent_shape).to(self.device)

    def synthesize(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        pixels = torch.tanh(latents.reshape(len(latents), -1) @ self.weight.T)
        return pixels.reshape(len(latents), 3, self.resolution, self.resolution)


class TinyLandmarks(nn.Module):
    """Images `(N, 3, R, R)` to `num_points` landmarks `(N, K, dims)`: a template plus a random linear read-out."""

    def __init__(self, resolution: int = 8, *, num_points: int = 6, dims: int = 2, seed: int = 1) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        fan_in = 3 * resolution * resolution
        self.template = nn.Parameter(torch.randn(num_points, dims, generator=generator) * 10)
        self.readout = nn.Parameter(torch.randn(num_points * dims, fan_in, generator=generator) / math.sqrt(fan_in))
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        offsets = images.reshape(len(images), -1) @ self.readout.T
        return self.template + offsets.reshape(len(images), *self.template.shape)
