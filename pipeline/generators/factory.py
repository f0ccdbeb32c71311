"""Build the generator a run config asks for, once per process and device."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from pipeline.config import STYLEGAN_KINDS, RunConfig
from pipeline.errors import ConfigError
from pipeline.models.assets import asset_path, file_sha256
from pipeline.generators.base import FaceGenerator


def resolve_device(device: str) -> torch.device:
    """'auto' is CUDA when present, else the CPU; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(device)


@lru_cache(maxsize=4)
def load_generator(
    kind: str, checkpoint: str | None, truncation_psi: float, device: str, class_index: int | None = None
) -> tuple[FaceGenerator, str, str]:
    """(generator, provenance name, weights SHA-256); cached because loading costs seconds."""
    if kind == "dcgan":
        from pipeline.generators.dcgan import load_dcgan

        path = Path(checkpoint) if checkpoint else asset_path("dcgan-digiface")
        name = "dcgan:" + ("dcgan-digiface" if checkpoint is None else path.name)
        return load_dcgan(path, device=device), name, file_sha256(path)
    if kind in STYLEGAN_KINDS:
        from pipeline.generators.checkpoints import load_stylegan

        path = Path(checkpoint or "")
        generator = load_stylegan(
            path, device=device, truncation_psi=truncation_psi, class_index=class_index, kind=kind  # type: ignore[arg-type]
        )
        return generator, f"{kind}:{path.name}", file_sha256(path)
    raise ValueError(f"generator kind {kind!r} is not one of 'dcgan', {', '.join(map(repr, STYLEGAN_KINDS))}")


def load_run_generator(config: RunConfig, device: str) -> tuple[FaceGenerator, str, str]:
    """`load_generator` with the run config's generator, its checkpoint path resolved."""
    checkpoint = config.checkpoint_path
    return load_generator(
        config.generator_kind,
        str(checkpoint) if checkpoint else None,
        config.generator.truncation_psi,
        device,
        config.generator.class_index,
    )
