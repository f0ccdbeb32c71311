"""The torch SFace port against OpenCV's FaceRecognizerSF on the same file, plus alignment."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skimage_data
from skimage.transform import SimilarityTransform

from pipeline.errors import CheckpointError, ImageError
from pipeline.models.assets import asset_path
from pipeline.models.identity import (
    ARCFACE_TEMPLATE,
    CROP_SIZE,
    SAME_IDENTITY_THRESHOLD,
    IdentityEncoder,
    align_crops,
    align_faces,
    cosine,
    crop_faces,
    similarity_transforms,
)


@pytest.fixture(scope="module")
def encoder() -> IdentityEncoder:
    return IdentityEncoder()


@pytest.fixture(scope="module")
def recognizer() -> cv2.FaceRecognizerSF:
    return cv2.FaceRecognizerSF.create(str(asset_path("sface")), "")


@pytest.fixture(scope="module")
def astronauts() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut and her mirror image, with YuNet's detection rows (box, 5 points, score)."""
    detector = cv2.FaceDetectorYN.create(str(asset_path("yunet")), "", (0, 0), 0.6)
    images = np.stack([skimage_data.astronaut(), skimage_data.astronaut()[:, ::-1]])
    detector.setInputSize((images.shape[2], images.shape[1]))
    rows = []
    for image in images:
        _, faces = detector.detect(np.ascontiguousarray(image[:, :, ::-1]))
        assert faces is not None and len(faces) == 1
        rows.append(faces[0])
    return images, np.stack(rows)


def _opencv_crops(recognizer: cv2.FaceRecognizerSF, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """OpenCV's own alignment; it works in BGR, we in RGB."""
    return np.stack(
        [
            recognizer.alignCrop(np.ascontiguousarray(im[:, :, ::-1]), row)[:, :, ::-1]
            for im, row in zip(images, rows, strict=True)
        ]
    )


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_matches_opencv_on_the_same_crops(encoder: IdentityEncoder, recognizer, astronauts) -> None:
    images, rows = astronauts
    faces = _opencv_crops(recognizer, images, rows)
    noise = np.random.default_rng(0).integers(0, 256, (2, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    crops = np.concatenate([faces, noise])
    expected = np.concatenate([recognizer.feature(np.ascontiguousarray(c[:, :, ::-1])) for c in crops])
    with torch.no_grad():
        found = encoder.features(_to_float(crops)).numpy()
    np.testing.assert_allclose(found, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)
    assert (cosine(found, expected) > 0.999).all()
    torch.testing.assert_close(encoder.embed(crops), F.normalize(torch.from_numpy(expected), dim=1), atol=1e-4, rtol=0)


def test_similarity_transform_is_umeyama() -> None:
    rng = np.random.default_rng(2)
    landmarks = np.asarray(ARCFACE_TEMPLATE) * rng.uniform(0.5, 3, (4, 1, 1)) + rng.normal(0, 4, (4, 5, 2)) + 40
    found = similarity_transforms(torch.from_numpy(landmarks)).numpy()
    for points, matrix in zip(landmarks, found, strict=True):
        reference = SimilarityTransform.from_estimate(points, np.asarray(ARCFACE_TEMPLATE))
        assert reference
        np.testing.assert_allclose(matrix, reference.params[:2], atol=1e-9)


def test_alignment_matches_opencv_aligncrop(encoder: IdentityEncoder, recognizer, astronauts) -> None:
    images, rows = astronauts
    expected = _opencv_crops(recognizer, images, rows)
    found = align_crops(images, rows[:, 4:14].reshape(-1, 5, 2)).numpy()
    difference = np.abs(found.astype(int) - expected.astype(int))
    # OpenCV interpolates in fixed point (1/32 pixel, 15-bit weights): a few levels at strong edges.
    assert difference.mean() < 0.25 and difference.max() <= 4
    assert (cosine(encoder.embed(found), encoder.embed(expected)) > 0.999).all()


def test_mirror_image_is_the_same_person(encoder: IdentityEncoder, astronauts) -> None:
    images, rows = astronauts
    embeddings = encoder.embed(align_crops(images, rows[:, 4:14].reshape(-1, 5, 2)))
    assert cosine(embeddings[:1], embeddings[1:]).item() > SAME_IDENTITY_THRESHOLD


def test_two_generated_faces_are_different_people(encoder: IdentityEncoder) -> None:
    from pipeline.generators.dcgan import load_dcgan

    generator = load_dcgan()
    with torch.no_grad():
        embeddings = encoder(crop_faces(generator.synthesize(generator.sample_latents([0, 1]))))
    assert cosine(embeddings[:1], embeddings[1:]).item() < SAME_IDENTITY_THRESHOLD


def test_crop_faces_takes_a_box_per_batch_or_per_image() -> None:
    images = torch.rand(2, 3, 160, 150) * 2 - 1
    shared = crop_faces(images, (10.0, 20.0, 10.0 + CROP_SIZE, 20.0 + CROP_SIZE))
    torch.testing.assert_close(shared, images[:, :, 20 : 20 + CROP_SIZE, 10 : 10 + CROP_SIZE], atol=1e-4, rtol=0)
    boxes = torch.tensor(
        [[10.0, 20.0, 10.0 + CROP_SIZE, 20.0 + CROP_SIZE], [30.0, 5.0, 30.0 + CROP_SIZE, 5.0 + CROP_SIZE]]
    )
    each = crop_faces(images, boxes)
    torch.testing.assert_close(each[1], images[1, :, 5 : 5 + CROP_SIZE, 30 : 30 + CROP_SIZE], atol=1e-4, rtol=0)
    small = images[:, :, :64, :64]
    expected = F.interpolate(small, size=(CROP_SIZE, CROP_SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(crop_faces(small), expected, atol=1e-4, rtol=0)


def test_batched_embeddings_equal_single_embeddings(encoder: IdentityEncoder) -> None:
    crops = np.random.default_rng(3).integers(0, 256, (3, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    batched = encoder.embed(crops)
    single = torch.cat([encoder.embed(crop[None]) for crop in crops])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.norm(dim=1), torch.ones(3))


def test_gradient_flows_through_alignment_to_pixels(
    encoder: IdentityEncoder, astronauts
) -> None:
    images, rows = astronauts
    x = _to_float(images[:1]).requires_grad_(True)
    landmarks = torch.from_numpy(rows[:1, 4:14].reshape(1, 5, 2))
    reference = encoder.embed(align_crops(images[1:], rows[1:, 4:14].reshape(-1, 5, 2)))
    similarity = cosine(encoder(align_faces(x, landmarks)), reference)
    similarity.sum().backward()
    x0, y0, w, h = rows[0, :4].astype(int)
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, :, y0 + 10 : y0 + h - 10, x0 + 10 : x0 + w - 10].abs().sum(dim=0).gt(0).float().mean() > 0.99
    assert x.grad[0, :, :, : x0 - 60].abs().max() == 0, "pixels far outside the aligned crop must not matter"


def test_refuses_bad_inputs(encoder: IdentityEncoder) -> None:
    with pytest.raises(ImageError, match="112x112"):
        encoder(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ImageError, match="uint8 RGB"):
        encoder.embed(np.zeros((1, CROP_SIZE, CROP_SIZE, 3), dtype=np.float32))
    with pytest.raises(ImageError, match="landmarks"):
        align_faces(torch.zeros(2, 3, 64, 64), torch.zeros(2, 68, 2))
    with pytest.raises(ImageError, match="embeddings"):
        cosine(torch.zeros(2, 128), torch.zeros(2, 512))


def test_refuses_a_file_that_is_not_the_model(tmp_path: Path) -> None:
    truncated = tmp_path / "sface.onnx"
    truncated.write_bytes(asset_path("sface").read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        IdentityEncoder(truncated)
