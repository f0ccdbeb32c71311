"""The demo profile's generator: a 64x64 DCGAN trained on DigiFace-1M.

Architecture of Radford et al. 2016 ("Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks") as in the PyTorch DCGAN tutorial, which the
`gan-face-generate==1.1.1` weights were trained with: z in R^100 through five transposed
convolutions to a 64x64 RGB image. There is no W space; edits move z directly.
Weights: asset `dcgan-digiface` (MIT code; DigiFace-1M training data is non-commercial research only).
"""

from __future__ import annotations

import warnings

from collections.abc import Sequence
from typing import Any
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.models.assets import asset_path
from pipeline.generators.base import FaceGenerator, seeded_normal

LATENT_DIM = 100
FEATURES = 64


def _up_block(in_channels: int, out_channels: int, *, first: bool = False) -> list[nn.Module]:
    stride, padding = (1, 0) if first else (2, 1)
    return [
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(True),
    ]


class DCGANGenerator(FaceGenerator):
    """z (N, 100) to RGB (N, 3, 64, 64); BatchNorm always in inference mode."""

    latent_shape = (LATENT_DIM,)
    resolution = 64

    def __init__(self) -> None:
        super().__init__()
        f = FEATURES
        # Module indices match the checkpoint's `main.{i}` keys.
        self.main = nn.Sequential(
            *_up_block(LATENT_DIM, f * 8, first=True),
            *_up_block(f * 8, f * 4),
            *_up_block(f * 4, f * 2),
            *_up_block(f * 2, f),
            nn.ConvTranspose2d(f, 3, 4, 2, 1, bias=False),
            nn.Tanh(),
        )
        self.eval()

    def train(self, mode: bool = True) -> DCGANGenerator:
        """Stay in inference mode: batch statistics would make an image depend on its batch."""
        return super().train(False)

    def sample_latents(self, seeds: Sequence[int]) -> torch.Tensor:
        return seeded_normal(seeds, self.latent_shape).to(self.device)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "family": "DCGAN",
            "latent": f"z ~ N(0, I) in R^{LATENT_DIM}, one draw per seed",
            "w_avg": "none: no mapping network and no truncation; z is drawn directly",
        }

    def synthesize(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1]. On the CPU, oneDNN is kept out: on CPUs with AMX it picks its
        transposed-convolution kernels by batch size, and the images then differ by a grey level
        between batch sizes, while a face must render the same in any batch (resumed, repaired and
        out-of-memory-halved shards rely on it). ATen's own kernels cost about 1.3 times as much."""
        self.check_latents(latents)
        if self.device.type != "cpu":
            return self.main(latents.to(self.device)[:, :, None, None])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the flags' note on TF32 for Intel GPUs
            with torch.backends.mkldnn.flags(enabled=False):
                return self.main(latents[:, :, None, None])


def load_dcgan(path: Path | None = None, *, device: str | torch.device = "cpu") -> DCGANGenerator:
    """The DCGAN with weights from `path` (default: the verified `dcgan-digiface` asset)."""
    path = Path(path) if path is not None else asset_path("dcgan-digiface")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable files
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or "netG_state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: expected a dict with key 'netG_state_dict' (gan-face-generate layout)")
    generator = DCGANGenerator()
    state = checkpoint["netG_state_dict"]
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: DCGAN keys do not match; missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )
    generator.load_state_dict(state)
    return generator.to(device)
