"""StyleGAN3 and conditional generators render what NVIDIA's own code renders.

`data/stylegan_reference.npz` holds small random networks built, randomised and rendered by
NVlabs/stylegan3 (`data/make_stylegan_reference.py`): configs T and R at 64 px, T at 256 px, T with
a moved input (translation and rotation), and conditional StyleGAN3-T and StyleGAN2 networks. Each
is written here as an NVIDIA pickle (persistence records named and shaped as NVIDIA's modules are)
from NVIDIA's state dict, loaded by exprlock and rendered from NVIDIA's W+ latents.
"""

from __future__ import annotations

import json
import os
import pickle
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from nvidia_fixtures import dump_nvidia, nvidia_generator, nvidia_stylegan3, stylegan3_config
from pipeline.errors import CheckpointError
from pipeline.generators.checkpoints import convert_checkpoint, load_stylegan, read_checkpoint
from pipeline.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator, channels_nvidia
from pipeline.generators.stylegan3 import StyleGAN3Generator

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = Path(__file__).parent / "data" / "stylegan_reference.npz"
STYLEGAN3_CASES = ["t64", "t64_moved", "r64", "t256", "t64_conditional"]


@cache
def reference(name: str) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """(meta, NVIDIA state dict, arrays z / ws / images) of one stored case."""
    with np.load(REFERENCE) as data:
        meta = json.loads(str(data[f"{name}/meta"]))
        prefix = f"{name}/state/"
        state = {key[len(prefix):]: torch.from_numpy(data[key].copy()) for key in data.files if key.startswith(prefix)}
        arrays = {part: torch.from_numpy(data[f"{name}/{part}"].copy()) for part in ("z", "ws", "images")}
    return meta, state, arrays


def class_of(meta: dict[str, Any], row: int) -> int | None:
    """Rows of a conditional case take the classes in turn (one-hot c = eye(c_dim), repeated)."""
    c_dim = meta["options"]["c_dim"]
    return row % c_dim if c_dim else None


@pytest.mark.parametrize("name", STYLEGAN3_CASES)
def test_stylegan3_pickle_renders_as_nvidia_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    meta, state, arrays = reference(name)
    path = dump_nvidia(tmp_path / "g.pkl", {"G_ema": nvidia_stylegan3(meta, state), "G": None, "D": None}, monkeypatch)
    checkpoint = read_checkpoint(path)
    assert (checkpoint.family, checkpoint.config) == ("stylegan3", stylegan3_config(meta))
    expected = arrays["images"].clamp(-1, 1)
    for row in range(expected.shape[0]):
        loaded = load_stylegan(path, truncation_psi=meta["psi"], truncation_cutoff=meta["cutoff"], class_index=class_of(meta, row))
        assert isinstance(loaded, StyleGAN3Generator)
        with torch.no_grad():
            ws = loaded.mapping(arrays["z"][row : row + 1], loaded.class_vector(1), psi=meta["psi"], cutoff=meta["cutoff"])
            torch.testing.assert_close(ws, arrays["ws"][row : row + 1], rtol=1e-5, atol=1e-5)
            image = loaded.synthesize(arrays["ws"][row : row + 1])
        # Float32 rounding stays far inside both bounds (about 1e-6 on these networks).
        assert (image - expected[row : row + 1]).abs().max() < (1e-5 if meta["options"]["c_dim"] else 1e-3)


def test_input_transform_is_the_one_nvidia_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, state, _ = reference("t64_moved")
    generator = StyleGAN3Generator(stylegan3_config(meta))
    generator.set_input_transform(translate=meta["translate"], rotate=meta["rotate"])
    torch.testing.assert_close(generator.synthesis.input.transform, state["synthesis.input.transform"])


def test_every_pickle_protocol_renders_stylegan3_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, state, arrays = reference("r64")
    record = {"G_ema": nvidia_stylegan3(meta, state), "G": None, "D": None}
    rendered = []
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        path = dump_nvidia(tmp_path / f"p{protocol}.pkl", record, monkeypatch, protocol=protocol)
        with torch.no_grad():
            rendered.append(load_stylegan(path).synthesize(arrays["ws"]))
    assert all(torch.equal(image, rendered[0]) for image in rendered[1:])


def test_stylegan3_converts_to_safetensors_and_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, state, arrays = reference("t64_conditional")
    source = dump_nvidia(tmp_path / "g.pkl", {"G_ema": nvidia_stylegan3(meta, state)}, monkeypatch)
    target = convert_checkpoint(source, tmp_path / "g.safetensors")
    converted, original = load_stylegan(target, class_index=2), load_stylegan(source, class_index=2)
    assert converted.describe() | {"format": None} == original.describe() | {"format": None}
    assert converted.describe()["family"] == "StyleGAN3-T" and converted.describe()["format"] == "safetensors"
    with torch.no_grad():
        assert torch.equal(converted.synthesize(arrays["ws"]), original.synthesize(arrays["ws"]))
    assert torch.equal(converted.sample_latents([5]), original.sample_latents([5]))


def test_layers_that_differ_from_the_recorded_options_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, state, _ = reference("t64")
    g_ema: Any = nvidia_stylegan3(meta, state)
    name = g_ema.synthesis.layer_names[3]
    getattr(g_ema.synthesis, name).padding = [0, 0, 0, 0]
    path = dump_nvidia(tmp_path / "g.pkl", {"G_ema": g_ema}, monkeypatch)
    with pytest.raises(CheckpointError, match=rf"G_ema.synthesis.{name}.padding is \[0, 0, 0, 0\], expected \[\d+, \d+, \d+, \d+\]"):
        load_stylegan(path)
    g_ema = nvidia_stylegan3(meta, state)
    g_ema._init_kwargs["pixel_norm"] = True
    path = dump_nvidia(tmp_path / "option.pkl", {"G_ema": g_ema}, monkeypatch)
    with pytest.raises(CheckpointError, match=r"G_ema option 'pixel_norm' is not supported"):
        load_stylegan(path)


def test_conditional_stylegan2_renders_each_class_as_nvidia_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, state, arrays = reference("sg2_32_conditional")
    options = meta["options"]
    config = StyleGAN2Config(
        resolution=options["img_resolution"],
        channels=channels_nvidia(options["img_resolution"], options["channel_base"], options["channel_max"]),
        z_dim=options["z_dim"],
        w_dim=options["w_dim"],
        mapping_layers=options["mapping_kwargs"]["num_layers"],
        c_dim=options["c_dim"],
        conv_clamp=None,
    )
    ours = StyleGAN2Generator(config, class_index=0)
    ours.load_state_dict({key: value for key, value in state.items() if not key.endswith("resample_filter")})
    g_ema = nvidia_generator(ours, channel_base=options["channel_base"], channel_max=options["channel_max"])
    path = dump_nvidia(tmp_path / "g.pkl", {"G_ema": g_ema}, monkeypatch)
    for row in range(arrays["z"].shape[0]):
        loaded = load_stylegan(path, truncation_psi=meta["psi"], truncation_cutoff=meta["cutoff"], class_index=class_of(meta, row))
        with torch.no_grad():
            ws = loaded.mapping(arrays["z"][row : row + 1], loaded.class_vector(1), psi=meta["psi"], cutoff=meta["cutoff"])
            torch.testing.assert_close(ws, arrays["ws"][row : row + 1], rtol=1e-5, atol=1e-5)
            image = loaded.synthesize(arrays["ws"][row : row + 1], noise_mode="const")
        assert (image - arrays["images"][row : row + 1].clamp(-1, 1)).abs().max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("config_name", "resolution"), [("T", 64), ("R", 64), ("T", 256), ("R", 256)])
def test_matches_nvidia_stylegan3_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config_name: str, resolution: int) -> None:
    """NVIDIA's StyleGAN3, pickled by its own persistence module (the real file format), renders
    as exprlock's port, with a moved input and truncation.

    Needs a checkout of NVlabs/stylegan3 (its CPU reference paths run without compiling anything;
    `torch_utils` imports `pkg_resources`, from setuptools < 81).
    """
    repo = os.environ.get("EXPRLOCK_STYLEGAN3_REFERENCE")
    if not repo:
        pytest.skip("set EXPRLOCK_STYLEGAN3_REFERENCE to a checkout of NVlabs/stylegan3")
    monkeypatch.syspath_prepend(repo)
    from training.networks_stylegan3 import Generator  # type: ignore[import-not-found]

    options: dict[str, Any] = {"channel_base": 1024, "channel_max": 16}
    if config_name == "R":
        options |= {"channel_base": 2048, "channel_max": 32, "conv_kernel": 1, "use_radial_filters": True}
    torch.manual_seed(1)
    network = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=resolution, img_channels=3, mapping_kwargs={"num_layers": 2}, **options)
    with torch.no_grad():
        for name, tensor in network.named_parameters():
            tensor.copy_(torch.randn_like(tensor) * (0.5 if "affine" in name else 1.0))
        network.mapping.w_avg.normal_()
    path = tmp_path / "reference.pkl"
    path.write_bytes(pickle.dumps({"G_ema": network.eval(), "G": None, "D": None}))
    loaded = load_stylegan(path, truncation_psi=0.7, truncation_cutoff=4)
    assert isinstance(loaded, StyleGAN3Generator) and loaded.config.name == config_name
    loaded.set_input_transform(translate=(0.05, -0.1), rotate=15.0)
    network.synthesis.input.transform.copy_(loaded.synthesis.input.transform)
    z = torch.randn(2, 32)
    with torch.no_grad():
        ws = network.mapping(z, None, truncation_psi=0.7, truncation_cutoff=4)
        expected = network.synthesis(ws, force_fp32=True).clamp(-1, 1)
        torch.testing.assert_close(loaded.mapping(z, psi=0.7, cutoff=4), ws, rtol=1e-5, atol=1e-5)
        difference = (loaded.synthesize(ws) - expected).abs().max().item()
    print(f"StyleGAN3-{config_name} {resolution} px: max abs difference {difference:.2e}")
    assert difference < 1e-3
