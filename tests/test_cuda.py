"""The CUDA path: every model on a GPU gives what it gives on the CPU, within stated tolerances.

Skipped without a CUDA device (CI has none); `benchmarks/gpu.sh` runs them on one. Tolerances
allow for TF32 convolutions, PyTorch's default on Ampere and later GPUs, which move a
network's outputs by about 1e-3 of their scale, and for a different order of summation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_schemas import Col
from pipeline.generators.base import FaceGenerator
from pipeline.generators.dcgan import load_dcgan
from pipeline.generators.stylegan3 import StyleGAN3Config, StyleGAN3Generator
from pipeline.storage.layout import prepare_run
from pipeline.storage.manifest import read_manifest
from pipeline.stages.generate import generate_shard
from pipeline.scoring import ATTRIBUTE_NAMES, load_scorer
from stylegan2_fixtures import small_generator

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; benchmarks/gpu.sh runs these on one"),
]

# Largest difference allowed between CPU and CUDA, per attribute (units of ATTRIBUTE_FIELDS).
ATTRIBUTE_TOLERANCE = {
    "p_female": 0.01, "age": 0.5, "yaw": 0.5, "pitch": 0.5, "roll": 0.5,
    "hair_lightness": 0.5, "hair_redness": 0.5, "hair_yellowness": 0.5, "skin_lightness": 0.5,
}  # fmt: skip


def _stylegan3() -> StyleGAN3Generator:
    torch.manual_seed(0)
    config = StyleGAN3Config.config_t(64, z_dim=32, w_dim=32, channel_base=1024, channel_max=32)
    return StyleGAN3Generator(config).eval()


GENERATORS = {"dcgan": load_dcgan, "stylegan2": small_generator, "stylegan3": _stylegan3}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_render_on_cuda_as_on_the_cpu(name: str) -> None:
    generator: FaceGenerator = GENERATORS[name]()
    latents = generator.sample_latents(range(8))
    with torch.no_grad():
        on_cpu = generator.synthesize(latents)
        on_cuda = generator.to("cuda").synthesize(latents.to("cuda"))
    assert on_cuda.device.type == "cuda"
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=2e-2)
    assert (on_cuda.cpu() - on_cpu).abs().mean() < 2e-3


def test_every_scorer_gives_the_cpu_scores_on_cuda() -> None:
    """The same images scored by the scorer on each device: emotion, landmarks, identity,
    detection (YuNet's graph in torch on the GPU, OpenCV on the CPU) and every attribute."""
    generator = load_dcgan()
    with torch.no_grad():
        images = generator.synthesize(generator.sample_latents(range(32)))
    cpu = load_scorer("cpu", True).score(images)
    cuda = load_scorer("cuda", True).score(images.to("cuda"))
    np.testing.assert_allclose(cuda.emotion_model_probs, cpu.emotion_model_probs, atol=1e-2)
    np.testing.assert_allclose(cuda.landmarks[..., :2], cpu.landmarks[..., :2], atol=0.5)
    assert np.array_equal(cuda.face_found, cpu.face_found)
    np.testing.assert_allclose(cuda.face_score, cpu.face_score, atol=1e-3)  # YuNet in torch on the GPU, OpenCV on the CPU
    cosines = (cuda.embeddings * cpu.embeddings).sum(axis=1)
    assert cosines.min() > 0.995
    for column, name in enumerate(ATTRIBUTE_NAMES):
        both = ~np.isnan(cpu.attributes[:, column])
        assert np.array_equal(both, ~np.isnan(cuda.attributes[:, column])), name
        np.testing.assert_allclose(cuda.attributes[both, column], cpu.attributes[both, column], atol=ATTRIBUTE_TOLERANCE[name], err_msg=name)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_reduced_precision_classifiers_on_cuda_stay_near_float32_on_the_cpu(precision: str) -> None:
    """`scoring.precision` on the GPU, within `tests/test_score_reference.py`'s bfloat16
    tolerances; FaceMesh stays float32, so landmarks keep the float32 CUDA tolerance."""
    from test_score_reference import BFLOAT16_ATTRIBUTE_TOLERANCE, BFLOAT16_MIN_COSINE, BFLOAT16_TOLERANCE

    generator = load_dcgan()
    with torch.no_grad():
        images = generator.synthesize(generator.sample_latents(range(32)))
    cpu = load_scorer("cpu", True).score(images)
    cuda = load_scorer("cuda", True, "native", "native", precision).score(images.to("cuda"))
    np.testing.assert_allclose(cuda.emotion_model_probs, cpu.emotion_model_probs, atol=BFLOAT16_TOLERANCE["emotion_model_probs"])
    np.testing.assert_allclose(cuda.landmarks[..., :2], cpu.landmarks[..., :2], atol=0.5)
    assert (cuda.embeddings * cpu.embeddings).sum(axis=1).min() >= BFLOAT16_MIN_COSINE
    for name, tolerance in BFLOAT16_ATTRIBUTE_TOLERANCE.items():
        column = ATTRIBUTE_NAMES.index(name)
        np.testing.assert_allclose(cuda.attributes[:, column], cpu.attributes[:, column], atol=tolerance, err_msg=name)


def test_a_generate_run_with_every_edit_method_runs_on_cuda(tmp_path: Path) -> None:
    """Editors trained on the CPU edit on the GPU (refinement's FaceMesh gradients included),
    and the run's rows carry the CPU run's sources and scores within tolerance."""
    from test_edit_run import small_edit_config, train_models

    config = small_edit_config(tmp_path / "models", "hair_lightness", 4.0, sources={"count": 4, "first_seed": 500})
    train_models(config, load_dcgan())
    frames = {}
    for device in ("cpu", "cuda"):
        run_config = config.model_copy(update={"device": device})
        run_dir = prepare_run(run_config, tmp_path / device)
        generate_shard(run_config, run_dir, 0)
        frames[device] = read_manifest(run_dir).to_pandas().sort_values([Col.EDITOR, Col.SEED]).reset_index(drop=True)
    cpu, cuda = frames["cpu"], frames["cuda"]
    assert cuda[[Col.SEED, Col.EDITOR]].equals(cpu[[Col.SEED, Col.EDITOR]])
    np.testing.assert_allclose(np.stack(cuda[Col.LATENT]), np.stack(cpu[Col.LATENT]), atol=1e-6)
    linear = cpu[Col.EDITOR].isin(["linear", "linear_projected", "editor", "editor_hfld"])
    np.testing.assert_allclose(np.stack(cuda.loc[linear, Col.LATENT_EDIT]), np.stack(cpu.loc[linear, Col.LATENT_EDIT]), atol=1e-4)
    np.testing.assert_allclose(cuda[Col.EMOTION_JS], cpu[Col.EMOTION_JS], atol=0.02)
    assert cuda[Col.EDIT_SECONDS].gt(0).all()
    # Refinement follows gradients, so its latents may part a little; it still runs and is scored.
    refined = cuda[cuda[Col.EDITOR] == "refined"]
    assert len(refined) == 4 and refined[Col.LANDMARK_NME].notna().all()
