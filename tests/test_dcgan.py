"""The demo generator: seeds decide images, whatever the batch; bad checkpoints are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.errors import CheckpointError, ImageError
from pipeline.generators.dcgan import DCGANGenerator, load_dcgan
from pipeline.generators.base import seeded_normal, to_uint8


@pytest.fixture(scope="module")
def generator() -> DCGANGenerator:
    return load_dcgan()


def test_latents_depend_only_on_their_seed() -> None:
    batch = seeded_normal([3, 7, 11], (100,))
    singles = torch.cat([seeded_normal([s], (100,)) for s in (11, 7, 3)]).flip(0)
    assert torch.equal(batch, singles)
    assert not torch.equal(batch[0], batch[1])


def test_latents_are_standard_normal() -> None:
    draws = seeded_normal(range(200), (100,))
    assert abs(draws.mean().item()) < 0.02
    assert abs(draws.std().item() - 1) < 0.02


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_images_identical_across_batch_sizes(generator: DCGANGenerator, batch_size: int) -> None:
    seeds = list(range(100, 108))
    reference = generator.render(generator.sample_latents(seeds))
    chunks = [generator.render(generator.sample_latents(seeds[i : i + batch_size])) for i in range(0, 8, batch_size)]
    assert torch.equal(torch.cat(chunks), reference)


def test_render_is_uint8_rgb_of_the_float_synthesis(generator: DCGANGenerator) -> None:
    latents = generator.sample_latents([0, 1])
    floats = generator.synthesize(latents)
    assert floats.min() >= -1 and floats.max() <= 1
    images = generator.render(latents)
    assert images.dtype == torch.uint8 and images.shape == (2, 64, 64, 3)
    expected = ((floats.detach() + 1) * 127.5).round().permute(0, 2, 3, 1)
    assert torch.equal(images.float(), expected)
    assert images[0].float().std() > 10  # a face, not a flat image


def test_generator_stays_in_inference_mode(generator: DCGANGenerator) -> None:
    latents = generator.sample_latents([5])
    before = generator.render(latents)
    generator.train()
    assert torch.equal(generator.render(latents), before)


def test_latents_of_wrong_shape_are_refused(generator: DCGANGenerator) -> None:
    with pytest.raises(ImageError, match=r"expected shape \(N, 100\), got \(2, 512\)"):
        generator.synthesize(torch.zeros(2, 512))


def test_gradient_reaches_the_latent(generator: DCGANGenerator) -> None:
    latents = generator.sample_latents([9]).requires_grad_(True)
    generator.synthesize(latents).mean().backward()
    assert latents.grad is not None and torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0


def test_to_uint8_clamps() -> None:
    values = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(values)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "weights.tar"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="weights.tar: not a readable torch checkpoint"):
        load_dcgan(broken)


def test_checkpoint_with_other_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="expected a dict with key 'netG_state_dict'"):
        load_dcgan(path)


def test_checkpoint_with_wrong_shapes_is_refused(tmp_path: Path, generator: DCGANGenerator) -> None:
    state = {k: v.clone() for k, v in generator.state_dict().items()}
    state["main.0.weight"] = torch.zeros(100, 256, 4, 4)
    path = tmp_path / "wrong.tar"
    torch.save({"netG_state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"main.0.weight has shape \(100, 256, 4, 4\), expected \(100, 512, 4, 4\)"):
        load_dcgan(path)
