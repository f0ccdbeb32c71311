"""Held-out judges: PyEmotion against its own code, dlib's 68 points, and the per-edit metrics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
from PIL import Image

from pipeline.judges import scores as judge_scores
from pipeline.judges.dlib68 import DlibJudge, landmark_nme, similarity_align
from pipeline.judges.mtcnn import MTCNN
from pipeline.judges.pyemotion import LABELS, PyEmotionJudge, face_crops, load_pyemotion
from pipeline.metrics import js_divergence
from pipeline.models.assets import asset_path
from pipeline.generators.dcgan import load_dcgan

pytestmark = pytest.mark.slow

# Eileen Collins' face in skimage's astronaut image, (x0, y0, x1, y1): MTCNN's box on it.
ASTRONAUT_FACE = np.array([181.0, 62.0, 268.0, 172.0])


@pytest.fixture(scope="module")
def dlib_judge() -> DlibJudge:
    return DlibJudge()


@pytest.fixture(scope="module")
def emotion_judge() -> PyEmotionJudge:
    return PyEmotionJudge()


@pytest.fixture(scope="module")
def generated() -> np.ndarray:
    generator = load_dcgan()
    return generator.render(generator.sample_latents(range(16))).numpy()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def reference_network() -> torch.nn.Module:
    """PyEmotion's own `NetworkV2`, from its `networks.py`, loaded the way its `main.py` does."""
    spec = importlib.util.spec_from_file_location("pyemotion_networks", asset_path("pyemotion-reference"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = module.NetworkV2(in_c=1, nl=32, out_f=7)
    network.load_state_dict(torch.load(asset_path("pyemotion"), map_location="cpu", weights_only=True)["network"])
    return network.eval()


def test_mtcnn_matches_facenet_pytorch_own_cascade(tmp_path: Path, astronaut: np.ndarray) -> None:
    from reference_mtcnn import reference_mtcnn

    reference = reference_mtcnn(tmp_path)
    generator = load_dcgan()
    images = [astronaut, *generator.render(generator.sample_latents(range(24))).numpy()]
    detector = MTCNN()
    found = 0
    for image in images:
        boxes, scores = reference.detect(image)
        ours = detector(image[None])[0]
        if boxes is None:
            assert len(ours) == 0
            continue
        found += 1
        np.testing.assert_allclose(ours[:, :4], np.asarray(boxes, dtype=np.float64), rtol=0, atol=1e-3)
        np.testing.assert_allclose(ours[:, 4], np.asarray(scores, dtype=np.float64), rtol=0, atol=1e-5)
    assert found >= 20  # most demo faces are found, so the comparison covers all three stages
    astronaut_box = detector(astronaut[None])[0][0, :4]
    np.testing.assert_allclose(astronaut_box, ASTRONAUT_FACE, atol=1.0)  # the box the test set names


def test_pyemotion_port_matches_pyemotion_own_network(dlib_judge: DlibJudge, generated: np.ndarray, astronaut: np.ndarray) -> None:
    faces = dlib_judge(generated)
    assert faces.found.sum() >= 8
    crops = torch.cat([
        face_crops(generated[faces.found], faces.boxes[faces.found]),
        face_crops(astronaut[None], ASTRONAUT_FACE[None]),
        torch.rand(4, 1, 48, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1,
    ])
    reference = reference_network()
    ours = load_pyemotion()
    with torch.no_grad():
        theirs = reference(crops)
        logits = ours(crops)
        features = crops
        for stage in (reference.conv_1, reference.conv_2, reference.conv_3, reference.conv_4):
            features = stage(features)
        their_logits = reference.linear[:-1](features.flatten(1))
    torch.testing.assert_close(logits, their_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.sigmoid(logits), theirs, rtol=0, atol=1e-6)
    # The authors rank their sigmoid outputs; the softmax of the logits ranks the same way.
    assert torch.equal(torch.softmax(logits, dim=1).argmax(dim=1), theirs.argmax(dim=1))


def test_pyemotion_judges_a_smile_happy(emotion_judge: PyEmotionJudge, astronaut: np.ndarray) -> None:
    probabilities = emotion_judge(astronaut[None], ASTRONAUT_FACE[None])
    assert probabilities.shape == (1, 7)
    assert probabilities.sum() == pytest.approx(1.0)
    assert LABELS[int(probabilities.argmax())] == "happy"


def test_face_crop_is_grey_box_in_minus_one_to_one(emotion_judge: PyEmotionJudge) -> None:
    image = np.zeros((1, 60, 80, 3), dtype=np.uint8)
    image[0, 10:40, 20:50] = (255, 0, 0)  # pure red: BT.601 luma 76
    crop = face_crops(image, np.array([[20.2, 9.8, 49.6, 40.4]]))
    np.testing.assert_allclose(crop.numpy(), (76 / 255 - 0.5) / 0.5, atol=1e-6)
    # Corners outside the image are clipped the way slicing clips them; no box means no face.
    partly_outside = face_crops(image, np.array([[-10.0, -10.0, 50.0, 40.0]]))
    assert partly_outside.shape == (1, 1, 48, 48) and partly_outside.min() == -1.0
    missing = emotion_judge(image, np.full((1, 4), np.nan))
    assert np.isnan(missing).all()


def test_dlib_finds_the_astronaut_face_and_its_parts(dlib_judge: DlibJudge, astronaut: np.ndarray) -> None:
    faces = dlib_judge(astronaut[None])
    assert faces.found.tolist() == [True]
    box, points = faces.boxes[0], faces.landmarks[0]
    inter = np.maximum(0, np.minimum(box[2:], ASTRONAUT_FACE[2:]) - np.maximum(box[:2], ASTRONAUT_FACE[:2])).prod()
    union = np.prod(box[2:] - box[:2]) + np.prod(ASTRONAUT_FACE[2:] - ASTRONAUT_FACE[:2]) - inter
    assert inter / union > 0.5
    eyes, mouth = points[36:48], points[48:68]
    assert eyes[:, 1].max() < mouth[:, 1].min()  # eyes above the mouth
    assert points[36, 0] < points[45, 0]  # outer corner of the eye on the image's left first


def test_dlib_reports_points_in_input_pixels(dlib_judge: DlibJudge, generated: np.ndarray) -> None:
    doubled = np.stack([np.asarray(Image.fromarray(g).resize((128, 128), Image.BILINEAR)) for g in generated])
    small, large = dlib_judge(generated), dlib_judge(doubled)
    both = small.found & large.found
    assert both.sum() >= 8
    error = np.abs(large.landmarks[both] / 2 - small.landmarks[both])
    assert np.median(error) < 0.5  # pixels of the 64-pixel image


def test_an_image_without_a_face_is_nan(dlib_judge: DlibJudge) -> None:
    faces = dlib_judge(np.full((1, 64, 64, 3), 128, dtype=np.uint8))
    assert faces.found.tolist() == [False]
    assert np.isnan(faces.boxes).all() and np.isnan(faces.landmarks).all()


def test_similarity_alignment_and_nme() -> None:
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 64, size=(68, 2))
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = 1.4 * source @ rotation.T + np.array([5.0, -3.0])
    np.testing.assert_allclose(similarity_align(moved, source), source, atol=1e-9)
    mirrored = source * np.array([-1.0, 1.0])
    assert np.abs(similarity_align(mirrored, source) - source).max() > 1.0  # no reflections
    ocular = np.linalg.norm(source[36] - source[45])
    shifted = source + np.array([3.0, 4.0])
    raw = landmark_nme(source[None], shifted[None], align=False)
    np.testing.assert_allclose(raw, [5.0 / ocular])
    np.testing.assert_allclose(landmark_nme(source[None], shifted[None], align=True), [0.0], atol=1e-9)
    smiling = source.copy()
    smiling[48:68] += rng.normal(0, 2, size=(20, 2))
    # Only the 51 inner points count, and alignment cannot explain a changed mouth away.
    jaw_only = source.copy()
    jaw_only[:17] += 10.0
    assert landmark_nme(source[None], jaw_only[None], align=False)[0] == 0.0
    assert landmark_nme(source[None], smiling[None], align=True)[0] > 0.01
    assert np.isnan(landmark_nme(source[None], np.full((1, 68, 2), np.nan), align=True)[0])


def _scored(probs: list[list[float]] | None, found: bool) -> dict:
    p = np.asarray(probs, dtype=np.float64) if found else np.full(7, np.nan)
    points = np.random.default_rng(int(found)).uniform(0, 64, size=(68, 2)) if found else np.full((68, 2), np.nan)
    return {"emotion_face": found, "pyemotion_probs": p, "landmark_face": found, "landmarks": points}


def test_edit_metrics_count_a_lost_face_as_not_kept() -> None:
    happy, sad = np.eye(7)[3] * 0.9 + 0.1 / 7, np.eye(7)[4] * 0.9 + 0.1 / 7
    sources = pd.DataFrame([_scored(happy, True), _scored(happy, True), _scored(happy, True)])
    edits = pd.DataFrame([_scored(happy * 0.5 + sad * 0.5 * 0.98, True), _scored(sad, True), _scored(None, False)])
    metrics = judge_scores.edit_metrics(sources, edits)
    assert metrics["pyemotion_judged"].tolist() == [True, True, False]
    assert metrics["dlib68_judged"].tolist() == [True, True, False]
    assert metrics["pyemotion_flipped"].iloc[:2].tolist() == [0.0, 1.0] and np.isnan(metrics["pyemotion_flipped"].iloc[2])
    assert metrics["pyemotion_kept"].tolist() == [True, False, False]
    np.testing.assert_allclose(metrics["pyemotion_js"].iloc[1], js_divergence(happy[None], sad[None])[0])
    assert np.isnan(metrics["pyemotion_js"].iloc[2]) and np.isnan(metrics["dlib68_nme"].iloc[2])


def test_scores_are_cached_by_image_digest(tmp_path: Path, generated: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.images import encode_png, write_atomic

    paths = [tmp_path / f"{i}.png" for i in range(3)]
    digests = [write_atomic(encode_png(image), path) for image, path in zip(generated[:3], paths)]
    cache = tmp_path / "cache" / "judges.parquet"
    first = judge_scores.score_images(paths + paths[:1], digests + digests[:1], cache=cache)
    assert first.index.tolist() == digests

    def unavailable(*_: object) -> None:
        raise AssertionError("a cached image was judged again")

    monkeypatch.setattr(judge_scores, "DlibJudge", unavailable)
    monkeypatch.setattr(judge_scores, "MTCNN", unavailable)
    again = judge_scores.score_images(paths, digests, cache=cache)
    for digest in digests:
        assert again.at[digest, "emotion_face"] == first.at[digest, "emotion_face"]
        assert again.at[digest, "landmark_face"] == first.at[digest, "landmark_face"]
        np.testing.assert_array_equal(again.at[digest, "pyemotion_probs"], first.at[digest, "pyemotion_probs"])
        np.testing.assert_array_equal(again.at[digest, "landmarks"], first.at[digest, "landmarks"])
    # Scores made with other judge weights are not reused.
    monkeypatch.setattr(judge_scores, "_fingerprint", lambda: "other weights")
    with pytest.raises(AssertionError, match="judged again"):
        judge_scores.score_images(paths, digests, cache=cache)


def test_the_mirror_floor_reads_zero_on_symmetric_faces_and_skips_faceless_images(
    generated: np.ndarray, emotion_judge: PyEmotionJudge
) -> None:
    """A face that is its own mirror image cannot move the judge; an ordinary face moves it by
    exactly what PyEmotion says between the two pictures; an image without a face is not judged."""
    left = generated[0][:, :32]
    symmetric = np.concatenate([left, left[:, ::-1]], axis=1)
    faceless = np.full_like(generated[0], 128)
    face = generated[1]
    changes = judge_scores.mirror_changes(np.stack([symmetric, faceless, face]))
    assert changes["judged"].tolist() == [True, False, True]
    assert changes.at[0, "js"] == 0.0 and changes.at[0, "flipped"] == 0.0
    assert np.isnan(changes.at[1, "js"])
    detector = MTCNN()
    pair = [face, np.ascontiguousarray(face[:, ::-1])]
    p, q = (emotion_judge(image[None], detector(image[None])[0][:1, :4]) for image in pair)
    assert changes.at[2, "js"] == pytest.approx(float(js_divergence(p, q)[0]), abs=1e-9)
    assert changes.at[2, "flipped"] == float(p.argmax() != q.argmax())
