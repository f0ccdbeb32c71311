"""face-api.js's expression network: the port against the package's own outputs, and its uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import CheckpointError
from pipeline.models.assets import asset_path
from pipeline.models.emotion import LABELS
from pipeline.models.face_expression import FACE_API_LABELS, TO_FER_ORDER, FaceExpressionClassifier, load_face_expression_net

REFERENCE = Path(__file__).parent / "data" / "face_api_reference.npz"


@pytest.fixture(scope="module")
def classifier() -> FaceExpressionClassifier:
    return FaceExpressionClassifier()


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return dict(data)


def _inputs(reference: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [reference[f"input_{i}"] for i in range(len(reference["logits"]))]


def test_matches_face_api_running_on_tfjs(classifier: FaceExpressionClassifier, reference: dict[str, np.ndarray]) -> None:
    """Faces at 64x64 (resized by the port as face-api resizes), 112x112, non-square, noise."""
    assert "face-api 1.7.15" in str(reference["runtime"])
    for image, logits, probabilities in zip(_inputs(reference), reference["logits"], reference["probabilities"], strict=True):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            ours = classifier.net(classifier.preprocess(x))[0].numpy()
        np.testing.assert_allclose(ours, logits, rtol=0, atol=1e-4)
        fer = classifier.probabilities(image[None])[0].numpy()
        np.testing.assert_allclose(fer, probabilities[list(TO_FER_ORDER)], rtol=0, atol=1e-5)
    predicted = {FACE_API_LABELS[int(p.argmax())] for p in reference["probabilities"]}
    assert len(predicted) >= 4  # the fixed faces are not all one class: the comparison has teeth


def test_labels_are_reordered_to_fer2013() -> None:
    renamed = {"angry": "angry", "disgusted": "disgust", "fearful": "fear", "happy": "happy", "sad": "sad",
               "surprised": "surprise", "neutral": "neutral"}  # fmt: skip
    assert tuple(renamed[FACE_API_LABELS[i]] for i in TO_FER_ORDER) == LABELS


def test_gradients_reach_the_pixels(classifier: FaceExpressionClassifier, reference: dict[str, np.ndarray]) -> None:
    x = (torch.from_numpy(reference["input_0"]).permute(2, 0, 1)[None].float() / 127.5 - 1).requires_grad_()
    classifier(x)[0, LABELS.index("happy")].backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.9
    assert not any(p.requires_grad for p in classifier.parameters())


def test_damaged_weights_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "face_expression_model.bin"
    weights.write_bytes(asset_path("face-api-expression").read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"face_expression_model.bin: not a readable tfjs face expression model"):
        load_face_expression_net(weights)
    weights.write_bytes(asset_path("face-api-expression").read_bytes() + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"8 bytes left after the manifest's tensors"):
        load_face_expression_net(weights)
