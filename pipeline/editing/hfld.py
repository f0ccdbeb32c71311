"""The HFLD loss: how far an edit moves the face's landmarks, and the landmark NME metric.

He and McGough, "My Emotion on your face: The use of Facial Keypoint Detection to preserve
Emotions in Latent Space Editing" (arXiv 2505.06436, 2025) add a Human Face Landmark Detection
term to a latent editor's loss, penalising the change of facial keypoints between the source
image `G(w)` and the edited image `G(w')` as judged by a pretrained, differentiable keypoint
detector `P`:

    HFLD(w, w') = lambda * mean_k || P(G(w'))_k - P(G(w))_k ||^2

The source landmarks are constants (computed without gradient); gradients flow through the
detector and the generator into the edited latent only. Options beyond the plain formula:

- a landmark subset (e.g. mouth, eyes and brows, the points that carry expression);
- normalisation by the inter-ocular distance of the source, making the loss independent of
  image resolution and face size;
- similarity (Procrustes) alignment of the edited landmarks onto the source before measuring,
  so that an edit that moves, turns or rescales the head (pose, head shape) is not counted as
  an expression change. The transform is estimated in closed form (2-D: complex least squares;
  3-D: Umeyama's SVD solution, reflections excluded) and is differentiable.

The landmark detector is any callable from float images `(N, 3, H, W)` in [-1, 1] (what
`FaceGenerator.synthesize` returns) to landmarks `(N, K, 2 or 3)`; it is not imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from pipeline.errors import ConfigError, ImageError
from pipeline.generators.base import FaceGenerator

LandmarkFn = Callable[[torch.Tensor], torch.Tensor]
Indices = Sequence[int] | torch.Tensor
EyePair = tuple[int | Sequence[int], int | Sequence[int]]


def check_landmarks(points: torch.Tensor, *, what: str = "landmarks") -> None:
    """Refuse anything but a float tensor `(N, K, 2 or 3)`."""
    if not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[-1] not in (2, 3):
        found = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ImageError(f"{what}: expected a tensor (N, K, 2 or 3), got {found}")


def _index(indices: Indices | None, device: torch.device) -> torch.Tensor | None:
    return None if indices is None else torch.as_tensor(indices, dtype=torch.long, device=device).flatten()


def _select(points: torch.Tensor, indices: Indices | None) -> torch.Tensor:
    index = _index(indices, points.device)
    return points if index is None else points.index_select(1, index)


def interocular_distance(points: torch.Tensor, eyes: EyePair) -> torch.Tensor:
    """Distance `(N,)` between two landmarks, or between the centroids of two landmark groups.

    `eyes` is e.g. `(33, 263)` (outer eye corners of FaceMesh) or `(RIGHT_EYE, LEFT_EYE)`
    (contour groups, whose means are the eye centres).
    """
    first, second = (_select(points, [e] if isinstance(e, int) else e).mean(dim=1) for e in eyes)
    return (first - second).norm(dim=-1)


def similarity_align(moving: torch.Tensor, fixed: torch.Tensor, *, indices: Indices | None = None) -> torch.Tensor:
    """`moving` mapped by the similarity (scale, rotation, translation) that best fits it to `fixed`.

    The transform minimises the squared distance over the landmarks in `indices` (all when
    None) and is then applied to every landmark. Both inputs are `(N, K, D)`, D in {2, 3}.
    """
    check_landmarks(moving, what="moving landmarks")
    if fixed.shape != moving.shape:
        raise ImageError(
            f"landmarks: edited {tuple(moving.shape)} and source {tuple(fixed.shape)} must have the same shape"
        )
    x, y = _select(moving, indices), _select(fixed, indices)
    mean_x, mean_y = x.mean(dim=1, keepdim=True), y.mean(dim=1, keepdim=True)
    x, y = x - mean_x, y - mean_y
    variance = x.square().sum(dim=(1, 2)).clamp_min(torch.finfo(x.dtype).tiny)
    if moving.shape[-1] == 2:
        # z -> c z with c = sum(conj(x) y) / sum|x|^2, written out for real pairs.
        a = (x * y).sum(dim=(1, 2)) / variance
        b = (x[..., 0] * y[..., 1] - x[..., 1] * y[..., 0]).sum(dim=1) / variance
        matrix = torch.stack([torch.stack([a, -b], dim=-1), torch.stack([b, a], dim=-1)], dim=-2)
    else:
        covariance = y.transpose(1, 2) @ x
        u, s, vh = torch.linalg.svd(covariance)
        sign = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        correction = torch.ones_like(s)
        correction = torch.cat([correction[:, :-1], sign[:, None]], dim=1)
        rotation = u @ torch.diag_embed(correction) @ vh
        scale = (s * correction).sum(dim=1) / variance
        matrix = scale[:, None, None] * rotation
    return (moving - mean_x) @ matrix.transpose(1, 2) + mean_y


def _prepare(
    edited: torch.Tensor,
    source: torch.Tensor,
    *,
    indices: Indices | None,
    iod: EyePair | None,
    align: bool,
    align_indices: Indices | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point displacement vectors `(N, k, D)` and the per-sample length unit `(N,)`."""
    check_landmarks(edited, what="edited landmarks")
    check_landmarks(source, what="source landmarks")
    if edited.shape != source.shape:
        raise ImageError(
            f"landmarks: edited {tuple(edited.shape)} and source {tuple(source.shape)} must have the same shape"
        )
    if align:
        edited = similarity_align(edited, source, indices=align_indices)
    unit = torch.ones(len(source), dtype=source.dtype, device=source.device)
    if iod is not None:
        unit = interocular_distance(source, iod).clamp_min(torch.finfo(source.dtype).eps)
    return _select(edited, indices) - _select(source, indices), unit


def landmark_shift(
    edited: torch.Tensor,
    source: torch.Tensor,
    *,
    indices: Indices | None = None,
    iod: EyePair | None = None,
    align: bool = False,
    align_indices: Indices | None = None,
) -> torch.Tensor:
    """Mean squared landmark displacement per sample, `(N,)`: the HFLD term without lambda.

    Args:
        edited, source: landmarks `(N, K, D)`; gradients flow into `edited` only if `source`
            is constant, as the HFLD definition requires.
        indices: the landmarks to measure (e.g. mouth, eyes and brows); None measures all.
        iod: two landmarks or two landmark groups whose distance in the source is the length
            unit (distances squared are divided by its square); None keeps detector units.
        align: fit `edited` onto `source` with a similarity first (see `similarity_align`).
        align_indices: landmarks that define the alignment (e.g. the rigid face oval and
            nose); None uses all of them.
    """
    delta, unit = _prepare(edited, source, indices=indices, iod=iod, align=align, align_indices=align_indices)
    return delta.square().sum(dim=-1).mean(dim=1) / unit.square()


def landmark_nme(
    predicted: torch.Tensor,
    reference: torch.Tensor,
    *,
    iod: EyePair,
    indices: Indices | None = None,
    align: bool = False,
    align_indices: Indices | None = None,
) -> torch.Tensor:
    """Normalised mean error per sample, `(N,)`: mean point distance over inter-ocular distance.

    The standard landmark metric (300-W style), here between the landmarks of an edit and of
    its source. Pass `points[..., :2]` for the image-plane NME of 3-D landmarks.
    """
    delta, unit = _prepare(predicted, reference, indices=indices, iod=iod, align=align, align_indices=align_indices)
    return delta.norm(dim=-1).mean(dim=1) / unit


class HFLDLoss:
    """HFLD of edited latents against their sources, rendering through a frozen generator.

    Args:
        generator: renders latents differentiably (`synthesize`).
        landmarks: the detector, images `(N, 3, H, W)` in [-1, 1] to `(N, K, 2 or 3)`.
        weight: lambda, the factor in front of the mean squared landmark displacement.
        planar: use only the image-plane coordinates (x, y) of 3-D landmarks.
        indices, iod, align, align_indices: see `landmark_shift`.
    """

    def __init__(
        self,
        generator: FaceGenerator,
        landmarks: LandmarkFn,
        *,
        weight: float = 1.0,
        planar: bool = False,
        indices: Indices | None = None,
        iod: EyePair | None = None,
        align: bool = False,
        align_indices: Indices | None = None,
    ) -> None:
        if weight < 0:
            raise ConfigError(f"HFLD weight: expected lambda >= 0, got {weight}")
        self.generator = generator
        self.landmarks = landmarks
        self.weight = float(weight)
        self.planar = planar
        self.indices = None if indices is None else tuple(int(i) for i in torch.as_tensor(indices).flatten())
        self.iod = None if iod is None else tuple(e if isinstance(e, int) else tuple(int(i) for i in e) for e in iod)
        self.align = align
        self.align_indices = (
            None if align_indices is None else tuple(int(i) for i in torch.as_tensor(align_indices).flatten())
        )

    def describe(self) -> dict[str, Any]:
        """The options as plain JSON values, for checkpoints and manifests."""
        return {
            "weight": self.weight,
            "planar": self.planar,
            "indices": None if self.indices is None else list(self.indices),
            "iod": None if self.iod is None else [e if isinstance(e, int) else list(e) for e in self.iod],
            "align": self.align,
            "align_indices": None if self.align_indices is None else list(self.align_indices),
        }

    def detect(self, latents: torch.Tensor) -> torch.Tensor:
        """Landmarks of the rendered latents, differentiable with respect to the latents."""
        points = self.landmarks(self.generator.synthesize(latents))
        check_landmarks(points, what="landmark detector output")
        if len(points) != len(latents):
            raise ImageError(f"landmark detector output: expected {len(latents)} faces, got {len(points)}")
        return points[..., :2] if self.planar else points

    def shift(self, edited: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The landmark shift per sample `(N,)` with this loss's options, without lambda."""
        return landmark_shift(
            edited,
            source.detach(),
            indices=self.indices,
            iod=self.iod,
            align=self.align,
            align_indices=self.align_indices,
        )

    @torch.no_grad()
    def source_landmarks(self, latents: torch.Tensor) -> torch.Tensor:
        """Landmarks of the sources, constants of the loss."""
        return self.detect(latents)

    def __call__(
        self,
        edited_latents: torch.Tensor,
        *,
        source_latents: torch.Tensor | None = None,
        source_landmarks: torch.Tensor | None = None,
        reduction: Literal["mean", "none"] = "mean",
    ) -> torch.Tensor:
        """lambda * landmark shift, the batch mean or one value per sample.

        Give the sources as latents (rendered here without gradient) or as landmarks already
        computed with `source_landmarks`, which saves a render when the same sources are
        compared many times (refinement).
        """
        if (source_latents is None) == (source_landmarks is None):
            raise ConfigError("HFLD: give exactly one of source_latents or source_landmarks")
        if source_landmarks is None:
            source_landmarks = self.source_landmarks(source_latents)
        per_sample = self.weight * self.shift(self.detect(edited_latents), source_landmarks)
        if reduction == "none":
            return per_sample
        if reduction == "mean":
            return per_sample.mean()
        raise ConfigError(f"HFLD reduction: expected 'mean' or 'none', got {reduction!r}")
