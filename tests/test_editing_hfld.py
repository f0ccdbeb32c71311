"""HFLD: zero on itself, gradients reach the editor, alignment and normalisation invariances, NME."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.editing.directions import Direction
from pipeline.editing.editor import LatentEditor
from pipeline.editing.hfld import (
    HFLDLoss,
    interocular_distance,
    landmark_nme,
    landmark_shift,
    similarity_align,
)
from pipeline.editing.synthetic import TinyGenerator, TinyLandmarks
from pipeline.errors import ConfigError, ImageError


pytestmark = pytest.mark.usefixtures("one_thread")


def face_points(count: int = 3, points: int = 20, dims: int = 2, seed: int = 0) -> torch.Tensor:
    return (
        torch.randn(count, points, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 30 + 100
    )


def rotation_2d(angle: float) -> torch.Tensor:
    return torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)


def rotation_3d(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.linalg.det(q) > 0 else -q


def similarity(points: torch.Tensor, rotation: torch.Tensor, scale: float, shift: torch.Tensor) -> torch.Tensor:
    return scale * points @ rotation.T + shift


@pytest.fixture
def tiny() -> tuple[TinyGenerator, TinyLandmarks]:
    return TinyGenerator((2, 4), resolution=8), TinyLandmarks(8, num_points=6, dims=3)


def test_hfld_of_a_latent_with_itself_is_zero(tiny) -> None:
    generator, landmarks = tiny
    latents = generator.sample_latents(range(4))
    loss = HFLDLoss(generator, landmarks, weight=5.0, iod=(0, 1), align=True)
    assert float(loss(latents, source_latents=latents)) == pytest.approx(0.0, abs=1e-9)
    assert torch.all(loss(latents, source_latents=latents, reduction="none").abs() < 1e-9)
    moved = latents + 0.5
    assert float(loss(moved, source_latents=latents)) > 1e-3


@pytest.mark.parametrize("align", [False, True])
def test_hfld_gradient_reaches_the_editor_and_not_the_source(tiny, align: bool) -> None:
    generator, landmarks = tiny
    direction = Direction(name="age", vector=torch.ones(4) / 2, latent_shape=(2, 4))
    editor = LatentEditor.from_direction(direction)
    source = generator.sample_latents(range(4)).requires_grad_(True)
    loss = HFLDLoss(generator, landmarks, weight=1.0, indices=[0, 2, 3], iod=([0, 1], [4, 5]), align=align)

    loss(editor(source, 1.0), source_latents=source).backward()

    for parameter in (editor.weight, editor.bias):
        assert parameter.grad is not None
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0
    # The source term is a constant: gradient through `source` comes from the edit path only,
    # equal to d loss / d edited (since d edited / d source = I + a A with A = 0 here).
    edited = editor(source, 1.0).detach().requires_grad_(True)
    loss(edited, source_latents=source.detach()).backward()
    assert torch.allclose(source.grad, edited.grad, atol=1e-7)


@pytest.mark.parametrize("dims", [2, 3])
def test_similarity_alignment_removes_a_known_similarity(dims: int) -> None:
    source = face_points(dims=dims)
    rotation = rotation_2d(0.4) if dims == 2 else rotation_3d(7)
    shift = torch.arange(1.0, dims + 1, dtype=torch.float64) * 17
    moved = similarity(source, rotation, 1.7, shift)

    aligned = similarity_align(moved, source)

    assert torch.allclose(aligned, source, atol=1e-9)
    assert float(landmark_shift(moved, source, align=True).max()) < 1e-15
    assert float(landmark_shift(moved, source).min()) > 100.0


def test_alignment_on_a_subset_keeps_expression_change_elsewhere() -> None:
    source = face_points(points=12)
    expression = source.clone()
    expression[:, 8:] += torch.tensor([0.0, 5.0], dtype=torch.float64)  # "mouth" opens
    posed = similarity(expression, rotation_2d(-0.3), 0.8, torch.tensor([4.0, -9.0], dtype=torch.float64))

    shift = landmark_shift(posed, source, align=True, align_indices=range(8), indices=range(8, 12))

    assert torch.allclose(shift, torch.full((3,), 25.0, dtype=torch.float64), atol=1e-9)


def test_alignment_never_reflects() -> None:
    source = face_points()
    mirrored = source * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    aligned = similarity_align(mirrored, source)
    assert float(landmark_shift(aligned, source).min()) > 1.0


def test_iod_normalisation_makes_hfld_invariant_to_image_scale() -> None:
    source = face_points()
    edited = source + torch.randn(source.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eyes = ([0, 1, 2], [3, 4, 5])

    for scale in (0.25, 3.0):
        normalised = landmark_shift(edited * scale, source * scale, iod=eyes)
        assert torch.allclose(normalised, landmark_shift(edited, source, iod=eyes), rtol=1e-12)
        raw = landmark_shift(edited * scale, source * scale)
        assert torch.allclose(raw, scale**2 * landmark_shift(edited, source), rtol=1e-12)


def test_nme_of_a_uniform_shift_is_shift_over_interocular_distance() -> None:
    reference = face_points()
    predicted = reference + torch.tensor([3.0, 4.0], dtype=torch.float64)
    iod = interocular_distance(reference, (0, 1))

    assert torch.allclose(landmark_nme(predicted, reference, iod=(0, 1)), 5.0 / iod)
    assert torch.allclose(
        landmark_nme(predicted, reference, iod=(0, 1), align=True), torch.zeros(3, dtype=torch.float64), atol=1e-12
    )
    assert torch.allclose(iod, (reference[:, 0] - reference[:, 1]).norm(dim=-1))


def test_subset_measures_only_its_landmarks() -> None:
    source = face_points(points=10)
    edited = source.clone()
    edited[:, 9] += 100.0
    assert float(landmark_shift(edited, source, indices=range(9)).max()) == 0.0
    assert torch.allclose(landmark_shift(edited, source), torch.full((3,), 2 * 100.0**2 / 10, dtype=torch.float64))


def test_planar_option_ignores_depth(tiny) -> None:
    generator, landmarks = tiny
    latents = generator.sample_latents([3])
    depth_only = lambda images: landmarks(images) * torch.tensor([0.0, 0.0, 1.0])  # noqa: E731
    loss = HFLDLoss(generator, depth_only, planar=True)
    assert float(loss(latents + 1.0, source_latents=latents)) == 0.0


def test_bad_detector_output_and_options_are_refused(tiny) -> None:
    generator, landmarks = tiny
    latents = generator.sample_latents([0, 1])
    with pytest.raises(ImageError, match=r"landmark detector output: expected a tensor \(N, K, 2 or 3\), got tuple"):
        HFLDLoss(generator, lambda images: (landmarks(images), None))(latents, source_latents=latents)
    with pytest.raises(ConfigError, match="exactly one"):
        HFLDLoss(generator, landmarks)(latents)
    with pytest.raises(ConfigError, match="lambda >= 0"):
        HFLDLoss(generator, landmarks, weight=-1.0)


