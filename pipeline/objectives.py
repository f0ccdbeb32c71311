"""The preservation objective as a run configures it, and where each editor it trains lives.

HFLD uses FaceMesh landmarks (planar, normalised by the inter-ocular distance, optionally
similarity-aligned on the face oval); the emotion term compares the in-pipeline emotion
ensemble's distributions (the FER2013 model on the whole face, face-api.js's network on the
FaceMesh box), and the identity term SFace embeddings aligned on five FaceMesh points, the same
models and crops that score the manifest. The expression term compares 3DDFA_V2's 10 expression
coefficients, on its own crop around the FaceMesh points' extent. Editing and training both build their losses here,
so applying an edit never imports the training stage.
"""

from __future__ import annotations

import torch

from pipeline.config import PreservationWeights, RunConfig
from pipeline.editing.hfld import HFLDLoss
from pipeline.editing.preservation import FaceTerm, PreservationLoss, cosine_distance, kl_divergence, squared_distance
from pipeline.models.emotion import EmotionClassifier
from pipeline.models.face_expression import FaceExpressionClassifier
from pipeline.models.facemesh import BROWS, EYES, FACE_OVAL, LEFT_EYE, LIPS, RIGHT_EYE, FaceMeshLandmarker
from pipeline.generators.base import FaceGenerator
from pipeline.models.identity import IdentityEncoder, align_faces
from pipeline.models.tddfa import MorphableFace
from pipeline.scoring import emotion_model_probs, five_points

EXPRESSION_LANDMARKS = LIPS + EYES + BROWS


def hfld_loss(config: RunConfig, generator: FaceGenerator, hfld_lambda: float) -> HFLDLoss:
    """HFLD as configured: planar FaceMesh points, inter-ocular normalisation, optional
    similarity alignment on the face oval (so a head-shape change is not counted as expression)."""
    landmarker = FaceMeshLandmarker().to(generator.device).eval()
    settings = config.training
    return HFLDLoss(
        generator,
        lambda images: landmarker(images)[0],
        weight=hfld_lambda,
        planar=True,
        indices=None if settings.landmarks == "all" else EXPRESSION_LANDMARKS,
        iod=(RIGHT_EYE, LEFT_EYE),
        align=settings.align,
        align_indices=FACE_OVAL if settings.align else None,
    )


class EnsembleEmotion(torch.nn.Module):
    """The emotion ensemble's distribution `(N, 7)`, differentiable: the mean of the models'."""

    def __init__(self) -> None:
        super().__init__()
        self.fer = EmotionClassifier().eval()
        self.faceapi = FaceExpressionClassifier().eval()

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        return emotion_model_probs(self.fer, self.faceapi, images, landmarks).mean(dim=1)


class AlignedIdentity(torch.nn.Module):
    """SFace embeddings `(N, 128)` of faces aligned on five FaceMesh points, differentiable."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = IdentityEncoder().eval()

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        return self.encoder(align_faces(images, five_points(landmarks)))


class ExpressionCoefficients(torch.nn.Module):
    """3DDFA_V2's 10 standardised expression coefficients `(N, 10)`, with the extent of the
    FaceMesh points standing in for the face detector's box."""

    def __init__(self) -> None:
        super().__init__()
        self.model = MorphableFace().eval()

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        points = landmarks[..., :2]
        return self.model.expression(images, torch.cat([points.amin(dim=1), points.amax(dim=1)], dim=1))


def preservation_loss(config: RunConfig, generator: FaceGenerator, weights: PreservationWeights) -> PreservationLoss:
    """The preservation loss with `weights`; a term's models load only when its weight is positive."""
    terms = []
    if weights.emotion > 0:
        terms.append(FaceTerm("emotion", weights.emotion, EnsembleEmotion().to(generator.device), kl_divergence))
    if weights.identity > 0:
        terms.append(FaceTerm("identity", weights.identity, AlignedIdentity().to(generator.device), cosine_distance))
    if weights.expression > 0:
        terms.append(FaceTerm("expression", weights.expression, ExpressionCoefficients().to(generator.device), squared_distance))
    return PreservationLoss(hfld_loss(config, generator, weights.landmarks), terms)
