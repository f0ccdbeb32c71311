"""The torch port of face-api's age and gender network against face-api itself on tfjs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import CheckpointError
from pipeline.models.assets import asset_path
from pipeline.models.face_age_gender import AgeGenderClassifier, load_age_gender_net
from pipeline.models.face_api import face_api_input

REFERENCE = Path(__file__).parent / "data" / "face_api_reference.npz"


@pytest.fixture(scope="module")
def classifier() -> AgeGenderClassifier:
    return AgeGenderClassifier()


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return dict(data)


def test_matches_face_api_running_on_tfjs(classifier: AgeGenderClassifier, reference: dict[str, np.ndarray]) -> None:
    """Faces at 64x64 (resized as face-api resizes), 112x112, non-square (padded), noise."""
    assert "face-api 1.7.15" in str(reference["runtime"])
    inputs = [reference[f"input_{i}"] for i in range(len(reference["age"]))]
    for image, age, logits, gender in zip(inputs, reference["age"], reference["gender_logits"], reference["gender"], strict=True):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            ours_age, ours_logits = classifier.net(face_api_input(x))
        assert float(ours_age[0]) == pytest.approx(float(age), abs=2e-4)  # years
        np.testing.assert_allclose(ours_logits[0].numpy(), logits, rtol=0, atol=5e-5)
        predicted_age, female = classifier.predict(image[None])
        assert float(predicted_age[0]) == pytest.approx(float(age), abs=2e-4)
        assert float(female[0]) == pytest.approx(float(gender[1]), abs=1e-5)  # face-api's order: male, female
    assert np.ptp(reference["age"]) > 10 and (reference["gender"][:, 1] > 0.5).any() and (reference["gender"][:, 1] < 0.5).any()


def test_a_batch_scores_as_its_faces_do_alone(classifier: AgeGenderClassifier, reference: dict[str, np.ndarray]) -> None:
    faces = np.stack([reference[f"input_{i}"] for i in range(6)])  # the 64x64 demo faces
    ages, female = classifier.predict(faces)
    for index in (0, 3, 5):
        alone = classifier.predict(faces[index : index + 1])
        assert float(alone[0][0]) == pytest.approx(float(ages[index]), abs=1e-3)
        assert float(alone[1][0]) == pytest.approx(float(female[index]), abs=1e-5)


def test_boxes_crop_the_face_first(classifier: AgeGenderClassifier, reference: dict[str, np.ndarray]) -> None:
    face = reference["input_6"]  # 112x112
    framed = np.zeros((224, 224, 3), np.uint8)
    framed[56:168, 56:168] = face
    boxes = torch.tensor([[56.0, 56.0, 168.0, 168.0]])
    cropped = classifier.predict(framed[None], boxes)
    alone = classifier.predict(face[None])
    assert float(cropped[0][0]) == pytest.approx(float(alone[0][0]), abs=0.05)
    assert float(cropped[1][0]) == pytest.approx(float(alone[1][0]), abs=1e-3)


def test_damaged_weights_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "age_gender_model.bin"
    weights.write_bytes(asset_path("face-api-age-gender").read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"age_gender_model.bin: not a readable tfjs age and gender model"):
        load_age_gender_net(weights)
    weights.write_bytes(asset_path("face-api-age-gender").read_bytes() + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"8 bytes left after the manifest's tensors"):
        load_age_gender_net(weights)
    with pytest.raises(CheckpointError, match="bytes left after the manifest's tensors"):  # another network's manifest
        load_age_gender_net(asset_path("face-api-age-gender"), manifest=asset_path("face-api-expression-manifest"))
