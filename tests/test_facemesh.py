"""The torch FaceMesh port against the TFLite runtime, on real and generated faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ai_edge_litert.interpreter import Interpreter
from skimage import data

from pipeline.errors import AssetError, ConfigError, ImageError
from pipeline.models import facemesh as fm
from pipeline.models.assets import asset_path
from pipeline.generators.dcgan import load_dcgan

# Face box of `skimage.data.astronaut()` found by MTCNN (x0, y0, x1, y1).
ASTRONAUT_FACE = (181.0, 62.0, 268.0, 172.0)


@pytest.fixture(scope="module")
def facemesh() -> fm.FaceMesh:
    return fm.FaceMesh()


@pytest.fixture(scope="module")
def generator():
    return load_dcgan()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def tflite_reference(crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (N, 468, 3) and face probability (N,) from the TFLite interpreter itself."""
    interpreter = Interpreter(model_path=str(asset_path("facemesh")))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, [len(crops), fm.INPUT_SIZE, fm.INPUT_SIZE, 3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, crops.permute(0, 2, 3, 1).contiguous().numpy())
    interpreter.invoke()
    out = {d["shape"][-1]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    return out[1404].reshape(-1, 468, 3), 1 / (1 + np.exp(-out[1].reshape(-1)))


def test_matches_tflite_runtime(facemesh, generator, astronaut):
    real = torch.from_numpy(astronaut).permute(2, 0, 1)[None].float() / 255
    real_crop = fm.crop_to_input(real, fm.expand_face_box([ASTRONAUT_FACE]))
    fake = (generator.synthesize(generator.sample_latents([3, 14, 15])) + 1) / 2
    fake_crops = fm.crop_to_input(fake, torch.tensor([[0.0, 0.0, 64.0, 64.0]]).expand(3, 4))
    noise = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    crops = torch.cat([real_crop, real_crop.flip(3), fake_crops, noise]).detach()

    with torch.no_grad():
        landmarks, score = facemesh(crops)
    expected_landmarks, expected_score = tflite_reference(crops)

    assert np.abs(landmarks.numpy() - expected_landmarks).max() < 0.01  # crop pixels
    np.testing.assert_allclose(score.numpy(), expected_score, atol=1e-4)
    assert (score[:2] > 0.99).all() and score[-1] < 0.01  # a real face and its mirror vs noise


def test_astronaut_landmarks_on_the_face(facemesh, astronaut):
    landmarks, score = facemesh.detect(astronaut[None], fm.expand_face_box([ASTRONAUT_FACE]))
    points = landmarks[0, :, :2]
    x0, y0, x1, y1 = ASTRONAUT_FACE
    margin = 0.1 * torch.tensor([x1 - x0, y1 - y0])
    assert score.item() > 0.99
    assert (points >= torch.tensor([x0, y0]) - margin).all() and (points <= torch.tensor([x1, y1]) + margin).all()
    assert points[:, 0].max() - points[:, 0].min() > 0.8 * (x1 - x0)  # spans the face, not a clump

    right_eye, left_eye = fm.eye_centres(landmarks)
    lips = landmarks[0, list(fm.LIPS), :2].mean(dim=0)
    brows = landmarks[0, list(fm.BROWS), :2].mean(dim=0)
    assert right_eye[0, 0] < left_eye[0, 0]  # the subject's right eye is on the image's left
    assert brows[1] < right_eye[0, 1] < lips[1]
    assert 0.4 * (x1 - x0) < fm.interocular_distance(landmarks).item() < 0.9 * (x1 - x0)


def test_crop_box_maps_back_to_image_pixels(facemesh, astronaut):
    # The same face seen through different crops lands on the same image pixels.
    boxes = torch.cat([fm.expand_face_box([ASTRONAUT_FACE], 1.4), fm.expand_face_box([ASTRONAUT_FACE], 1.6)])
    boxes[1] += torch.tensor([6.0, -4.0, 6.0, -4.0])
    landmarks, _ = facemesh.detect(np.stack([astronaut, astronaut]), boxes)
    drift = (landmarks[0, :, :2] - landmarks[1, :, :2]).norm(dim=-1)
    assert drift.median() < 2.0  # image pixels, on a face about 90 px wide


def test_whole_image_crop_is_bilinear_resize(generator):
    images = (generator.synthesize(generator.sample_latents([1, 2])) + 1) / 2
    crops = fm.crop_to_input(images, torch.tensor([[0.0, 0.0, 64.0, 64.0]]).expand(2, 4))
    resized = F.interpolate(images, size=(192, 192), mode="bilinear", align_corners=False)
    torch.testing.assert_close(crops, resized, atol=1e-5, rtol=0)


def test_batch_equals_single_images(facemesh, generator):
    landmarker = fm.FaceMeshLandmarker(facemesh)
    with torch.no_grad():
        images = generator.synthesize(generator.sample_latents([5, 6, 7, 8]))
        batch_landmarks, batch_score = landmarker(images)
        singles = [landmarker(image[None]) for image in images]
    torch.testing.assert_close(batch_landmarks, torch.cat([s[0] for s in singles]), atol=1e-3, rtol=0)
    torch.testing.assert_close(batch_score, torch.cat([s[1] for s in singles]), atol=1e-5, rtol=0)


def test_landmark_loss_reaches_the_latent_and_can_be_minimised(facemesh, generator):
    landmarker = fm.FaceMeshLandmarker(facemesh)
    latents = generator.sample_latents([21, 22])
    with torch.no_grad():
        target, _ = landmarker(generator.synthesize(latents[1:]))
    z = latents[:1].clone().requires_grad_(True)

    def loss() -> torch.Tensor:
        landmarks, _ = landmarker(generator.synthesize(z))
        return (landmarks[..., :2] - target[..., :2]).pow(2).sum(-1).mean()

    first = loss()
    first.backward()
    assert torch.isfinite(z.grad).all() and z.grad.norm() > 0
    assert all(p.grad is None for p in facemesh.parameters())  # frozen weights

    optimiser = torch.optim.Adam([z], lr=0.05)
    for _ in range(5):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
    assert loss().item() < 0.7 * first.item()


def test_landmarker_box_is_relative_to_the_image(facemesh, generator):
    # A crop 10 % larger and shifted by 6.4 px sees the same face, so landmarks agree in
    # generator pixels; a wrong scale or offset in the back-projection would move them 3-6 px.
    images = generator.synthesize(generator.sample_latents([31, 32, 33]))
    with torch.no_grad():
        whole, _ = fm.FaceMeshLandmarker(facemesh)(images)
        shifted, _ = fm.FaceMeshLandmarker(facemesh, box=(0.0, -0.1, 1.1, 1.0))(images)
    assert (whole[..., :2] - shifted[..., :2]).norm(dim=-1).median() < 1.5  # on a 64 px image


def test_landmark_groups_are_valid_topology():
    for name, group in fm.LANDMARK_GROUPS.items():
        assert len(set(group)) == len(group), name
        assert all(0 <= i < fm.NUM_LANDMARKS for i in group), name
    assert not set(fm.LIPS) & set(fm.EYES) and not set(fm.EYES) & set(fm.BROWS)
    assert {fm.RIGHT_EYE_OUTER_CORNER, fm.RIGHT_EYE_INNER_CORNER} <= set(fm.RIGHT_EYE)
    assert {fm.LEFT_EYE_OUTER_CORNER, fm.LEFT_EYE_INNER_CORNER} <= set(fm.LEFT_EYE)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(192, 3, 2, (0, 1)), (96, 3, 1, (1, 1)), (3, 3, 3, (0, 0)), (7, 2, 2, (0, 1)), (6, 4, 1, (1, 2))],
)
def test_same_padding_puts_the_odd_pixel_after(size, kernel, stride, expected):
    assert fm._same_padding(size, kernel, stride, 1) == expected


def test_bad_inputs_are_refused(facemesh, astronaut):
    with pytest.raises(ImageError, match="crops: expected shape"):
        facemesh(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ImageError, match="images: expected uint8 RGB"):
        facemesh.detect(astronaut.astype(np.float32)[None])
    with pytest.raises(ImageError, match="boxes: expected shape"):
        facemesh.detect(astronaut[None], np.zeros((2, 4)))
    with pytest.raises(ConfigError, match="box: expected"):
        fm.FaceMeshLandmarker(facemesh, box=(0.5, 0.0, 0.2, 1.0))


def test_bad_model_files_are_refused(tmp_path):
    model = asset_path("facemesh").read_bytes()
    not_tflite = tmp_path / "model.onnx"
    not_tflite.write_bytes(b"\x08\x07onnx model")
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(model[: len(model) // 50])
    with pytest.raises(AssetError, match="not a TensorFlow Lite model"):
        fm.FaceMesh(not_tflite)
    with pytest.raises(AssetError, match="truncated or corrupt"):
        fm.FaceMesh(truncated)
    with pytest.raises(AssetError, match="cannot read"):
        fm.FaceMesh(tmp_path / "missing.tflite")
