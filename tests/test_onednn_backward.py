"""Training and refinement run autograd with oneDNN on: proof that it is safe, and equal.

oneDNN's CPU backward of a 1x1 stride-2 convolution on channels-last tensors crashes (torch
2.13/2.14). No network a preservation loss differentiates through has such a convolution (the
mini-Xception's shortcut is a subsample and a 1x1 stride-1 convolution), so training keeps oneDNN
on, about twice as fast as the native kernels. These tests hold that line: a structural check of
every differentiable network, and a full training step with every preservation term in a child
process (a crash would kill the interpreter) whose gradients equal the native kernels'.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _strided_pointwise(module: torch.nn.Module) -> list[str]:
    """Names of 1x1 convolutions with a stride other than 1 (plain or the TFLite port's)."""
    found = []
    for name, child in module.named_modules():
        weight = getattr(child, "weight", None)
        stride = getattr(child, "stride", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 4 and tuple(weight.shape[2:]) == (1, 1):
            if stride is not None and tuple(stride) != (1, 1):
                found.append(name)
    return found


def test_no_differentiated_network_has_a_strided_pointwise_convolution() -> None:
    from pipeline.generators.dcgan import load_dcgan
    from pipeline.models.assets import asset_path
    from pipeline.models.emotion import EmotionClassifier
    from pipeline.models.face_expression import FaceExpressionClassifier
    from pipeline.models.facemesh import FaceMeshLandmarker
    from pipeline.models.identity import IdentityEncoder
    from pipeline.models.tddfa import load_tddfa

    networks = {
        "dcgan": load_dcgan(),
        "facemesh": FaceMeshLandmarker(),
        "fer": EmotionClassifier(),
        "faceapi": FaceExpressionClassifier(),
        "sface": IdentityEncoder(),
        "3ddfa": load_tddfa(asset_path("tddfa-mobilenet")),
    }
    for name, network in networks.items():
        assert sum(1 for _ in network.modules()) > 1, name
        assert _strided_pointwise(network) == [], name
    assert _strided_pointwise(torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1, stride=2))) == ["0"]  # the check sees them


STEP = textwrap.dedent(
    """
    import sys, torch
    from pipeline.config import PreservationWeights, parse_config
    from pipeline.editing.editor import LatentEditor
    from pipeline.editing.directions import Direction
    from pipeline.editing.latent_classifier import LatentClassifier
    from pipeline.editing.training import EditorTrainer, EditorTrainingConfig
    from pipeline.generators.dcgan import load_dcgan
    from pipeline.objectives import preservation_loss

    torch.backends.mkldnn.enabled = sys.argv[1] == "on"
    torch.manual_seed(0)
    generator = load_dcgan()
    shape = generator.latent_shape
    vector = torch.randn(shape).flatten()
    direction = Direction(name="age", vector=vector / vector.norm(), latent_shape=shape)
    classifier = LatentClassifier(shape, ["age"]).eval()
    weights = PreservationWeights(landmarks=1000.0, emotion=30.0, identity=10.0, expression=1.0)
    trainer = EditorTrainer(
        LatentEditor.from_direction(direction), classifier, generator.sample_latents(range(64)),
        EditorTrainingConfig(attribute="age", steps=1, batch_size=8, hfld_fraction=0.5, strength="uniform",
                             strength_range=(3.0, 6.0)),
        preservation=preservation_loss(parse_config({"profile": "demo"}), generator, weights),
    )
    source = trainer.latents[:8]
    terms = trainer.losses(source, torch.Generator().manual_seed(0))
    terms["total"].backward(inputs=list(trainer.editor.parameters()))
    torch.save({n: p.grad for n, p in trainer.editor.named_parameters()} | {"total": terms["total"].detach()}, sys.argv[2])
    """
)


def test_a_training_step_with_every_term_runs_on_onednn_and_equals_the_native_kernels(tmp_path: Path) -> None:
    results = {}
    for mode in ("on", "off"):
        out = tmp_path / f"{mode}.pt"
        done = subprocess.run([sys.executable, "-c", STEP, mode, str(out)], cwd=REPO, capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
        assert done.returncode == 0, f"oneDNN {mode}: exit {done.returncode}: {done.stderr[-800:]}"
        results[mode] = torch.load(out)
    assert set(results["on"]) == {"weight", "bias", "total"}
    for name, value in results["off"].items():
        assert torch.isfinite(value).all() and value.abs().sum() > 0, name
        # float32 sums in another order, amplified by lambda 1000: a relative error of the whole
        # gradient of about 3e-4 (the loss itself agrees to about 1e-6), 1.8e-3 on CPUs with AMX.
        error = float((results["on"][name] - value).norm() / value.norm())
        assert error < 5e-3, (name, error)
