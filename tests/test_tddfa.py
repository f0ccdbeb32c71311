"""3DDFA_V2's MobileNet in torch against onnxruntime on the same file, and its crop."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from pipeline.errors import CheckpointError, ImageError
from pipeline.models.assets import asset_path
from pipeline.generators.dcgan import load_dcgan
from pipeline.models.tddfa import EXPRESSION, INPUT_SIZE, MorphableFace, roi_boxes
from pipeline.objectives import ExpressionCoefficients
from pipeline.scoring import load_scorer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> MorphableFace:
    return MorphableFace()


def reference(inputs: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(asset_path("tddfa-mobilenet")), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[None]})[0] for x in inputs])


def test_the_port_matches_onnxruntime_on_noise_and_on_faces(model: MorphableFace) -> None:
    noise = np.random.default_rng(0).uniform(-1, 1, size=(3, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    generator = load_dcgan()
    with torch.no_grad():
        images = generator.synthesize(generator.sample_latents(range(4)))
        landmarks = torch.from_numpy(load_scorer("cpu", False).score(images).landmarks)
        boxes = torch.cat([landmarks[..., :2].amin(dim=1), landmarks[..., :2].amax(dim=1)], dim=1)
        faces = model.preprocess(images, boxes).numpy()
        inputs = np.concatenate([noise, faces])
        ours = model.network(torch.from_numpy(inputs)).numpy()
    expected = reference(inputs)
    assert np.abs(ours - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    # Faces are not noise: their parameters differ from one another and from the noise's.
    assert np.abs(expected[3:, EXPRESSION] - expected[3:4, EXPRESSION]).max() > 0.05


def test_the_crop_is_3ddfa_v2s_roi_box() -> None:
    box = torch.tensor([[10.0, 20.0, 50.0, 80.0]])  # sides 40 and 60: mean 50
    roi = roi_boxes(box)[0]
    side = 50 * 1.58
    centre = torch.tensor([30.0, 50.0 + 0.14 * 50])
    torch.testing.assert_close(roi, torch.cat([centre - side / 2, centre + side / 2]))


def test_the_expression_term_is_zero_for_the_same_face_and_differentiable() -> None:
    term = ExpressionCoefficients()
    generator = load_dcgan()
    latents = generator.sample_latents(range(2)).requires_grad_(True)
    images = generator.synthesize(latents)
    with torch.no_grad():
        landmarks = torch.from_numpy(load_scorer("cpu", False).score(images).landmarks)
    coefficients = term(images, landmarks)
    assert coefficients.shape == (2, 10)
    torch.testing.assert_close(term(images.detach(), landmarks), coefficients.detach())
    coefficients.square().sum().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_bad_input_is_named(model: MorphableFace, tmp_path) -> None:
    with pytest.raises(ImageError, match=r"face boxes: expected shape \(2, 4\)"):
        model(torch.zeros(2, 3, 64, 64), torch.zeros(3, 4))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="cannot read the 3DDFA ONNX file"):
        MorphableFace(broken)
