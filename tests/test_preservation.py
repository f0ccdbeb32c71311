"""Preservation terms beyond HFLD: their arithmetic, their gradients, and what training with them does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import PreservationWeights, parse_config
from pipeline.editing.directions import Direction
from pipeline.editing.editor import LatentEditor
from pipeline.editing.hfld import HFLDLoss
from pipeline.editing.latent_classifier import LatentClassifier
from pipeline.editing.preservation import FaceTerm, PreservationLoss, cosine_distance, kl_divergence
from pipeline.editing.refine import RefinementConfig, refine_edits
from pipeline.editing.synthetic import TinyGenerator, TinyLandmarks
from pipeline.editing.training import EditorTrainer, EditorTrainingConfig
from pipeline.errors import ConfigError
from pipeline.generators.dcgan import load_dcgan
from pipeline.objectives import AlignedIdentity, EnsembleEmotion
from pipeline.scoring import load_scorer

SHAPE = (8,)
EMOTION_WEIGHT = 1.0

pytestmark = pytest.mark.usefixtures("one_thread")


class Readout(torch.nn.Module):
    """A fixed softmax read-out of the image: a stand-in for an emotion model."""

    def __init__(self, classes: int = 7, resolution: int = 8) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.weight = torch.randn(classes, 3 * resolution * resolution, generator=generator) * 0.5
        self.seen_landmarks: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        self.seen_landmarks.append(landmarks)
        return torch.softmax(images.flatten(1) @ self.weight.T, dim=1)


def make_loss(*, landmarks: float = 0.0, emotion: float = 1.0, readout: Readout | None = None) -> PreservationLoss:
    generator = TinyGenerator(SHAPE)
    hfld = HFLDLoss(generator, TinyLandmarks(8, num_points=3), weight=landmarks)
    return PreservationLoss(hfld, [FaceTerm("emotion", emotion, readout or Readout(), kl_divergence)])


def test_kl_and_cosine_distances_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(7), size=5), rng.dirichlet(np.ones(7), size=5)
    expected = (p * np.log(p / q)).sum(axis=1)
    np.testing.assert_allclose(kl_divergence(torch.tensor(p), torch.tensor(q)).numpy(), expected, rtol=1e-10)
    assert torch.allclose(kl_divergence(torch.tensor(p), torch.tensor(p)), torch.zeros(5, dtype=torch.float64))
    a, b = rng.normal(size=(4, 16)), rng.normal(size=(4, 16))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(cosine_distance(torch.tensor(a), torch.tensor(b)).numpy(), 1 - cos, rtol=1e-10)


def test_the_objective_is_the_weighted_sum_of_the_terms() -> None:
    readout = Readout()
    generator = TinyGenerator(SHAPE)
    landmarks = TinyLandmarks(8, num_points=3)
    hfld = HFLDLoss(generator, landmarks, weight=3.0)
    loss = PreservationLoss(hfld, [FaceTerm("emotion", 2.0, readout, kl_divergence)])
    source, edited = torch.randn(6, *SHAPE), torch.randn(6, *SHAPE)

    reference = loss.reference(source)
    values = loss.per_term(edited, reference)
    seen = readout.seen_landmarks[-1]

    with torch.no_grad():
        expected_emotion = kl_divergence(readout(generator.synthesize(source), None), readout(generator.synthesize(edited), None))
        expected_landmarks = hfld(edited, source_latents=source, reduction="none") / 3.0
    assert torch.allclose(values["emotion"], expected_emotion, atol=1e-6)
    assert torch.allclose(values["landmarks"], expected_landmarks, atol=1e-6)
    assert torch.allclose(loss(edited, reference, reduction="none"), 3.0 * expected_landmarks + 2.0 * expected_emotion, atol=1e-5)
    assert loss.weights() == {"landmarks": 3.0, "emotion": 2.0}
    # The term's model sees the landmarks the detector found on the same render, detached.
    assert torch.allclose(seen, landmarks(generator.synthesize(edited)))
    assert not seen.requires_grad


def test_gradients_flow_into_the_edit_only_and_terms_of_weight_zero_are_dropped() -> None:
    loss = make_loss(landmarks=0.0, emotion=1.0)
    source = torch.randn(4, *SHAPE)
    edited = (source + 0.5 * torch.randn(4, *SHAPE)).requires_grad_(True)
    reference = loss.reference(source)
    assert all(not value.requires_grad for value in reference.values())
    loss(edited, reference).backward()
    assert edited.grad is not None and edited.grad.abs().sum() > 0
    assert set(loss.per_term(edited, reference)) == {"emotion"}  # lambda 0: no landmark term
    off = make_loss(landmarks=0.0, emotion=0.0)
    assert not off.active and off.weights() == {}
    with pytest.raises(ConfigError, match="weight >= 0"):
        FaceTerm("emotion", -1.0, Readout(), kl_divergence)
    with pytest.raises(ConfigError, match="HFLD's"):
        FaceTerm("landmarks", 1.0, Readout(), kl_divergence)


def test_refinement_with_an_emotion_term_lowers_it_per_sample() -> None:
    loss = make_loss(emotion=50.0)
    normal = torch.nn.functional.normalize(torch.randn(8, generator=torch.Generator().manual_seed(3)), dim=0)
    classifier = LatentClassifier(SHAPE, ["age"], hidden=())
    with torch.no_grad():
        classifier.net[0].weight.copy_(4 * normal[None])
        classifier.net[0].bias.zero_()
    source = torch.randn(10, *SHAPE, generator=torch.Generator().manual_seed(0))
    edited = Direction(name="age", vector=normal, latent_shape=SHAPE).edit(source, 2.0)
    result = refine_edits(
        edited, source, preservation=loss, classifier=classifier, attribute="age", add=True,
        config=RefinementConfig(steps=60, lr=0.05),
    )
    assert torch.all(result.preservation_after <= result.preservation_before + 1e-6)
    assert result.preservation_after.mean() < 0.6 * result.preservation_before.mean()


def test_training_with_an_emotion_term_lowers_its_change_at_similar_success() -> None:
    generator = TinyGenerator(SHAPE)
    readout = Readout()
    normals = torch.nn.functional.normalize(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), dim=0)
    classifier = LatentClassifier(SHAPE, ["a", "b"], hidden=())
    with torch.no_grad():
        classifier.net[0].weight.copy_(4 * normals.T)
        classifier.net[0].bias.zero_()
    latents = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(1))
    held_out = torch.randn(128, *SHAPE, generator=torch.Generator().manual_seed(5))
    config = EditorTrainingConfig(attribute="a", steps=300, lr=1e-2, hfld_fraction=0.5)
    with torch.no_grad():
        probability = torch.sigmoid(classifier(held_out)[:, 0])
    target = (probability < 0.5).float()

    results = {}
    for weight in (0.0, EMOTION_WEIGHT):
        loss = PreservationLoss(HFLDLoss(generator, TinyLandmarks(8), weight=0.0), [FaceTerm("emotion", weight, readout, kl_divergence)])
        direction = Direction(name="a", vector=normals[:, 0], latent_shape=SHAPE)
        trainer = EditorTrainer(LatentEditor.from_direction(direction), classifier, latents, config, preservation=loss)
        trainer.run()
        with torch.no_grad():
            edited = trainer.editor(held_out, target - probability)
            change = kl_divergence(readout(generator.synthesize(held_out), None), readout(generator.synthesize(edited), None)).mean()
            success = ((classifier(edited)[:, 0] > 0).float() == target).float().mean()
        results[weight] = float(change), float(success), trainer.record()

    (base_change, base_success, base_record), (term_change, term_success, term_record) = results[0.0], results[EMOTION_WEIGHT]
    assert term_change < 0.8 * base_change
    assert term_success > base_success - 0.1
    assert base_record["preservation"] is None and base_record["hfld"] is None
    assert term_record["preservation"] == {"emotion": EMOTION_WEIGHT} and term_record["hfld"] is None


def test_identity_is_off_for_gender_by_default_and_weights_name_their_editor() -> None:
    edits = {"methods": ["editor_preserve"], "attributes": ["gender", "age"]}
    entry = parse_config({"edits": edits}).edits.preserve[0]  # the default: every term
    assert entry.weights("gender") == PreservationWeights(1000.0, 30.0, 0.0, 100.0)
    assert entry.weights("age") == PreservationWeights(1000.0, 30.0, 10.0, 100.0)
    assert PreservationWeights(1000.0, 30.0, 0.0).slug == "l1000-e30"
    assert PreservationWeights(0.0, 0.0, 10.0).slug == "i10"
    with pytest.raises(ConfigError, match="every weight 0 is the base editor"):
        parse_config({"edits": {"preserve": [{"landmarks": 0, "emotion": 0, "identity": 0, "expression": 0}]}})


def test_the_training_terms_read_faces_as_the_manifest_scores_them() -> None:
    """The emotion and identity terms use the scorer's models and crops, so what training
    lowers is what the manifest's emotion_js and identity_cosine measure."""
    generator = load_dcgan()
    with torch.no_grad():
        images = generator.synthesize(generator.sample_latents(range(6)))
        scores = load_scorer("cpu", False).score(images)
        landmarks = torch.from_numpy(scores.landmarks)
        probabilities = EnsembleEmotion()(images, landmarks)
        embeddings = AlignedIdentity()(images, landmarks)
    np.testing.assert_allclose(probabilities.numpy(), scores.emotion_probs, atol=1e-5)
    np.testing.assert_allclose(embeddings.numpy(), scores.embeddings, atol=1e-5)
