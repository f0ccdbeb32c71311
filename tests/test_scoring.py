"""Batch scoring: pair metrics against references and properties, real-image checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from skimage import data

from data_schemas import EMOTION_LABELS, Col
from pipeline.generators.dcgan import load_dcgan
from pipeline.models.identity import SAME_IDENTITY_THRESHOLD
from pipeline.metrics import js_divergence
from pipeline.scoring import (
    ATTRIBUTE_NAMES,
    EMOTION_MODELS,
    FaceScorer,
    FaceScores,
    compare,
    concat_scores,
    expression_boxes,
    five_points,
    load_scorer,
    repeat_rows,
    source_score_columns,
)


@pytest.fixture(scope="module")
def scorer() -> FaceScorer:
    return FaceScorer()


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    generator = load_dcgan()
    with torch.no_grad():
        return generator.synthesize(generator.sample_latents(range(200, 208)))


def _astronaut_face() -> torch.Tensor:
    """The astronaut's face, square, as a float image in [-1, 1]."""
    crop = data.astronaut()[30:230, 130:330]
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_js_divergence_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(7), size=20), rng.dirichlet(np.ones(7), size=20)
    expected = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q)])
    np.testing.assert_allclose(js_divergence(p, q), expected, atol=1e-12)
    np.testing.assert_allclose(js_divergence(p, p), 0, atol=1e-12)
    np.testing.assert_allclose(js_divergence(np.eye(7)[:1], np.eye(7)[1:2]), [1.0])


def test_five_points_follow_the_template_order(scorer: FaceScorer, faces: torch.Tensor) -> None:
    landmarks, _ = scorer.landmarker(faces)
    points = five_points(landmarks)
    eye_left, eye_right, nose, mouth_left, mouth_right = points.unbind(1)
    assert (eye_left[:, 0] < eye_right[:, 0]).all() and (mouth_left[:, 0] < mouth_right[:, 0]).all()
    assert (nose[:, 1] > eye_left[:, 1]).all() and (mouth_left[:, 1] > nose[:, 1]).all()


def test_a_face_compared_with_itself_changed_nothing(scorer: FaceScorer, faces: torch.Tensor) -> None:
    scores = scorer.score(faces)
    pair = compare(scores, scores)
    assert not pair.emotion_flipped.any()
    np.testing.assert_allclose(pair.emotion_js, 0, atol=1e-7)
    np.testing.assert_allclose(pair.identity_cosine, 1, atol=1e-5)
    np.testing.assert_allclose(pair.landmark_nme, 0, atol=1e-7)


def test_scores_do_not_depend_on_the_batch(scorer: FaceScorer, faces: torch.Tensor) -> None:
    whole = scorer.score(faces)
    parts = concat_scores([scorer.score(faces[:3]), scorer.score(faces[3:])])
    np.testing.assert_allclose(parts.emotion_probs, whole.emotion_probs, atol=1e-5)
    np.testing.assert_allclose(parts.embeddings, whole.embeddings, atol=1e-4)
    np.testing.assert_allclose(parts.landmarks, whole.landmarks, atol=1e-3)
    np.testing.assert_array_equal(parts.face_found, whole.face_found)
    np.testing.assert_allclose(parts.attributes, whole.attributes, atol=1e-3)


def test_without_identity_every_other_score_is_the_same_and_the_encoder_never_runs(
    scorer: FaceScorer, faces: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = scorer.score(faces)
    monkeypatch.setattr(scorer, "identity", None)  # any call of the encoder would fail
    lean = scorer.score(faces, identity=False)
    assert lean.embeddings.shape == whole.embeddings.shape and np.isnan(lean.embeddings).all()
    for name in ("emotion_model_probs", "landmarks", "face_found", "face_score", "attributes"):
        np.testing.assert_array_equal(getattr(lean, name), getattr(whole, name), err_msg=name)


def test_describing_some_attributes_gives_the_same_columns_and_runs_only_the_nets_they_need(
    faces: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = load_scorer("cpu", True, "native", "native", "float32", "adience")
    probs, full = scorer.describe(faces)
    for wanted, nets in ((["p_female"], {"gender"}), (["age"], {"age"}), (["hair_lightness"], None), (["yaw"], None)):
        calls: list[set[str]] = []
        predict = scorer.adience.predict
        monkeypatch.setattr(scorer.adience, "predict", lambda pixels, nets, **k: calls.append(set(nets)) or predict(pixels, nets=nets, **k))
        some_probs, some = scorer.describe(faces, attributes=wanted)
        monkeypatch.undo()
        column = ATTRIBUTE_NAMES.index(wanted[0])
        np.testing.assert_array_equal(some[:, column], full[:, column])
        np.testing.assert_array_equal(some_probs, probs)
        assert calls == ([nets] if nets else [])


def test_face_api_scores_gender_and_age_on_the_expression_networks_crop(scorer: FaceScorer, faces: torch.Tensor) -> None:
    from pipeline.models.face_age_gender import AgeGenderClassifier

    assert scorer.age_gender == "faceapi" and scorer.adience is None  # the default
    scores = scorer.score(faces)
    with torch.no_grad():
        landmarks, _ = scorer.landmarker(faces)
        age, female = AgeGenderClassifier()(faces, expression_boxes(landmarks))
    np.testing.assert_allclose(scores.attribute("p_female"), female.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.attribute("age"), age.numpy(), atol=1e-3)
    assert {r["name"] for r in scorer.provenance() if r["role"] in ("gender", "age")} == {"face-api-age-gender"}
    _, described = scorer.describe(faces, attributes=["hair_lightness"])  # the network is not run for others
    assert np.isnan(described[:, ATTRIBUTE_NAMES.index("age")]).all()
    unscored = load_scorer("cpu", False)
    assert np.isnan(unscored.score(faces[:2]).attribute("p_female")).all()
    assert not {"gender", "age"} & {r["role"] for r in unscored.provenance()}


def test_different_faces_differ(scorer: FaceScorer, faces: torch.Tensor) -> None:
    scores = scorer.score(faces)
    others = FaceScores(**{name: np.roll(getattr(scores, name), 1, axis=0) for name in FaceScores.__dataclass_fields__})
    shifted = compare(scores, others)
    assert (shifted.identity_cosine < SAME_IDENTITY_THRESHOLD).mean() > 0.8
    assert (shifted.landmark_nme > 0.05).all()
    assert scores.face_found.mean() >= 0.75
    np.testing.assert_allclose(scores.emotion_probs.sum(1), 1, atol=1e-5)


def test_astronaut_is_happy_and_her_mirror_the_same_person(scorer: FaceScorer) -> None:
    face = _astronaut_face()
    both = torch.cat([face, face.flip(-1)])
    scores = scorer.score(both)
    assert scores.emotion == ["happy", "happy"]
    assert scores.face_found.all()
    pair = compare(repeat_rows(scores, [1, 0]), repeat_rows(scores, [0, 1]))
    assert pair.identity_cosine[0] > SAME_IDENTITY_THRESHOLD
    yaw = scores.attribute("yaw")
    assert np.sign(yaw[0]) == -np.sign(yaw[1]) or abs(yaw[0]) < 2


def test_repeat_rows_lines_sources_up_with_their_edits(scorer: FaceScorer, faces: torch.Tensor) -> None:
    scores = scorer.score(faces[:2])
    repeated = repeat_rows(scores, 3)
    np.testing.assert_array_equal(repeated.emotion_probs[:3], np.repeat(scores.emotion_probs[:1], 3, axis=0))
    assert len(repeated.face_found) == 6
    assert list(EMOTION_LABELS)[int(scores.emotion_probs[0].argmax())] == scores.emotion[0]
    with pytest.raises(KeyError, match="known: p_female"):
        scores.attribute("hair_colour")
    assert len(ATTRIBUTE_NAMES) == scores.attributes.shape[1]


def test_the_ensemble_labels_with_confidence_and_agreement(scorer: FaceScorer, faces: torch.Tensor) -> None:
    from pipeline.models.face_expression import FaceExpressionClassifier

    scores = scorer.score(faces)
    members = scores.emotion_model_probs
    assert members.shape == (len(faces), len(EMOTION_MODELS), len(EMOTION_LABELS))
    with torch.no_grad():
        landmarks, _ = scorer.landmarker(faces)
        faceapi = FaceExpressionClassifier()(faces, expression_boxes(landmarks)).softmax(dim=1).numpy()
    np.testing.assert_allclose(members[:, EMOTION_MODELS.index("faceapi")], faceapi, atol=1e-5)
    np.testing.assert_allclose(scores.emotion_probs, members.mean(axis=1), atol=1e-7)
    np.testing.assert_allclose(scores.emotion_confidence, scores.emotion_probs.max(axis=1))
    tops = members.argmax(axis=2)
    np.testing.assert_array_equal(scores.emotion_agreement, tops[:, 0] == tops[:, 1])
    assert [EMOTION_LABELS[i] for i in scores.emotion_probs.argmax(1)] == scores.emotion
    columns = source_score_columns(scores, scorer.provenance())
    np.testing.assert_allclose(np.stack(columns[Col.EMOTION_PROBS_FACEAPI_SOURCE]), members[:, 1])
    assert columns[Col.EMOTION_AGREEMENT_SOURCE] == scores.emotion_agreement.tolist()
    astronaut = scorer.score(_astronaut_face())
    assert astronaut.emotion_agreement.tolist() == [True] and astronaut.emotion_confidence[0] > 0.6
    assert {r["role"] for r in scorer.provenance()} >= {"emotion", "emotion_faceapi"}


def test_full_size_backends_replace_the_native_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faces: torch.Tensor
) -> None:
    from test_insightface_backend import write_arcface

    from deepface.models.demography.pytorch.Emotion import EmotionModel

    from pipeline.models.deepface_backend import WEIGHTS_FILE, DeepFaceEmotion
    from pipeline.generators.base import to_uint8
    from pipeline.models.identity import align_faces
    from pipeline.models.insightface_backend import RECOGNITION_FILE, ArcFaceIdentity, pack_dir

    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.manual_seed(0)
    weights = tmp_path / ".deepface" / "weights" / WEIGHTS_FILE
    weights.parent.mkdir(parents=True)
    torch.save(EmotionModel().state_dict(), weights)
    write_arcface(pack_dir() / RECOGNITION_FILE)

    scorer = FaceScorer(attributes=False, emotion="deepface", identity="insightface")
    scores = scorer.score(faces)
    expected_probs = DeepFaceEmotion().probabilities(to_uint8(faces)).numpy()
    np.testing.assert_allclose(scores.emotion_model_probs[:, EMOTION_MODELS.index("fer")], expected_probs, atol=1e-5)
    landmarks, _ = scorer.landmarker(faces)
    crops = to_uint8(align_faces(faces, five_points(landmarks)))
    np.testing.assert_allclose(scores.embeddings, ArcFaceIdentity().embed(crops), atol=1e-5)
    roles = {record["role"]: record for record in scorer.provenance()}
    assert roles["emotion"]["name"] == WEIGHTS_FILE and roles["identity"]["name"] == RECOGNITION_FILE
    assert "non-commercial" in roles["identity"]["licence"]


def test_full_size_backend_without_weights_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import AssetError

    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    with pytest.raises(AssetError, match=str(tmp_path / ".deepface" / "weights")):
        FaceScorer(attributes=False, emotion="deepface")
