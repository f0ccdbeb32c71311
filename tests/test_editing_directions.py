"""Linear directions: fitting recovers a planted direction, conditional projection, file formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.editing.directions import (
    Direction,
    fit_direction,
    load_direction,
    project_orthogonal,
    save_direction,
    select_confident,
)
from pipeline.errors import CheckpointError, ConfigError, ImageError


pytestmark = pytest.mark.usefixtures("one_thread")


def unit(size: int, seed: int) -> torch.Tensor:
    vector = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


def direction(vector: torch.Tensor, name: str = "d", latent_shape: tuple[int, ...] | None = None) -> Direction:
    return Direction(name=name, vector=vector / vector.norm(), latent_shape=latent_shape or tuple(vector.shape))


def test_fit_recovers_planted_direction_with_high_holdout_accuracy() -> None:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3000, 32, generator=generator)
    planted = unit(32, 1)
    scores = latents @ planted + 0.3 * torch.randn(3000, generator=generator) + 0.5

    fitted = fit_direction(latents, scores, name="age", fraction=0.2, seed=3)

    assert float(fitted.vector @ planted) > 0.95
    assert fitted.accuracy > 0.95
    assert fitted.num_samples == 2 * 600
    assert fitted.provenance["num_holdout"] + fitted.provenance["num_train"] == 1200
    # Positive strengths raise the score: the sign convention of every edit.
    assert float(((fitted.edit(latents[:10], 2.0) - latents[:10]) @ planted).min()) > 0


def test_fit_shared_layout_recovers_w_direction_from_broadcast_w_plus() -> None:
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(2000, 16, generator=generator)
    planted = unit(16, 2)
    latents = w[:, None, :].expand(2000, 4, 16)

    fitted = fit_direction(latents, w @ planted, name="smile", layout="shared", thresholds=(-0.5, 0.5))

    assert fitted.layout == "shared" and fitted.vector.shape == (16,)
    assert float(fitted.vector @ planted) > 0.95
    # A shared direction moves every layer by the same W step.
    edited = fitted.edit(latents[:3], 1.5)
    assert torch.allclose(edited - latents[:3], 1.5 * fitted.vector.expand(3, 4, 16))


def test_select_confident_takes_the_extremes_and_skips_nan() -> None:
    scores = torch.tensor([0.5, float("nan"), 0.1, 0.9, 0.3, 0.7, 0.0, 1.0, 0.6, 0.4, 0.2])
    indices, labels = select_confident(scores, fraction=0.2)
    assert sorted(indices[labels == 0].tolist()) == [2, 6]
    assert sorted(indices[labels == 1].tolist()) == [3, 7]

    indices, labels = select_confident(scores, thresholds=(0.2, 0.8))
    assert sorted(indices[labels == 0].tolist()) == [2, 6, 10]
    assert sorted(indices[labels == 1].tolist()) == [3, 7]


def test_fit_refuses_too_few_confident_samples() -> None:
    latents = torch.randn(20, 4)
    with pytest.raises(ConfigError, match="class 0 has 2"):
        fit_direction(latents, torch.arange(20.0), name="x", fraction=0.1)


def test_projection_is_orthogonal_to_every_condition() -> None:
    primal = direction(unit(10, 0))
    conditions = [direction(unit(10, 1), "smile"), direction(unit(10, 2), "pose")]

    projected = project_orthogonal(primal, conditions)

    for condition in conditions:
        assert abs(float(projected.vector @ condition.vector)) < 1e-6
    assert float(projected.vector.norm()) == pytest.approx(1.0, abs=1e-6)
    # It is the closest unit vector to the primal in the complement: still mostly the primal.
    assert float(projected.vector @ primal.vector) == pytest.approx(projected.provenance["cosine_to_primal"], abs=1e-6)
    assert projected.provenance["conditioned_on"] == ["smile", "pose"]


def test_projection_with_correlated_conditions_removes_their_span_once() -> None:
    a, b = unit(6, 3), unit(6, 4)
    primal = direction(a + b + unit(6, 5))
    conditions = [direction(a, "a"), direction(b, "b"), direction(a + b, "a+b")]

    projected = project_orthogonal(primal, conditions)

    span = torch.stack([a, b]).T
    residual = projected.vector - span @ torch.linalg.lstsq(span, projected.vector).solution
    assert torch.allclose(residual, projected.vector, atol=1e-6)


def test_projection_leaves_an_orthogonal_direction_unchanged() -> None:
    primal = direction(torch.tensor([1.0, 2.0, 0.0, 0.0]))
    condition = direction(torch.tensor([0.0, 0.0, 3.0, -1.0]), "smile")

    projected = project_orthogonal(primal, [condition])

    assert torch.allclose(projected.vector, primal.vector, atol=1e-7)


def test_projection_refuses_a_direction_inside_the_span() -> None:
    with pytest.raises(ConfigError, match="lies in the span"):
        project_orthogonal(direction(torch.tensor([1.0, 1.0, 0.0])), [direction(torch.tensor([2.0, 2.0, 0.0]), "x")])


def test_projection_mixes_shared_and_flat_as_latent_displacements() -> None:
    shared = Direction(name="smile", vector=unit(4, 0), latent_shape=(3, 4))
    flat = Direction(name="age", vector=unit(12, 1).reshape(3, 4), latent_shape=(3, 4))

    projected = project_orthogonal(flat, [shared])

    assert projected.layout == "flat"
    assert abs(float((projected.vector * shared.displacement()).sum())) < 1e-6


def test_safetensors_round_trip_keeps_everything(tmp_path) -> None:
    latents = torch.randn(400, 2, 3, generator=torch.Generator().manual_seed(0))
    original = fit_direction(
        latents, latents[:, 0, 0] - latents[:, 1, 2], name="gender", provenance={"scorer": "adience"}
    )

    path = save_direction(original, tmp_path / "gender.safetensors")
    loaded = load_direction(path, latent_shape=(2, 3))

    assert torch.equal(loaded.vector, original.vector)
    assert (loaded.name, loaded.latent_shape, loaded.intercept, loaded.accuracy, loaded.num_samples) == (
        original.name,
        original.latent_shape,
        original.intercept,
        original.accuracy,
        original.num_samples,
    )
    assert loaded.provenance == original.provenance
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_interfacegan_boundaries_flat_and_shared(tmp_path) -> None:
    w_plus = np.random.default_rng(0).normal(size=(1, 12)).astype(np.float32)
    w_only = np.random.default_rng(1).normal(size=(1, 4)).astype(np.float32)
    np.save(tmp_path / "age_wp.npy", w_plus)
    np.save(tmp_path / "smile_w.npy", w_only)

    flat = load_direction(tmp_path / "age_wp.npy", latent_shape=(3, 4))
    shared = load_direction(tmp_path / "smile_w.npy", latent_shape=(3, 4))

    assert flat.layout == "flat" and flat.name == "age_wp"
    assert np.allclose(flat.vector.numpy().reshape(1, -1), w_plus / np.linalg.norm(w_plus), atol=1e-7)
    assert shared.layout == "shared"
    assert np.allclose(shared.vector.numpy(), w_only[0] / np.linalg.norm(w_only), atol=1e-7)

    written = save_direction(shared, tmp_path / "copy.npy")
    stored = np.load(written)
    assert stored.shape == (1, 4) and stored.dtype == np.float32
    assert np.allclose(stored, shared.vector.numpy()[None])


def test_mismatched_shapes_are_refused_with_the_expected_sizes(tmp_path) -> None:
    np.save(tmp_path / "bad.npy", np.ones((1, 7), np.float32))
    with pytest.raises(CheckpointError, match=r"7 values.*\(3, 4\) needs 12 \(W\+ flattened\) or 4"):
        load_direction(tmp_path / "bad.npy", latent_shape=(3, 4))
    np.save(tmp_path / "matrix.npy", np.ones((2, 4), np.float32))
    with pytest.raises(CheckpointError, match=r"shape \(1, D\)"):
        load_direction(tmp_path / "matrix.npy", latent_shape=(3, 4))

    path = save_direction(direction(unit(8, 0)), tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match=r"made for latent shape \(8,\), the generator has \(100,\)"):
        load_direction(path, latent_shape=(100,))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_direction(tmp_path / "junk.safetensors")
    with pytest.raises(ImageError, match=r"expected shape \(N, 8\)"):
        direction(unit(8, 0)).edit(torch.zeros(2, 9), 1.0)


def test_direction_refuses_non_unit_or_misshaped_vectors() -> None:
    with pytest.raises(ConfigError, match="unit norm"):
        Direction(name="x", vector=torch.ones(4), latent_shape=(4,))
    with pytest.raises(ConfigError, match="does not fit latent shape"):
        Direction(name="x", vector=unit(5, 0), latent_shape=(4,))
