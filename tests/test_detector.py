"""YuNet detection: a known face, non-faces, generated faces, and coordinates under rescaling."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from pipeline.errors import ImageError
from pipeline.generators.dcgan import load_dcgan
from pipeline.models.detector import FaceDetector

# Eileen Collins' face in skimage's astronaut image, (x0, y0, x1, y1): MTCNN's box on it.
ASTRONAUT_FACE = np.array([181.0, 62.0, 268.0, 172.0])


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def generated() -> np.ndarray:
    generator = load_dcgan()
    return generator.render(generator.sample_latents(range(16))).numpy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_astronaut_face_is_found_where_it_is(detector: FaceDetector, astronaut: np.ndarray) -> None:
    result = detector.detect(astronaut[None])
    assert result.found.tolist() == [True]
    assert result.scores[0] > 0.8
    box = result.boxes[0]
    assert _iou(box, ASTRONAUT_FACE) > 0.8
    centre = (ASTRONAUT_FACE[:2] + ASTRONAUT_FACE[2:]) / 2
    assert box[0] < centre[0] < box[2] and box[1] < centre[1] < box[3]


def test_landmarks_lie_where_a_frontal_face_has_them(detector: FaceDetector, astronaut: np.ndarray) -> None:
    result = detector.detect(astronaut[None])
    right_eye, left_eye, nose, right_mouth, left_mouth = result.landmarks[0]
    x0, y0, x1, y1 = result.boxes[0]
    assert np.all((result.landmarks[0] > [x0, y0]) & (result.landmarks[0] < [x1, y1]))
    assert right_eye[0] < nose[0] < left_eye[0]  # the subject's right eye is on the image's left
    assert right_mouth[0] < left_mouth[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])


def test_blank_and_noise_images_have_no_face(detector: FaceDetector) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    grey = np.full((256, 256, 3), 128, dtype=np.uint8)
    result = detector.detect(np.stack([grey, noise]))
    assert not result.found.any()
    assert np.all(result.scores < 0.3)
    assert np.isnan(result.boxes).all() and np.isnan(result.landmarks).all()


def test_most_generated_faces_are_found(detector: FaceDetector, generated: np.ndarray) -> None:
    result = detector.detect(generated)
    assert result.found.mean() >= 0.9
    found = result.boxes[result.found]
    assert np.all((found[:, :2] > -8) & (found[:, 2:] < 72))  # boxes on the 64x64 image, not the upscaled one


def test_upscaling_only_rescales_coordinates(
    detector: FaceDetector, generated: np.ndarray, astronaut: np.ndarray
) -> None:
    small = detector.detect(generated)
    doubled = detector.detect(
        np.stack([cv2.resize(image, (128, 128), interpolation=cv2.INTER_CUBIC) for image in generated])
    )
    assert np.array_equal(small.found, doubled.found)
    np.testing.assert_allclose(doubled.boxes / 2, small.boxes, atol=1.0)
    np.testing.assert_allclose(doubled.landmarks / 2, small.landmarks, atol=2.0)

    large = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    native, doubled = detector.detect(astronaut[None]), detector.detect(large[None])
    np.testing.assert_allclose(doubled.boxes / 2, native.boxes, atol=6.0)
    np.testing.assert_allclose(doubled.landmarks / 2, native.landmarks, atol=6.0)


def test_batch_results_equal_single_image_results(detector: FaceDetector, generated: np.ndarray) -> None:
    batch = detector.detect(generated[:4])
    for index, image in enumerate(generated[:4]):
        single = detector.detect(image[None])
        np.testing.assert_array_equal(single.scores, batch.scores[index : index + 1])
        np.testing.assert_array_equal(single.boxes, batch.boxes[index : index + 1])


def test_quality_score_falls_with_blur(detector: FaceDetector, astronaut: np.ndarray) -> None:
    blurred = [astronaut] + [cv2.GaussianBlur(astronaut, (0, 0), sigma) for sigma in (4, 8)]
    scores = detector.detect(np.stack(blurred)).scores
    assert scores[0] > scores[1] > scores[2]


def test_torch_input_gives_the_same_result(detector: FaceDetector, generated: np.ndarray) -> None:
    from_numpy = detector.detect(generated[:2])
    from_torch = detector.detect(torch.from_numpy(generated[:2]))
    np.testing.assert_array_equal(from_numpy.scores, from_torch.scores)


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((2, 64, 64, 3), dtype=np.float32),
        np.zeros((64, 64, 3), dtype=np.uint8),
        np.zeros((1, 64, 64, 4), dtype=np.uint8),
    ],
    ids=["float", "unbatched", "rgba"],
)
def test_bad_images_are_refused(detector: FaceDetector, images: np.ndarray) -> None:
    with pytest.raises(ImageError, match=r"images: expected uint8 RGB \(N, H, W, 3\)"):
        detector.detect(images)


@pytest.fixture(scope="module")
def in_torch() -> FaceDetector:
    return FaceDetector(runtime="torch")


def test_the_torch_graph_gives_opencvs_heads(generated: np.ndarray) -> None:
    """YuNet's ONNX graph run by torch against OpenCV's DNN module on the same input."""
    from pipeline.models.yunet import YuNetGraph

    graph = YuNetGraph(FaceDetector().path).eval()
    bgr = np.stack([cv2.resize(image[..., ::-1], (256, 256), interpolation=cv2.INTER_CUBIC) for image in generated[:4]])
    with torch.inference_mode():
        heads = graph(torch.from_numpy(bgr).permute(0, 3, 1, 2).float())
    net = cv2.dnn.readNet(str(FaceDetector().path))
    for index, image in enumerate(bgr):
        net.setInput(cv2.dnn.blobFromImage(image))
        for name, reference in zip(graph.outputs, net.forward(graph.outputs), strict=True):
            np.testing.assert_allclose(heads[name][index].numpy(), reference[0], rtol=0, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("case", ["generated", "astronaut", "padded", "oblong", "blank and noise"])
def test_the_torch_runtime_finds_what_opencv_finds(
    detector: FaceDetector, in_torch: FaceDetector, generated: np.ndarray, astronaut: np.ndarray, case: str
) -> None:
    """Same best face, score, box and landmarks: at 256 px, at 512 px, at a size YuNet pads to
    a multiple of 32 (100 px: 128), on a non-square image, and with no face at all."""
    rng = np.random.default_rng(0)
    images = {
        "generated": generated,
        "astronaut": astronaut[None],
        "padded": generated[:6],
        "oblong": astronaut[None, 20:260, 100:400],
        "blank and noise": np.stack([np.zeros((64, 64, 3), np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]),
    }[case]
    reference, torch_runtime = (detector, in_torch) if case != "padded" else (FaceDetector(min_side=100), FaceDetector(min_side=100, runtime="torch"))
    expected, found = reference.detect(images), torch_runtime.detect(images)
    np.testing.assert_array_equal(found.found, expected.found)
    np.testing.assert_allclose(found.scores, expected.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(found.boxes, expected.boxes, rtol=0, atol=1e-3)
    np.testing.assert_allclose(found.landmarks, expected.landmarks, rtol=0, atol=1e-3)
    if case == "blank and noise":
        assert not found.found.any()
    else:
        assert found.found.any()
