"""StyleGAN2 checkpoints: every upstream layout loads to the same images; hostile files run nothing.

Each file is written here the way its upstream project writes it: rosinality's `torch.save` dicts
(`g_ema`, `latent_avg`, `args` namespace, optimiser states; pSp's `decoder.` state dict), and
NVIDIA's pickles, whose networks are persistence records (`_reconstruct_persistent_obj` with the
module source, class name and module state) rebuilt by stand-in `torch_utils` / `dnnlib` modules
that exist only while the bytes are written.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from pipeline.errors import CheckpointError, ConfigError
from pipeline.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator
from pipeline.generators.checkpoint_files import detect_format
from pipeline.generators.checkpoints import convert_checkpoint, load_stylegan, read_checkpoint
from pipeline.generators.nvidia_pickle import unpickle_nvidia
from nvidia_fixtures import EasyDict, Persistent, dump_nvidia, nvidia_generator, persistent
from stylegan2_fixtures import (
    CHANNEL_BASE,
    CHANNEL_MAX,
    RESOLUTION,
    rosinality_state_dict,
    save_rosinality,
    small_config,
    small_generator,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generator() -> StyleGAN2Generator:
    return small_generator()


def images(generator: StyleGAN2Generator, latents: Tensor) -> Tensor:
    with torch.no_grad():
        return generator.synthesize(latents)


def assert_same_generator(loaded: StyleGAN2Generator, reference: StyleGAN2Generator) -> None:
    """Bit-identical renders of fixed W+ latents, and of seeds through the mapping network."""
    assert loaded.config == reference.config
    latents = reference.sample_latents([0, 1, 2])
    assert torch.equal(images(loaded, latents), images(reference, latents))
    assert torch.equal(loaded.sample_latents([0, 1, 2]), latents)


# --------------------------------------------------------------------------------------------
# rosinality/stylegan2-pytorch layouts


def adam_state(params: int) -> dict[str, Any]:
    group = {"lr": 0.002, "betas": (0.0, 0.99), "eps": 1e-8, "weight_decay": 0, "amsgrad": False}
    return {
        "state": {
            i: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(2)} for i in range(params)
        },
        "param_groups": [group | {"params": list(range(params))}],
    }


def rosinality_training_checkpoint(generator: StyleGAN2Generator) -> dict[str, Any]:
    """What rosinality's train.py saves: no latent_avg, options as an argparse namespace."""
    state = rosinality_state_dict(generator)
    args = argparse.Namespace(
        path="lmdb", arch="stylegan2", iter=800000, batch=16, n_sample=64, size=RESOLUTION,
        r1=10, path_regularize=2, path_batch_shrink=2, d_reg_every=16, g_reg_every=4, mixing=0.9,
        ckpt=None, lr=0.002, channel_multiplier=2, wandb=False, local_rank=0, augment=False,
        augment_p=0, ada_target=0.6, ada_length=500000, ada_every=256, latent=32, n_mlp=2,
        start_iter=0, distributed=False,
    )  # fmt: skip
    return {
        "g": {key: value + 0.01 for key, value in state.items()},
        "d": {"convs.0.0.weight": torch.randn(32, 3, 1, 1), "final_linear.1.bias": torch.zeros(1)},
        "g_ema": state,
        "g_optim": adam_state(3),
        "d_optim": adam_state(2),
        "args": args,
        "ada_aug_p": 0.0,
    }


def test_rosinality_converted_checkpoint_renders_identically(
    tmp_path: Path, generator: StyleGAN2Generator
) -> None:
    """`convert_weight.py` output: g_ema and latent_avg."""
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    save_rosinality(generator, path)
    assert detect_format(path) == "rosinality"
    truncated = StyleGAN2Generator(generator.config, truncation_psi=0.7)
    truncated.load_state_dict(generator.state_dict())
    assert_same_generator(load_stylegan(path, truncation_psi=0.7), truncated.eval())


def test_rosinality_training_checkpoint_estimates_the_w_average(
    tmp_path: Path, generator: StyleGAN2Generator
) -> None:
    path = tmp_path / "550000.pt"
    torch.save(rosinality_training_checkpoint(generator), path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.w_avg_origin.startswith("estimated")
    z = torch.randn(10_000, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            checkpoint.tensors["mapping.w_avg"], generator.mapping.to_w(z).mean(0)
        )
    loaded = load_stylegan(path)
    described = loaded.describe()  # what the dataset card states
    assert (described["family"], described["format"]) == ("StyleGAN2", "rosinality")
    assert described["w_avg"] == checkpoint.w_avg_origin == "estimated: mean of 10000 mapped z (seed 0)"
    assert generator.describe()["w_avg"].startswith("none")  # random weights, read from no file
    latents = generator.sample_latents([7, 8])
    assert torch.equal(images(loaded, latents), images(generator, latents))


@pytest.mark.parametrize("layout", ["psp", "data_parallel", "bare"])
def test_other_rosinality_based_layouts(
    tmp_path: Path, generator: StyleGAN2Generator, layout: str
) -> None:
    state = rosinality_state_dict(generator)
    w_avg = generator.mapping.w_avg.clone()
    if layout == "psp":  # pSp / e4e: encoder and decoder in one state dict, latent_avg per W+ row
        content: dict[str, Any] = {
            "state_dict": {"encoder.input_layer.0.weight": torch.randn(64, 3, 3, 3)}
            | {f"decoder.{key}": value for key, value in state.items()},
            "latent_avg": w_avg.repeat(generator.num_ws, 1),
            "opts": {"output_size": RESOLUTION, "encoder_type": "Encoder4Editing"},
        }
    elif layout == "data_parallel":
        content = {
            "g_ema": {f"module.{key}": value for key, value in state.items()},
            "latent_avg": w_avg,
        }
    else:
        content = state
    path = tmp_path / f"{layout}.pt"
    torch.save(content, path)
    loaded = load_stylegan(path)
    latents = generator.sample_latents([3])
    assert torch.equal(images(loaded, latents), images(generator, latents))
    if layout != "bare":
        assert torch.equal(loaded.mapping.w_avg, w_avg)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("style.9.weight", torch.zeros(32, 32), r"unexpected tensor 'style.9.weight'"),
        (
            "noises.noise_3",
            None,  # removed
            r"missing tensor 'noises.noise_3' \(needed for synthesis.b16.conv0.noise_const\)",
        ),
        ("to_rgb1.bias", torch.zeros(3), r"'to_rgb1.bias': expected shape \(1, 3, 1, 1\), found"),
        ("convs.0.conv.blur.kernel", torch.ones(4, 4), r"'convs.0.conv.blur.kernel' differs"),
    ],
    ids=["extra", "missing", "shape", "filter"],
)
def test_rosinality_rules_refuse_what_they_cannot_place(
    tmp_path: Path, generator: StyleGAN2Generator, key: str, value: Tensor | None, message: str
) -> None:
    state = rosinality_state_dict(generator)
    if value is None:
        del state[key]
    else:
        state[key] = value
    path = tmp_path / "edited.pt"
    torch.save({"g_ema": state, "latent_avg": generator.mapping.w_avg}, path)
    with pytest.raises(CheckpointError, match=message):
        load_stylegan(path)


def test_rosinality_args_must_agree_with_the_tensors(
    tmp_path: Path, generator: StyleGAN2Generator
) -> None:
    content = rosinality_training_checkpoint(generator)
    content["args"].size = 256
    path = tmp_path / "mismatch.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=r"args.size is 256 but the g_ema tensors imply 16"):
        load_stylegan(path)


# --------------------------------------------------------------------------------------------
# NVIDIA stylegan2-ada-pytorch / stylegan3 pickles


def training_snapshot(
    generator: StyleGAN2Generator, g_ema: Persistent | None = None
) -> dict[str, Any]:
    """training_loop.py's `network-snapshot-*.pkl` content."""
    discriminator = persistent("Discriminator", {"c_dim": 0, "img_resolution": RESOLUTION})
    discriminator.b16 = persistent("DiscriminatorBlock", {"in_channels": 0, "tmp_channels": 16})
    discriminator.b16.register_buffer("resample_filter", torch.ones(4, 4) / 16)
    augment_pipe = persistent("AugmentPipe", {"xflip": 1, "rotate90": 1, "xint": 1})
    augment_pipe.register_buffer("p", torch.tensor(0.2))
    dataset = EasyDict(
        class_name="training.dataset.ImageFolderDataset",
        path="~/datasets/ffhq.zip",
        use_labels=False,
        max_size=70000,
        xflip=True,
        resolution=RESOLUTION,
    )
    return {
        "G": nvidia_generator(small_generator(seed=1)),
        "D": discriminator,
        "G_ema": g_ema if g_ema is not None else nvidia_generator(generator),
        "augment_pipe": augment_pipe,
        "training_set_kwargs": dataset,
    }


@pytest.mark.parametrize("conv_clamp", [None, 256.0])
def test_nvidia_snapshot_renders_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conv_clamp: float | None
) -> None:
    generator = small_generator(small_config(conv_clamp=conv_clamp))
    path = dump_nvidia(
        tmp_path / "network-snapshot-001000.pkl", training_snapshot(generator), monkeypatch
    )
    assert detect_format(path) == "nvidia"
    checkpoint = read_checkpoint(path)
    assert checkpoint.config.conv_clamp == conv_clamp
    assert checkpoint.w_avg_origin == "checkpoint"
    assert_same_generator(load_stylegan(path), generator)


def test_every_pickle_protocol_renders_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, generator: StyleGAN2Generator
) -> None:
    # Python 3.7, which stylegan2-ada-pytorch recommends, pickles with protocol 3 by default.
    loaded = {}
    for protocol in (2, 3, 4, 5):
        path = dump_nvidia(
            tmp_path / f"protocol-{protocol}.pkl",
            training_snapshot(generator),
            monkeypatch,
            protocol=protocol,
        )
        assert path.read_bytes()[:2] == bytes([0x80, protocol])
        loaded[protocol] = read_checkpoint(path)
        assert_same_generator(load_stylegan(path), generator)
    for protocol in (2, 3, 5):
        assert loaded[protocol].config == loaded[4].config
        assert loaded[protocol].tensors.keys() == loaded[4].tensors.keys()
        for name, tensor in loaded[4].tensors.items():
            assert torch.equal(loaded[protocol].tensors[name], tensor), (protocol, name)


def test_numpy_attributes_decode_under_every_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, generator: StyleGAN2Generator
) -> None:
    # StyleGAN3 layers keep sizes and sampling rates as numpy arrays and scalars.
    values = {
        "sampling": np.array([[1.5, 2.0], [3.0, -4.25]], dtype=">f4"),
        "sizes": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "mask": np.array([True, False, True]),
        "cutoff": np.float32(0.75),
        "flag": np.bool_(True),
    }
    g_ema: Any = nvidia_generator(generator)
    for name, value in values.items():
        setattr(g_ema.synthesis.b8, name, value)
    for protocol in (2, 3, 4, 5):
        path = dump_nvidia(
            tmp_path / f"p{protocol}.pkl",
            training_snapshot(generator, g_ema),
            monkeypatch,
            protocol=protocol,
        )
        record = unpickle_nvidia(path)["G_ema"]
        b8 = record.state["_modules"]["synthesis"].state["_modules"]["b8"].state
        for name, value in values.items():
            decoded = b8[name]
            if isinstance(value, np.ndarray):
                assert isinstance(decoded, np.ndarray) and decoded.dtype.isnative, (protocol, name)
                assert decoded.dtype == value.dtype.newbyteorder("=")
                assert np.array_equal(decoded, value), (protocol, name)
            else:
                assert decoded == value.item() and type(decoded) is type(value.item())


class Latin1Twin:
    """Pickles as `_codecs.encode(text, encoding)`, the call protocol 2 uses for bytes."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding

    def __reduce__(self) -> tuple[Any, ...]:
        return (codecs.encode, ("payload", self.encoding))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (np.array(["text", 1], dtype=object), r"unsupported numpy dtype 'O8'"),
        (Latin1Twin("rot13"), r"_codecs.encode is allowed only to rebuild latin-1 bytes"),
    ],
)
def test_allowed_globals_refuse_what_they_are_not_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, generator: StyleGAN2Generator,
    value: object, reason: str,
) -> None:
    g_ema: Any = nvidia_generator(generator)
    g_ema.synthesis.b8.payload = value
    path = dump_nvidia(
        tmp_path / "odd.pkl", training_snapshot(generator, g_ema), monkeypatch, protocol=2
    )
    with pytest.raises(CheckpointError, match=rf"not a readable NVIDIA network pickle \({reason}"):
        load_stylegan(path)


def test_nvidia_module_source_is_never_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, generator: StyleGAN2Generator
) -> None:
    marker = tmp_path / "module_src-ran"
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    g_ema = nvidia_generator(generator)
    for module in g_ema.modules():
        assert isinstance(module, Persistent)
        type(module).module_src = payload  # each record has a class of its own
    path = dump_nvidia(tmp_path / "payload.pkl", training_snapshot(generator, g_ema), monkeypatch)
    assert payload.encode() in path.read_bytes()
    assert_same_generator(load_stylegan(path), generator)
    assert not marker.exists()
    # Control: the payload is live, running it is what leaves the marker.
    exec(compile(payload, "module_src", "exec"), {})
    assert marker.exists()


class SystemCall:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class Eval:
    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (self.source,))


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_hostile_pickles_are_refused_before_anything_runs(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "hostile-ran"
    payload: object = (
        SystemCall(f"touch {marker}")
        if kind == "os.system"
        else Eval(f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')")
    )
    path = tmp_path / "hostile.pkl"
    path.write_bytes(pickle.dumps({"G_ema": payload, "G": None, "D": None}, protocol=4))
    expected = rf"refused to unpickle ({os.system.__module__}\.system|builtins\.eval)"
    with pytest.raises(CheckpointError, match=expected):
        load_stylegan(path)
    assert not marker.exists()


class TensorFlowNetwork:
    """Pickled under dnnlib.tflib.network.Network, as StyleGAN2's TensorFlow pickles are."""

    def __init__(self, name: str) -> None:
        self.name, self.static_kwargs = name, {"resolution": RESOLUTION}


TensorFlowNetwork.__module__, TensorFlowNetwork.__qualname__ = "dnnlib.tflib.network", "Network"


def test_tensorflow_pickles_are_refused_with_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        for name in ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network"):
            patch.setitem(sys.modules, name, types.ModuleType(name))
        sys.modules["dnnlib.tflib.network"].Network = TensorFlowNetwork  # type: ignore[attr-defined]
        content = tuple(TensorFlowNetwork(name) for name in ("G", "D", "Gs"))
        path = tmp_path / "stylegan2-ffhq-config-f.pkl"
        path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(
        CheckpointError, match=r"TensorFlow pickle: convert it with NVIDIA's legacy"
    ):
        load_stylegan(path)


def test_hostile_rosinality_archive_is_refused(
    tmp_path: Path, generator: StyleGAN2Generator
) -> None:
    marker = tmp_path / "hostile-ran"
    path = tmp_path / "hostile.pt"
    torch.save(
        {"g_ema": rosinality_state_dict(generator), "args": SystemCall(f"touch {marker}")}, path
    )
    refusal = rf"refers to {os.system.__module__}\.system, which is not on the weights-only"
    with pytest.raises(CheckpointError, match=refusal):
        load_stylegan(path)
    assert not marker.exists()


def test_resnet_generators_and_unknown_options_are_refused_naming_what_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, generator: StyleGAN2Generator
) -> None:
    g_ema = nvidia_generator(generator, extra_options={"magnitude_ema_beta": 0.999})
    path = dump_nvidia(tmp_path / "option.pkl", training_snapshot(generator, g_ema), monkeypatch)
    with pytest.raises(
        CheckpointError, match=r"G_ema option 'magnitude_ema_beta'=0.999 is not supported"
    ):
        load_stylegan(path)
    g_ema = nvidia_generator(generator)
    g_ema.synthesis.b8.architecture = "resnet"
    path = dump_nvidia(tmp_path / "resnet.pkl", training_snapshot(generator, g_ema), monkeypatch)
    with pytest.raises(
        CheckpointError,
        match=r"G_ema.synthesis.b8.architecture is 'resnet', expected 'skip': exprlock reads StyleGAN2 generators "
        r"of the 'skip' architecture, unconditional or conditional .* and StyleGAN3 generators of configs T and R",
    ):
        load_stylegan(path)
    g_ema = nvidia_generator(generator)
    g_ema.synthesis.b8.conv0 = persistent("SuperresLayer", {})  # e.g. a StyleGAN-XL module
    path = dump_nvidia(tmp_path / "xl.pkl", training_snapshot(generator, g_ema), monkeypatch)
    with pytest.raises(CheckpointError, match=r"G_ema.synthesis.b8.conv0 is a 'SuperresLayer' module, not one of"):
        load_stylegan(path)


def test_conditional_generator_renders_each_class_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = small_generator(small_config(c_dim=4), class_index=0)
    path = dump_nvidia(tmp_path / "conditional.pkl", training_snapshot(generator, nvidia_generator(generator)), monkeypatch)
    seeds = [0, 1]
    latents = {}
    for class_index in range(4):
        loaded = load_stylegan(path, class_index=class_index)
        assert loaded.config == generator.config and loaded.describe()["class_index"] == class_index
        reference = small_generator(small_config(c_dim=4), class_index=class_index)
        latents[class_index] = loaded.sample_latents(seeds)
        assert torch.equal(latents[class_index], reference.sample_latents(seeds))
        assert torch.equal(images(loaded, latents[class_index]), images(reference, latents[class_index]))
    assert not torch.equal(latents[0], latents[1])  # the class changes the face
    for bad in (None, 4):
        with pytest.raises(ConfigError, match=r"generator.class_index: a conditional generator with 4 classes needs an index in 0..3"):
            load_stylegan(path, class_index=bad)
    unconditional = dump_nvidia(tmp_path / "plain.pkl", training_snapshot(small_generator()), monkeypatch)
    with pytest.raises(ConfigError, match=r"generator.class_index: 2 was given but the generator is unconditional"):
        load_stylegan(unconditional, class_index=2)


# --------------------------------------------------------------------------------------------
# Content detection, damaged files, exprlock safetensors


def test_format_is_read_from_content_not_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, generator: StyleGAN2Generator
) -> None:
    rosinality = tmp_path / "looks-like-nvidia.pkl"
    save_rosinality(generator, rosinality)
    nvidia = dump_nvidia(
        tmp_path / "looks-like-rosinality.pt", training_snapshot(generator), monkeypatch
    )
    assert (detect_format(rosinality), detect_format(nvidia)) == ("rosinality", "nvidia")
    assert_same_generator(load_stylegan(rosinality), generator)
    assert_same_generator(load_stylegan(nvidia), generator)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes.txt: unrecognised checkpoint"):
        load_stylegan(text)


def test_truncated_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, generator: StyleGAN2Generator
) -> None:
    rosinality = tmp_path / "r.pt"
    save_rosinality(generator, rosinality)
    nvidia = dump_nvidia(tmp_path / "n.pkl", training_snapshot(generator), monkeypatch)
    converted = convert_checkpoint(rosinality, tmp_path / "s.safetensors")
    for path in (rosinality, nvidia, converted):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=str(path.name)):
            load_stylegan(path)


@pytest.mark.parametrize("source_format", ["rosinality", "nvidia"])
def test_conversion_to_safetensors_round_trips(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    generator: StyleGAN2Generator,
    source_format: str,
) -> None:
    if source_format == "rosinality":
        source = tmp_path / "source.pt"
        save_rosinality(generator, source)
    else:
        source = dump_nvidia(tmp_path / "source.pkl", training_snapshot(generator), monkeypatch)
    target = convert_checkpoint(source, tmp_path / "generator.safetensors")
    assert detect_format(target) == "safetensors"
    assert_same_generator(load_stylegan(target), load_stylegan(source))
    assert_same_generator(load_stylegan(target), generator)
    with safe_open(str(target), framework="pt") as handle:
        metadata = handle.metadata()
    assert StyleGAN2Config.from_dict(json.loads(metadata["config"])) == generator.config
    assert metadata["source_format"] == source_format
    assert metadata["source_sha256"].startswith("sha256:") and metadata["w_avg"] == "checkpoint"
    with pytest.raises(CheckpointError, match="already exists"):
        convert_checkpoint(source, target)
    assert convert_checkpoint(source, target, overwrite=True) == target


def test_foreign_safetensors_are_refused(tmp_path: Path, generator: StyleGAN2Generator) -> None:
    tensors = {k: v.contiguous() for k, v in generator.state_dict().items()}
    foreign = tmp_path / "foreign.safetensors"
    save_file(tensors, str(foreign), metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=r"metadata 'format' is 'pt', expected one of \['exprlock-stylegan2', 'exprlock-stylegan3'\]"
    ):
        load_stylegan(foreign)
    config = generator.config.to_dict() | {"architecture": "resnet"}
    metadata = {"format": "exprlock-stylegan2", "format_version": "1", "config": json.dumps(config)}
    save_file(tensors, str(foreign), metadata=metadata)
    with pytest.raises(
        CheckpointError, match=r"metadata 'config'.*unknown keys \['architecture'\]"
    ):
        load_stylegan(foreign)


# --------------------------------------------------------------------------------------------
# Against NVIDIA's own code


@pytest.mark.slow
def test_matches_nvidia_reference_implementation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NVIDIA's networks, pickled by their own persistence module, render as exprlock's port.

    Needs a checkout of NVlabs/stylegan2-ada-pytorch or NVlabs/stylegan3 (their CPU reference
    paths run without compiling anything).
    """
    repo = os.environ.get("EXPRLOCK_STYLEGAN2_REFERENCE")
    if not repo:
        pytest.skip(
            "set EXPRLOCK_STYLEGAN2_REFERENCE to a checkout of NVlabs/stylegan2-ada-pytorch "
            "or NVlabs/stylegan3"
        )
    monkeypatch.syspath_prepend(repo)
    options = {"channel_base": CHANNEL_BASE, "channel_max": CHANNEL_MAX}
    common: dict[str, Any] = {"z_dim": 32, "c_dim": 0, "w_dim": 32, "img_resolution": RESOLUTION}
    common |= {"img_channels": 3, "mapping_kwargs": {"num_layers": 2}}
    if (Path(repo) / "training" / "networks_stylegan2.py").exists():
        from training.networks_stylegan2 import Generator  # type: ignore[import-not-found]

        reference = Generator(**common, **options)
    else:
        from training.networks import Generator  # type: ignore[import-not-found]

        reference = Generator(**common, synthesis_kwargs=options)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in reference.named_parameters():
            if name.endswith("noise_strength"):
                tensor.fill_(0.3)
        reference.mapping.w_avg.normal_()
    path = tmp_path / "reference.pkl"
    path.write_bytes(pickle.dumps({"G_ema": reference.eval(), "G": None, "D": None}))
    loaded = load_stylegan(path, truncation_psi=0.7, truncation_cutoff=4)
    z = torch.randn(3, 32)
    with torch.no_grad():
        ws = reference.mapping(z, None, truncation_psi=0.7, truncation_cutoff=4)
        expected = reference.synthesis(ws, noise_mode="const", force_fp32=True).clamp(-1, 1)
        torch.testing.assert_close(loaded.mapping(z, psi=0.7, cutoff=4), ws, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.synthesize(ws), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# The generator in a run


def test_generate_runs_on_a_stylegan2_checkpoint(tmp_path: Path, generator: StyleGAN2Generator) -> None:
    from data_schemas import Col
    from pipeline.config import parse_config
    from pipeline.images import read_png
    from pipeline.storage.manifest import read_manifest
    from pipeline.storage.layout import prepare_run
    from pipeline.stages.generate import generate_shard

    checkpoint = tmp_path / "g.pt"
    save_rosinality(generator, checkpoint)
    config = parse_config(
        {
            "profile": "ffhq",
            "generator": {"checkpoint": str(checkpoint)},
            "sources": {"count": 3},
            "scoring": {"enabled": False},
            "device": "cpu",
        }
    )
    run_dir = prepare_run(config, tmp_path / "run")
    generate_shard(config, run_dir, 0)
    table = read_manifest(run_dir)
    assert table.column(Col.LATENT_SHAPE)[0].as_py() == [generator.config.num_ws, generator.config.w_dim]
    assert table.column(Col.GENERATOR)[0].as_py() == "stylegan2:g.pt"
    latents = generator.sample_latents([0, 1, 2])
    expected = generator.render(latents).numpy()
    for row, image_path in enumerate(table.column(Col.IMAGE_SOURCE).to_pylist()):
        assert (read_png(run_dir / image_path) == expected[row]).all()
    stored = torch.tensor(table.column(Col.LATENT)[1].as_py()).view(latents.shape[1:])
    assert torch.equal(stored, latents[1])


def test_convert_command_writes_a_loadable_file(tmp_path: Path, generator: StyleGAN2Generator) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    source = tmp_path / "g.pt"
    save_rosinality(generator, source)
    target = tmp_path / "g.safetensors"
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(source), str(target)])
    assert result.exit_code == 0, result.output
    assert_same_generator(load_stylegan(target), generator)
    again = runner.invoke(app, ["convert", str(source), str(target)])
    assert again.exit_code == 2 and "already exists" in again.output
