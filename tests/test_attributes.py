"""Attribute scorers: Adience gender/age against cv2.dnn, head pose with known answers, colours."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.color
import skimage.data

from pipeline.errors import ImageError
from pipeline.models.assets import asset_path
from pipeline.models.adience import (
    ADIENCE_INPUT_SIZE,
    ADIENCE_MEAN_BGR,
    AGE_BUCKET_MIDPOINTS,
    AGE_BUCKETS,
    AdienceGenderAge,
    GenderAge,
    adience_blob,
    square_face_crops,
)
from pipeline.models.attributes import (
    POSE_LANDMARKS,
    angles_to_rotation,
    colour_attributes,
    head_pose,
    head_rotation,
    region_masks,
    rotation_to_angles,
    srgb_to_lab,
)
from pipeline.generators.dcgan import load_dcgan
from pipeline.models.detector import FaceDetector
from pipeline.models.facemesh import (
    FACE_OVAL,
    LEFT_BROW,
    LEFT_EYE,
    LIPS_OUTER,
    RIGHT_BROW,
    RIGHT_EYE,
    FaceMesh,
    expand_face_box,
)

IMAGE_TO_MODEL = np.array([1.0, -1.0, -1.0])
# Mirror images of the pose landmarks across the face's midline (subject's right <-> left).
MIRROR_PAIRS = {33: 263, 133: 362, 234: 454, 127: 356}


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def facemesh() -> FaceMesh:
    return FaceMesh()


@pytest.fixture(scope="module")
def astronaut_box(detector: FaceDetector, astronaut: np.ndarray) -> np.ndarray:
    return detector.detect(astronaut[None]).boxes


@pytest.fixture(scope="module")
def astronaut_landmarks(facemesh: FaceMesh, astronaut: np.ndarray, astronaut_box: np.ndarray) -> np.ndarray:
    landmarks, _ = facemesh.detect(astronaut[None], expand_face_box(astronaut_box))
    return landmarks.numpy().astype(np.float64)


@pytest.fixture(scope="module")
def generated() -> np.ndarray:
    generator = load_dcgan()
    return generator.render(generator.sample_latents(range(8))).numpy()


@pytest.fixture(scope="module")
def scorer() -> AdienceGenderAge:
    return AdienceGenderAge()


# ---------------------------------------------------------------------------------------------
# Gender and age.
# ---------------------------------------------------------------------------------------------
def test_astronaut_is_scored_an_adult_woman(
    scorer: AdienceGenderAge, astronaut: np.ndarray, astronaut_box: np.ndarray
) -> None:
    result = scorer.predict(astronaut[None], astronaut_box)
    assert result.p_female[0] > 0.5
    assert AGE_BUCKETS[result.age_bucket[0]] in {"(25-32)", "(38-43)", "(48-53)"}
    assert 20 < result.expected_age[0] < 60
    np.testing.assert_allclose(result.gender_probs.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(result.age_probs.sum(axis=1), 1, atol=1e-5)


def test_the_torch_port_equals_opencv_caffe_one_image_at_a_time(
    scorer: AdienceGenderAge, astronaut: np.ndarray, astronaut_box: np.ndarray, generated: np.ndarray
) -> None:
    crops = np.concatenate([square_face_crops(astronaut[None], astronaut_box), square_face_crops(generated)])
    batched = scorer.predict(crops)  # whole 227x227 crops pass through unchanged
    for prefix, probs in (("adience-gender", batched.gender_probs), ("adience-age", batched.age_probs)):
        net = cv2.dnn.readNetFromCaffe(str(asset_path(f"{prefix}-prototxt")), str(asset_path(f"{prefix}-net")))
        for crop, expected in zip(crops, probs, strict=True):
            bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
            net.setInput(cv2.dnn.blobFromImage(bgr, 1.0, (227, 227), ADIENCE_MEAN_BGR, swapRB=False))
            np.testing.assert_allclose(net.forward()[0], expected, atol=1e-5)


def test_preprocessing_equals_a_handwritten_blob(generated: np.ndarray) -> None:
    crops = square_face_crops(generated)
    expected = (crops[..., ::-1].astype(np.float32) - np.array(ADIENCE_MEAN_BGR, dtype=np.float32)).transpose(
        0, 3, 1, 2
    )
    np.testing.assert_allclose(adience_blob(crops), expected, atol=1e-4)


def test_whole_image_crop_is_a_plain_resize(generated: np.ndarray) -> None:
    expected = [cv2.resize(image, (ADIENCE_INPUT_SIZE,) * 2, interpolation=cv2.INTER_LINEAR) for image in generated]
    np.testing.assert_array_equal(square_face_crops(generated), np.stack(expected))


def test_crop_beyond_the_image_repeats_its_border() -> None:
    image = np.tile(np.arange(100, dtype=np.uint8)[None, :, None], (100, 1, 3))  # value = column
    crop = square_face_crops(image[None], np.array([[-20.0, 30.0, 40.0, 90.0]]), size=60)[0]
    assert np.all(crop[:, :20] == 0)  # the 20 columns left of the image repeat column 0
    np.testing.assert_array_equal(crop[0, 20:, 0], np.arange(40))


def test_not_found_boxes_are_refused(astronaut: np.ndarray) -> None:
    with pytest.raises(ImageError, match="boxes: expected 1 finite rows"):
        square_face_crops(astronaut[None], np.full((1, 4), np.nan))


def test_scalar_scores_follow_the_probabilities() -> None:
    ages = np.eye(len(AGE_BUCKETS))
    genders = np.tile([0.25, 0.75], (len(ages), 1))
    result = GenderAge(gender_probs=genders, age_probs=ages)
    np.testing.assert_array_equal(result.expected_age, AGE_BUCKET_MIDPOINTS)
    np.testing.assert_array_equal(result.age_bucket, np.arange(len(AGE_BUCKETS)))
    np.testing.assert_array_equal(result.p_female, 0.75)


# ---------------------------------------------------------------------------------------------
# Head pose.
# ---------------------------------------------------------------------------------------------
def _rotate(landmarks: np.ndarray, rotation: np.ndarray, *, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Rotate image-space landmarks `(N, 468, 3)` about their centroid in the model's axes."""
    model = landmarks * IMAGE_TO_MODEL
    centre = model.mean(axis=1, keepdims=True)
    return ((model - centre) @ rotation.transpose(0, 2, 1) * scale + centre + shift) * IMAGE_TO_MODEL


@pytest.fixture(scope="module")
def frontal(astronaut_landmarks: np.ndarray) -> np.ndarray:
    """A real FaceMesh landmark set turned to the canonical pose."""
    return _rotate(astronaut_landmarks, head_rotation(astronaut_landmarks).transpose(0, 2, 1))


def test_frontal_face_has_zero_pose(frontal: np.ndarray) -> None:
    np.testing.assert_allclose(head_pose(frontal), 0, atol=1e-6)


@pytest.mark.parametrize("angles", [(30, 0, 0), (0, 20, 0), (0, 0, -25), (-40, 15, 10), (25, -30, 35)])
def test_known_rotations_are_recovered(frontal: np.ndarray, angles: tuple[float, float, float]) -> None:
    turned = _rotate(frontal, angles_to_rotation(np.array([angles])), scale=1.7, shift=12.0)
    noisy = turned + np.random.default_rng(0).normal(0, 0.5, turned.shape)  # half a pixel on a ~110 px face
    np.testing.assert_allclose(head_pose(noisy)[0], angles, atol=1.0)


def test_angles_compose_as_documented() -> None:
    """`Ry(yaw) @ Rx(-pitch) @ Rz(roll)`, written out by hand, and back."""

    def about(axis: int, degrees: float) -> np.ndarray:
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        i, j = [(1, 2), (2, 0), (0, 1)][axis]
        rotation = np.eye(3)
        rotation[i, i] = rotation[j, j] = c
        rotation[j, i], rotation[i, j] = s, -s
        return rotation

    angles = np.array([[-40.0, 15.0, 10.0], [25.0, -30.0, 35.0], [0.0, 80.0, -170.0]])
    expected = np.stack([about(1, y) @ about(0, -p) @ about(2, r) for y, p, r in angles])
    np.testing.assert_allclose(angles_to_rotation(angles), expected, atol=1e-12)
    np.testing.assert_allclose(rotation_to_angles(expected), angles, atol=1e-9)


def test_signs_follow_the_image(frontal: np.ndarray) -> None:
    nose, right_eye, left_eye = 4, 33, 263

    def pose_of(angles: tuple[float, float, float]) -> np.ndarray:
        return _rotate(frontal, angles_to_rotation(np.array([angles])))[0]

    turned = pose_of((20, 0, 0))  # yaw > 0: the nose moves to the image's right
    assert turned[nose, 0] - frontal[0, nose, 0] > 5
    raised = pose_of((0, 20, 0))  # pitch > 0: the nose moves up the image (y decreases)
    assert raised[nose, 1] - frontal[0, nose, 1] < -5
    tilted = pose_of((0, 0, 20))  # roll > 0: counter-clockwise, the eye on the image's right rises
    assert tilted[left_eye, 1] < tilted[right_eye, 1] - 10


def test_mirroring_flips_yaw_and_roll(frontal: np.ndarray) -> None:
    angles = np.array([[28.0, -12.0, 17.0]])
    turned = _rotate(frontal, angles_to_rotation(angles))
    mirrored = turned.copy()
    mirrored[..., 0] *= -1
    for right, left in MIRROR_PAIRS.items():
        mirrored[:, [right, left]] = mirrored[:, [left, right]]
    assert set(MIRROR_PAIRS) | set(MIRROR_PAIRS.values()) <= set(POSE_LANDMARKS)
    np.testing.assert_allclose(head_pose(mirrored), angles * [-1, 1, -1], atol=1e-6)


def test_mirrored_generated_faces_get_opposite_yaw(facemesh: FaceMesh, detector: FaceDetector) -> None:
    generator = load_dcgan()
    images = generator.render(generator.sample_latents(range(16))).numpy()
    boxes = detector.detect(images).boxes
    found = ~np.isnan(boxes).any(axis=1)
    images, boxes = images[found], boxes[found]
    mirrored_boxes = np.stack([64 - boxes[:, 2], boxes[:, 1], 64 - boxes[:, 0], boxes[:, 3]], axis=1)
    landmarks, _ = facemesh.detect(images, expand_face_box(boxes))
    mirrored, _ = facemesh.detect(images[:, :, ::-1].copy(), expand_face_box(mirrored_boxes))
    yaw, yaw_mirrored = head_pose(landmarks)[:, 0], head_pose(mirrored)[:, 0]
    turned = np.abs(yaw) > 10
    assert turned.sum() >= 4
    assert np.all(np.sign(yaw[turned]) == -np.sign(yaw_mirrored[turned]))
    assert np.corrcoef(yaw, -yaw_mirrored)[0, 1] > 0.95


def test_bad_landmarks_are_refused() -> None:
    with pytest.raises(ImageError, match=r"landmarks: expected FaceMesh landmarks \(N, 468, 3\)"):
        head_pose(np.zeros((2, 468, 2)))
    with pytest.raises(ImageError, match="finite"):
        head_pose(np.full((1, 468, 3), np.nan))


# ---------------------------------------------------------------------------------------------
# Hair and skin colour.
# ---------------------------------------------------------------------------------------------
HAIR = (196, 160, 84)
SKIN = (224, 178, 152)
FEATURES = (40, 25, 30)


def _polygon(image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int]) -> None:
    cv2.fillPoly(image, [np.round((points - 0.5) * 16).astype(np.int32)], colour, shift=4)


def _painted_face(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Hair colour everywhere outside the face oval, skin inside, dark eyes, brows and lips."""
    xy = landmarks[0, :, :2]
    image = np.empty((*size, 3), dtype=np.uint8)
    image[:] = HAIR
    _polygon(image, xy[list(FACE_OVAL)], SKIN)
    for brow in (RIGHT_BROW, LEFT_BROW):  # upper edge, then the lower edge back
        _polygon(image, xy[list(brow[:5]) + list(brow[5:])[::-1]], FEATURES)
    for contour in (RIGHT_EYE, LEFT_EYE, LIPS_OUTER):
        _polygon(image, xy[list(contour)], FEATURES)
    return image


@pytest.fixture(scope="module")
def painted(astronaut: np.ndarray, astronaut_landmarks: np.ndarray) -> np.ndarray:
    return _painted_face(astronaut_landmarks, astronaut.shape[:2])


def test_painted_colours_come_back(painted: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    result = colour_attributes(painted[None], astronaut_landmarks)
    assert result.hair.pixels[0] > 500 and result.skin.pixels[0] > 300
    np.testing.assert_allclose(result.hair.rgb[0], HAIR, atol=1.0)
    np.testing.assert_allclose(result.skin.rgb[0], SKIN, atol=1.0)
    reference = skimage.color.rgb2lab(np.array([[HAIR, SKIN]], dtype=np.uint8))[0]
    np.testing.assert_allclose(result.hair.lab[0], reference[0], atol=1.0)
    np.testing.assert_allclose(result.skin.lab[0], reference[1], atol=1.0)


@pytest.mark.parametrize(
    ("colour", "score", "direction"),
    [
        ((40, 30, 25), "hair_lightness", -1),  # dark brown: darker than the blond
        ((235, 200, 40), "hair_yellowness", 1),  # golden blond: more yellow
        ((170, 60, 30), "hair_redness", 1),  # red
    ],
)
def test_recolouring_hair_moves_hair_scores_only(
    painted: np.ndarray,
    astronaut_landmarks: np.ndarray,
    colour: tuple[int, int, int],
    score: str,
    direction: int,
) -> None:
    recoloured = painted.copy()
    recoloured[np.all(painted == HAIR, axis=-1)] = colour
    result = colour_attributes(np.stack([painted, recoloured]), np.repeat(astronaut_landmarks, 2, axis=0))
    change = np.diff(getattr(result, score))[0]
    assert direction * change > 5
    np.testing.assert_array_equal(result.skin.rgb[0], result.skin.rgb[1])
    np.testing.assert_array_equal(result.skin_lightness[0], result.skin_lightness[1])


def test_regions_are_where_they_belong(astronaut: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    skin, hair = region_masks(astronaut_landmarks, *astronaut.shape[:2])
    oval = np.zeros(astronaut.shape[:2], dtype=np.uint8)
    _polygon(oval, astronaut_landmarks[0, list(FACE_OVAL), :2], 1)
    assert not (hair[0] & oval.astype(bool)).any()
    assert skin[0][~oval.astype(bool)].sum() == 0
    rows = np.nonzero(hair[0])[0]
    eye_level = astronaut_landmarks[0, [33, 263], 1].mean()
    assert rows.max() < eye_level  # the band stays above the eyes


def test_hair_band_outside_the_image_gives_nan(generated: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    landmarks = astronaut_landmarks.copy()
    eyes = landmarks[0, [33, 263], :2].mean(axis=0)
    landmarks[..., :2] = (landmarks[..., :2] - eyes) * 0.3 + [32.0, 0.0]  # eyes on the top edge
    result = colour_attributes(generated[:1], landmarks)
    assert result.hair.pixels[0] == 0 and np.isnan(result.hair_lightness[0])
    assert result.skin.pixels[0] > 0 and np.isfinite(result.skin_lightness[0])


def test_batched_colours_equal_single_images(
    painted: np.ndarray, astronaut: np.ndarray, astronaut_landmarks: np.ndarray
) -> None:
    images = np.stack([painted, astronaut])
    batch = colour_attributes(images, np.repeat(astronaut_landmarks, 2, axis=0))
    for index in range(2):
        single = colour_attributes(images[index : index + 1], astronaut_landmarks)
        np.testing.assert_allclose(single.hair.lab[0], batch.hair.lab[index], rtol=1e-6)
        np.testing.assert_allclose(single.skin.rgb[0], batch.skin.rgb[index], rtol=1e-6)


def test_lab_conversion_matches_scikit_image() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(srgb_to_lab(images), skimage.color.rgb2lab(images), atol=0.5)
