"""Batch scoring of generated faces and of (source, edit) pairs.

`FaceScorer.score` runs every model once per batch: FaceMesh landmarks, the emotion ensemble
(mini-Xception or deepface on FER2013, and face-api.js's expression network), SFace identity (aligned on five points taken from the FaceMesh landmarks, so it never depends
on a detection), YuNet detection and quality, Adience gender and age, head pose and hair/skin
colour. `compare` turns the scores of sources and their edits into the manifest's pair metrics:
emotion flip, Jensen-Shannon divergence, identity cosine and landmark NME.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from data_schemas import ATTRIBUTE_FIELDS, EMOTION_LABELS, Col
from pipeline.config import GENDER_AGE_ASSETS, AgeGenderModel, Precision
from pipeline.editing.hfld import landmark_nme
from pipeline.errors import ConfigError
from pipeline.metrics import js_divergence
from pipeline.threads import configure_threads
from pipeline.models.assets import REGISTRY, file_sha256
from pipeline.models.adience import AdienceGenderAge
from pipeline.models.attributes import colour_attributes, head_pose
from pipeline.models.deepface_backend import DeepFaceEmotion
from pipeline.models.detector import FaceDetector
from pipeline.models.emotion import EmotionClassifier
from pipeline.models.face_age_gender import AgeGenderClassifier
from pipeline.models.face_expression import FaceExpressionClassifier
from pipeline.models.facemesh import LEFT_EYE, RIGHT_EYE, FaceMeshLandmarker
from pipeline.generators.base import to_uint8
from pipeline.models.identity import EMBEDDING_DIM, IdentityEncoder, align_faces, cosine
from pipeline.models.insightface_backend import LICENCE as INSIGHTFACE_LICENCE
from pipeline.models.insightface_backend import ArcFaceIdentity

EmotionBackend = Literal["native", "deepface"]
IdentityBackend = Literal["native", "insightface"]
DEEPFACE_LICENCE = "deepface facial expression model (serengil/deepface, MIT); trained on FER2013"
ATTRIBUTE_NAMES = tuple(name for name, _ in ATTRIBUTE_FIELDS)
# The scorer column behind each editable attribute; higher means "more" of it.
ATTRIBUTE_SCORES = {
    "gender": "p_female",
    "age": "age",
    "hair_lightness": "hair_lightness",
    "hair_redness": "hair_redness",
    "skin_lightness": "skin_lightness",
    "yaw": "yaw",
}
GENDER_AGE_NETS = {"p_female": "gender", "age": "age"}  # the attributes only the gender and age scorer gives, by net
# FaceMesh points for SFace's five-point template, in its order: eye on the image's left (the
# subject's right), eye on the image's right, nose tip, mouth corner on the image's left, right.
_NOSE_TIP, _MOUTH_IMAGE_LEFT, _MOUTH_IMAGE_RIGHT = 1, 61, 291
_MODEL_ROLES = (
    ("landmarks", "facemesh"),
    ("emotion", "fer-mini-xception"),
    ("emotion_faceapi", "face-api-expression"),
    ("identity", "sface"),
    ("detector", "yunet"),
)


# The in-pipeline emotion models, in the order of `FaceScores.emotion_model_probs`: one trained
# on FER2013 (mini-Xception, or deepface's model) and face-api.js's expression network, which
# was trained on other data. Their ensemble labels every face.
EMOTION_MODELS = ("fer", "faceapi")


@dataclass(frozen=True)
class FaceScores:
    """Per-image scores of a batch; NumPy arrays with the batch first."""

    emotion_model_probs: np.ndarray  # (N, len(EMOTION_MODELS), 7) in EMOTION_LABELS order
    landmarks: np.ndarray  # (N, 468, 3) image pixels
    embeddings: np.ndarray  # (N, D) unit length (D: 128 for SFace, 512 for ArcFace); NaN where not computed
    face_found: np.ndarray  # (N,) bool
    face_score: np.ndarray  # (N,) detector confidence, 0 when nothing was proposed
    attributes: np.ndarray  # (N, len(ATTRIBUTE_NAMES)), NaN where undefined

    @property
    def emotion_probs(self) -> np.ndarray:
        """The ensemble's distribution `(N, 7)`: the mean of the models' distributions."""
        return ensemble_probs(self.emotion_model_probs)

    @property
    def emotion(self) -> list[str]:
        """The ensemble's label of each face."""
        return [EMOTION_LABELS[i] for i in self.emotion_probs.argmax(axis=1)]

    @property
    def emotion_confidence(self) -> np.ndarray:
        """How sure the ensemble is: its top probability, `(N,)`."""
        return self.emotion_probs.max(axis=1)

    @property
    def emotion_agreement(self) -> np.ndarray:
        """Whether every model names the same top emotion, `(N,)` bool."""
        return emotion_agreement(self.emotion_model_probs)

    def attribute(self, name: str) -> np.ndarray:
        """One attribute column, e.g. `p_female`; KeyError lists the known names."""
        if name not in ATTRIBUTE_NAMES:
            raise KeyError(f"attribute {name!r}; known: {', '.join(ATTRIBUTE_NAMES)}")
        return self.attributes[:, ATTRIBUTE_NAMES.index(name)]


@dataclass(frozen=True)
class PairScores:
    """How much an edit changed what should stay: emotion, identity, landmarks."""

    emotion_flipped: np.ndarray  # (N,) bool
    emotion_js: np.ndarray  # (N,) bits, in [0, 1]
    identity_cosine: np.ndarray  # (N,)
    landmark_nme: np.ndarray  # (N,)


EXPRESSION_BOX_GROWTH = 1.15


def expression_boxes(landmarks: torch.Tensor) -> torch.Tensor:
    """Square face boxes `(N, 4)` for face-api's network from FaceMesh points `(N, 468, 3)`.

    The square spans the points' larger extent, grown by `EXPRESSION_BOX_GROWTH` about their
    centre, close to the boxes of face-api's own face detector (brows to chin, a little margin).
    """
    points = landmarks[..., :2]
    low, high = points.amin(dim=1), points.amax(dim=1)
    centre = (low + high) / 2
    half = (high - low).amax(dim=1, keepdim=True) / 2 * EXPRESSION_BOX_GROWTH
    return torch.cat([centre - half, centre + half], dim=1)


def emotion_model_probs(
    fer: torch.nn.Module, faceapi: torch.nn.Module, images: torch.Tensor, landmarks: torch.Tensor
) -> torch.Tensor:
    """Each emotion model's distribution `(N, len(EMOTION_MODELS), 7)`, differentiable in `images`.

    The FER2013 model sees the whole image, as it was trained on whole-face images; face-api's
    network sees the crop its own detector would give, approximated by a square around the
    FaceMesh points (`expression_boxes`).
    """
    fer_probs = torch.softmax(fer(images), dim=1)
    faceapi_probs = torch.softmax(faceapi(images, expression_boxes(landmarks)), dim=1)
    return torch.stack([fer_probs, faceapi_probs], dim=1)


def ensemble_probs(model_probs: np.ndarray) -> np.ndarray:
    """The ensemble's distribution from the models' `(N, M, 7)`: their mean, float32."""
    return np.asarray(model_probs, dtype=np.float32).mean(axis=1)


def emotion_agreement(model_probs: np.ndarray) -> np.ndarray:
    """Per face, whether every model's top emotion is the same."""
    tops = np.asarray(model_probs).argmax(axis=2)
    return (tops == tops[:, :1]).all(axis=1)


def five_points(landmarks: torch.Tensor) -> torch.Tensor:
    """SFace's five alignment points `(N, 5, 2)` from FaceMesh landmarks, in OpenCV pixels.

    FaceMesh puts the centre of the top-left pixel at (0.5, 0.5), OpenCV at (0, 0).
    """
    right_eye = landmarks[:, list(RIGHT_EYE), :2].mean(dim=1)
    left_eye = landmarks[:, list(LEFT_EYE), :2].mean(dim=1)
    points = [right_eye, left_eye] + [landmarks[:, i, :2] for i in (_NOSE_TIP, _MOUTH_IMAGE_LEFT, _MOUTH_IMAGE_RIGHT)]
    return torch.stack(points, dim=1) - 0.5


class FaceScorer:
    """All scoring models, loaded once; `score` takes generator images `(N, 3, R, R)` in [-1, 1].

    Args:
        device: where the torch models run, YuNet included on a CUDA device (on the CPU it runs
            through OpenCV, which is faster there); insightface's graphs run on the CPU.
        attributes: also score gender and age; without them `p_female` and `age` are NaN.
        emotion: "native" (FER2013 mini-Xception asset) or "deepface" (deepface's emotion
            model, from its weights folder; refused with the path when absent).
        identity: "native" (SFace asset) or "insightface" (ArcFace of buffalo_l, likewise).
        precision: the number format of the torch classifiers (both emotion models, SFace, the
            gender and age scorer), through autocast: "bfloat16" halves their cost on CPUs with
            AVX512-BF16 or AMX and on GPUs, "float16" is for GPUs. FaceMesh stays float32, as
            landmark distances of a fraction of a pixel are what HFLD measures; so do YuNet and
            insightface's graphs, which run outside torch.
        age_gender: "faceapi" (face-api.js's age and gender network, on the square around the
            FaceMesh points that its expression network sees) or "adience" (the Adience nets, on
            the whole image).
    """

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        attributes: bool = True,
        emotion: EmotionBackend = "native",
        identity: IdentityBackend = "native",
        precision: Precision = "float32",
        age_gender: AgeGenderModel = "faceapi",
    ) -> None:
        self.device = torch.device(device)
        if precision == "float16" and self.device.type != "cuda":
            raise ConfigError(
                f"scoring.precision: float16 runs only on CUDA, and this run scores on {self.device.type}; "
                "use bfloat16 or float32"
            )
        self.precision = precision
        self.landmarker = self._placed(FaceMeshLandmarker())
        self.emotion = self._placed(EmotionClassifier() if emotion == "native" else DeepFaceEmotion())
        self.expression = self._placed(FaceExpressionClassifier())
        self.identity = self._placed(IdentityEncoder()) if identity == "native" else ArcFaceIdentity()
        self.embedding_size = EMBEDDING_DIM if isinstance(self.identity, IdentityEncoder) else self.identity.dim
        self.detector = FaceDetector(device=self.device)
        self.age_gender = age_gender if attributes else None
        self.adience = AdienceGenderAge(self.device) if self.age_gender == "adience" else None
        self.faceapi_age_gender = self._placed(AgeGenderClassifier()) if self.age_gender == "faceapi" else None
        self._provenance: list[dict[str, str]] | None = None

    def _placed(self, model: torch.nn.Module) -> torch.nn.Module:
        """On the scorer's device in inference mode; channels-last on the CPU, where oneDNN runs
        these networks 1.3 to 2.9 times as fast (FaceMesh most) with outputs equal within
        float32 rounding. Only inference: no loss differentiates through the scorer's models."""
        layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        return model.to(self.device, memory_format=layout).eval()

    def _classifying(self) -> contextlib.AbstractContextManager:
        """Autocast at the classifiers' precision; a no-op at float32."""
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.precision))

    @torch.no_grad()
    def score(self, images: torch.Tensor, *, identity: bool = True) -> FaceScores:
        """Every score of each image. `identity=False` skips the identity encoder (embeddings
        are NaN): identity is a comparison with an edit, so sources nobody edits need none."""
        images = images.to(self.device, torch.float32)
        landmarks, _ = self.landmarker(images)
        if identity:
            embeddings = self._embed(align_faces(images, five_points(landmarks)))
        else:
            embeddings = np.full((len(images), self.embedding_size), np.nan, dtype=np.float32)
        pixels = to_uint8(images).numpy()
        detections = self.detector.detect(pixels)
        emotion_model_probs = self._emotion_model_probs(images, landmarks)
        attributes = self._attributes(images, pixels, landmarks)
        return FaceScores(
            emotion_model_probs=emotion_model_probs,
            landmarks=landmarks.cpu().numpy(),
            embeddings=embeddings,
            face_found=detections.found,
            face_score=detections.scores,
            attributes=attributes,
        )

    def _embed(self, crops: torch.Tensor) -> np.ndarray:
        if isinstance(self.identity, IdentityEncoder):
            with self._classifying():
                return self.identity(crops).float().cpu().numpy()
        return np.asarray(self.identity.embed(to_uint8(crops)), dtype=np.float32)

    @torch.no_grad()
    def describe(self, images: torch.Tensor, attributes: Collection[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ensemble's emotion probabilities `(N, 7)` and attributes `(N, A)` only: what
        direction discovery and the per-edit lock need, without the identity and detection
        models. With `attributes`, a gender or age model runs only when one of them needs it (the
        columns nobody asked for may be NaN); the columns asked for are the same as without."""
        images = images.to(self.device, torch.float32)
        landmarks, _ = self.landmarker(images)
        pixels = to_uint8(images).numpy()
        wanted = GENDER_AGE_NETS.values() if attributes is None else [GENDER_AGE_NETS[a] for a in attributes if a in GENDER_AGE_NETS]
        model_probs = self._emotion_model_probs(images, landmarks)
        return ensemble_probs(model_probs), self._attributes(images, pixels, landmarks, nets=set(wanted))

    @torch.no_grad()
    def expressions(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Each emotion model's probabilities `(N, M, 7)` and whether the detector finds a face
        `(N,)`: what steering a face to a target expression needs."""
        images = images.to(self.device, torch.float32)
        landmarks, _ = self.landmarker(images)
        return self._emotion_model_probs(images, landmarks), self.detector.detect(to_uint8(images).numpy()).found

    def _emotion_model_probs(self, images: torch.Tensor, landmarks: torch.Tensor) -> np.ndarray:
        with self._classifying():
            probs = emotion_model_probs(self.emotion, self.expression, images, landmarks)
        return probs.float().cpu().numpy()

    def _attributes(
        self, images: torch.Tensor, pixels: np.ndarray, landmarks: torch.Tensor,
        *, nets: Collection[str] = tuple(GENDER_AGE_NETS.values()),
    ) -> np.ndarray:  # fmt: skip
        count = len(pixels)
        columns = dict.fromkeys(ATTRIBUTE_NAMES, np.full(count, np.nan, dtype=np.float32))
        if self.adience is not None and nets:
            with self._classifying():
                gender_age = self.adience.predict(pixels, nets=nets)
            columns["p_female"] = gender_age.p_female
            columns["age"] = gender_age.expected_age
        if self.faceapi_age_gender is not None and nets:
            with self._classifying():
                age, female = self.faceapi_age_gender(images, expression_boxes(landmarks))
            columns["p_female"], columns["age"] = female.float().cpu().numpy(), age.float().cpu().numpy()
        points = landmarks.cpu().numpy()
        pose = head_pose(points)
        columns["yaw"], columns["pitch"], columns["roll"] = pose[:, 0], pose[:, 1], pose[:, 2]
        colours = colour_attributes(pixels, points)
        columns["hair_lightness"] = colours.hair_lightness
        columns["hair_redness"] = colours.hair_redness
        columns["hair_yellowness"] = colours.hair_yellowness
        columns["skin_lightness"] = colours.skin_lightness
        return np.stack([np.asarray(columns[name], dtype=np.float32) for name in ATTRIBUTE_NAMES], axis=1)

    def provenance(self) -> list[dict[str, str]]:
        """Which model file, digest and licence stands behind each score (for the manifest).

        Worked out once per scorer: a full-size backend's digest reads its weights file (ArcFace's
        is 166 MB), and shards ask for every batch.
        """
        if self._provenance is None:
            self._provenance = self._model_records()
        return [dict(record) for record in self._provenance]

    def _model_records(self) -> list[dict[str, str]]:
        records = [_asset_record(role, name) for role, name in _MODEL_ROLES if self._uses(role)]
        if self.age_gender is not None:
            records += [_asset_record(role, name) for role, name in GENDER_AGE_ASSETS[self.age_gender].items()]
        for role, model in (("emotion", self.emotion), ("identity", self.identity)):
            if isinstance(model, (DeepFaceEmotion, ArcFaceIdentity)):
                records.append(
                    {"role": role, "name": model.weights_path.name, "sha256": file_sha256(model.weights_path),
                     "licence": DEEPFACE_LICENCE if role == "emotion" else INSIGHTFACE_LICENCE}
                )
        return records

    def _uses(self, role: str) -> bool:
        if role == "emotion":
            return isinstance(self.emotion, EmotionClassifier)
        if role == "identity":
            return isinstance(self.identity, IdentityEncoder)
        return True


def _asset_record(role: str, name: str) -> dict[str, str]:
    return {"role": role, "name": name, "sha256": REGISTRY[name].sha256, "licence": REGISTRY[name].licence}


def compare(source: FaceScores, edit: FaceScores) -> PairScores:
    """Pair metrics of sources and their edits (row i of one against row i of the other)."""
    landmarks_source = torch.from_numpy(source.landmarks[..., :2])
    landmarks_edit = torch.from_numpy(edit.landmarks[..., :2])
    nme = landmark_nme(landmarks_edit, landmarks_source, iod=(RIGHT_EYE, LEFT_EYE))
    return PairScores(
        emotion_flipped=source.emotion_probs.argmax(1) != edit.emotion_probs.argmax(1),
        emotion_js=js_divergence(source.emotion_probs, edit.emotion_probs).astype(np.float32),
        identity_cosine=cosine(source.embeddings, edit.embeddings).numpy().astype(np.float32),
        landmark_nme=nme.numpy().astype(np.float32),
    )


def repeat_rows(scores: FaceScores, repeats: Sequence[int] | int) -> FaceScores:
    """Each source's scores repeated, to line them up with several edits of the same source."""
    fields = {name: np.repeat(getattr(scores, name), repeats, axis=0) for name in FaceScores.__dataclass_fields__}
    return FaceScores(**fields)


@lru_cache(maxsize=2)
def load_scorer(
    device: str,
    attributes: bool,
    emotion: EmotionBackend = "native",
    identity: IdentityBackend = "native",
    precision: Precision = "float32",
    age_gender: AgeGenderModel = "faceapi",
) -> FaceScorer:
    """One scorer per process and setting; loading the models takes seconds."""
    configure_threads()
    return FaceScorer(device=device, attributes=attributes, emotion=emotion, identity=identity, precision=precision,
                      age_gender=age_gender)  # fmt: skip


def concat_scores(parts: Sequence[FaceScores]) -> FaceScores:
    """Scores of several batches as one."""
    return FaceScores(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in FaceScores.__dataclass_fields__})


def attribute_records(attributes: np.ndarray) -> list[dict[str, float | None]]:
    """Rows of the `attributes_*` struct columns; NaN becomes null."""
    return [
        {name: (None if np.isnan(value) else float(value)) for name, value in zip(ATTRIBUTE_NAMES, row, strict=True)}
        for row in attributes
    ]


def _ensemble_columns(scores: FaceScores, face: str) -> dict[str, list]:
    """Each emotion model's probabilities, the ensemble's confidence and agreement."""
    members = {f"emotion_probs_{model}_{face}": list(scores.emotion_model_probs[:, i]) for i, model in enumerate(EMOTION_MODELS)}
    return members | {
        f"emotion_confidence_{face}": scores.emotion_confidence.tolist(),
        f"emotion_agreement_{face}": scores.emotion_agreement.tolist(),
    }


def source_score_columns(scores: FaceScores, models: list[dict[str, str]]) -> dict[str, list]:
    """Manifest columns that describe the source face of each row."""
    return {
        Col.EMOTION_SOURCE: scores.emotion,
        Col.EMOTION_PROBS_SOURCE: list(scores.emotion_probs),
        **_ensemble_columns(scores, "source"),
        Col.ATTRIBUTES_SOURCE: attribute_records(scores.attributes),
        Col.FACE_DETECTED_SOURCE: scores.face_found.tolist(),
        Col.FACE_SCORE_SOURCE: scores.face_score.tolist(),
        Col.MODELS: [models] * len(scores.face_found),
    }


def edit_score_columns(scores: FaceScores, pair: PairScores) -> dict[str, list]:
    """Manifest columns that describe the edited face of each row and its change."""
    return {
        Col.EMOTION_EDIT: scores.emotion,
        Col.EMOTION_PROBS_EDIT: list(scores.emotion_probs),
        **_ensemble_columns(scores, "edit"),
        Col.ATTRIBUTES_EDIT: attribute_records(scores.attributes),
        Col.FACE_DETECTED_EDIT: scores.face_found.tolist(),
        Col.FACE_SCORE_EDIT: scores.face_score.tolist(),
        Col.EMOTION_FLIPPED: pair.emotion_flipped.tolist(),
        Col.EMOTION_JS: pair.emotion_js.tolist(),
        Col.IDENTITY_COSINE: pair.identity_cosine.tolist(),
        Col.LANDMARK_NME: pair.landmark_nme.tolist(),
    }
