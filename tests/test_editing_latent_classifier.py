"""The latent attribute classifier: learns planted attributes, masks missing labels, round-trips."""

from __future__ import annotations

import pytest
import torch

from pipeline.editing.latent_classifier import (
    LatentClassifier,
    fit_latent_classifier,
    label_correlation,
    load_latent_classifier,
    save_latent_classifier,
)
from pipeline.errors import CheckpointError, ConfigError


pytestmark = pytest.mark.usefixtures("one_thread")


def planted(count: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W+-shaped latents with two attributes, each the sign of a fixed linear score."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(count, 2, 4, generator=generator)
    flat = latents.flatten(1)
    normals = torch.randn(8, 2, generator=torch.Generator().manual_seed(99))
    return latents, (flat @ normals > 0).float()


def test_learns_planted_attributes_and_ignores_missing_labels() -> None:
    latents, labels = planted()
    labels[::2, 1] = float("nan")  # half of the second attribute unscored

    model, report = fit_latent_classifier(
        latents, labels, attributes=["age", "gender"], hidden=(16,), epochs=40, lr=1e-2, batch_size=64
    )

    assert report.holdout_accuracy["age"] > 0.9
    assert report.holdout_accuracy["gender"] > 0.85
    assert report.num_train + report.num_holdout == 600
    fresh, _ = planted(200, seed=5)
    with torch.no_grad():
        agreement = ((model(fresh) > 0).float() == planted(200, seed=5)[1]).float().mean(dim=0)
    assert agreement.min() > 0.85


def test_same_seed_same_model() -> None:
    latents, labels = planted(200)
    first, _ = fit_latent_classifier(latents, labels, attributes=["a", "b"], hidden=(8,), epochs=3, seed=7)
    second, _ = fit_latent_classifier(latents, labels, attributes=["a", "b"], hidden=(8,), epochs=3, seed=7)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name


def test_label_correlation_matches_numpy_on_complete_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(500, generator=generator)
    labels = torch.stack([a, 1 - a, torch.rand(500, generator=generator), torch.full((500,), 0.5)], dim=1)
    labels[:50, 2] = float("nan")

    correlation = label_correlation(labels)

    assert correlation[0, 1] == pytest.approx(-1.0, abs=1e-6)
    both = ~labels[:, 2].isnan()
    expected = torch.corrcoef(labels[both][:, [0, 2]].T.double())[0, 1]
    assert correlation[0, 2] == pytest.approx(float(expected), abs=1e-6)
    assert correlation[0, 3] == 0.0  # constant column: no evidence, not NaN
    assert torch.equal(correlation.diagonal(), torch.ones(4))


def test_round_trip_and_shape_check(tmp_path) -> None:
    latents, labels = planted(120)
    model, report = fit_latent_classifier(latents, labels, attributes=["a", "b"], hidden=(8,), epochs=2)

    path = save_latent_classifier(model, tmp_path / "classifier.safetensors", report=report)
    loaded = load_latent_classifier(path, latent_shape=(2, 4))

    with torch.no_grad():
        assert torch.equal(loaded(latents), model(latents))
    assert torch.equal(loaded.label_correlation, model.label_correlation)
    assert loaded.attributes == ("a", "b")
    with pytest.raises(CheckpointError, match=r"latent shape \(2, 4\), the generator has \(8,\)"):
        load_latent_classifier(path, latent_shape=(8,))


def test_bad_labels_and_unknown_attributes_are_refused() -> None:
    latents, labels = planted(50)
    with pytest.raises(ConfigError, match=r"labels: expected shape \(50, 3\)"):
        fit_latent_classifier(latents, labels, attributes=["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"values in \[0, 1\]"):
        fit_latent_classifier(latents, labels * 2, attributes=["a", "b"])
    with pytest.raises(ConfigError, match=r"predicts \['a', 'b'\]"):
        LatentClassifier((2, 4), ["a", "b"]).index("smile")
