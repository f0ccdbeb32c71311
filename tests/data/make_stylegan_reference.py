"""Writes stylegan_reference.npz: small random networks built and rendered by NVIDIA's own code.

For each case it stores NVIDIA's construction options, every tensor of NVIDIA's state dict
(random weights, W average, input-gain buffers, designed filters), the z and class inputs, the
truncation, the input transform and the images NVIDIA's CPU reference path renders (float32).
`tests/test_stylegan_reference.py` writes each network as an NVIDIA pickle record and checks that
exprlock renders the stored images, so the parity with NVIDIA's code is tested in CI without it.

Needs a checkout of NVlabs/stylegan3 (its StyleGAN2 and StyleGAN3 networks run on the CPU without
compiling anything; `torch_utils` imports `pkg_resources`, from setuptools < 81):

    python tests/data/make_stylegan_reference.py /path/to/stylegan3
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUT = Path(__file__).with_name("stylegan_reference.npz")
SMALL = {"z_dim": 32, "w_dim": 32, "img_channels": 3, "mapping_kwargs": {"num_layers": 2}}
# name: (family, options, number of z, translate, rotate)
CASES: dict[str, tuple[str, dict[str, Any], int, tuple[float, float], float]] = {
    "t64": ("stylegan3", {"c_dim": 0, "img_resolution": 64, "channel_base": 1024, "channel_max": 16}, 2, (0.0, 0.0), 0.0),
    "t64_moved": ("stylegan3", {"c_dim": 0, "img_resolution": 64, "channel_base": 1024, "channel_max": 16}, 1, (0.1, -0.05), 20.0),
    "r64": ("stylegan3", {"c_dim": 0, "img_resolution": 64, "channel_base": 2048, "channel_max": 32,
                          "conv_kernel": 1, "use_radial_filters": True}, 2, (0.0, 0.0), 0.0),
    "t256": ("stylegan3", {"c_dim": 0, "img_resolution": 256, "channel_base": 1024, "channel_max": 8}, 1, (0.0, 0.0), 0.0),
    "t64_conditional": ("stylegan3", {"c_dim": 3, "img_resolution": 64, "channel_base": 1024, "channel_max": 16}, 1, (0.0, 0.0), 0.0),
    "sg2_32_conditional": ("stylegan2", {"c_dim": 3, "img_resolution": 32, "channel_base": 512, "channel_max": 16}, 1, (0.0, 0.0), 0.0),
}  # fmt: skip
PSI, CUTOFF = 0.7, 4


def make_transform(translate: tuple[float, float], angle: float) -> np.ndarray:
    """The inverse image motion NVIDIA's `gen_images.py` writes into `synthesis.input.transform`."""
    s, c = np.sin(np.radians(angle)), np.cos(np.radians(angle))
    return np.linalg.inv(np.array([[c, s, translate[0]], [-s, c, translate[1]], [0, 0, 1]]))


def build(family: str, options: dict[str, Any]) -> torch.nn.Module:
    if family == "stylegan3":
        from training.networks_stylegan3 import Generator  # type: ignore[import-not-found]
    else:
        from training.networks_stylegan2 import Generator  # type: ignore[import-not-found]
    return Generator(**SMALL, **options).eval()


def randomise(network: torch.nn.Module) -> None:
    """Weights far from NVIDIA's initialisation, so every path (transform, gains) matters."""
    with torch.no_grad():
        for name, tensor in network.named_parameters():
            tensor.copy_(torch.randn_like(tensor) * (0.5 if "affine" in name else 1.0))
        for name, buffer in network.named_buffers():
            if name.endswith("magnitude_ema"):
                buffer.fill_(float(torch.rand(()) * 2 + 0.3))
        network.mapping.w_avg.normal_()


def main(repo: str) -> None:
    sys.path.insert(0, repo)
    torch.manual_seed(0)
    arrays: dict[str, np.ndarray] = {}
    for name, (family, options, count, translate, rotate) in CASES.items():
        network = build(family, options)
        randomise(network)
        if family == "stylegan3":
            network.synthesis.input.transform.copy_(torch.from_numpy(make_transform(translate, rotate)))
        classes = options["c_dim"] or 1
        z = torch.randn(count, SMALL["z_dim"]).repeat_interleave(classes, dim=0)
        c = torch.eye(options["c_dim"]).repeat(count, 1) if options["c_dim"] else None
        with torch.no_grad():
            ws = network.mapping(z, c, truncation_psi=PSI, truncation_cutoff=CUTOFF)
            extra = {"noise_mode": "const"} if family == "stylegan2" else {}
            images = network.synthesis(ws, force_fp32=True, **extra)
        meta = {"family": family, "options": options | SMALL, "psi": PSI, "cutoff": CUTOFF,
                "translate": list(translate), "rotate": rotate}  # fmt: skip
        arrays[f"{name}/meta"] = np.array(json.dumps(meta))
        arrays[f"{name}/z"] = z.numpy()
        arrays[f"{name}/ws"] = ws.numpy()
        arrays[f"{name}/images"] = images.numpy()
        for key, tensor in network.state_dict().items():
            arrays[f"{name}/state/{key}"] = tensor.numpy()
        print(f"{name}: {tuple(images.shape)}, |image| max {images.abs().max():.3f}")
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/data/make_stylegan_reference.py /path/to/NVlabs/stylegan3")
    main(sys.argv[1])
