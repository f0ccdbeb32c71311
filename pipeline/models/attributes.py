"""Attribute scorers for direction discovery: head pose, hair and skin colour.

Latent directions (linear boundaries and the editor's latent attribute classifier) are learned
from the scores these functions give to generated samples, so each returns plain numbers per
image. Gender and age come from the Adience nets (`pipeline.models.adience`).

- Head pose: yaw, pitch and roll from MediaPipe FaceMesh landmarks, by rigid alignment (Kabsch /
  Umeyama) of expression-stable landmarks to MediaPipe's canonical face model
  (`mediapipe/modules/face_geometry/data/canonical_face_model.obj`, Apache-2.0), the frontal
  reference that MediaPipe's own face-geometry pipeline uses.
- Hair and skin colour: pixel statistics in landmark-defined regions, in RGB and CIELab.

Landmarks follow `pipeline.models.facemesh`: image pixels, pixel (i, j) covering
[j, j + 1) x [i, i + 1), z in the units of x and growing away from the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from pipeline.errors import ImageError
from pipeline.images import as_uint8_images
from pipeline.models.facemesh import (
    FACE_OVAL,
    LEFT_EYE_INNER_CORNER,
    LEFT_EYE_OUTER_CORNER,
    NUM_LANDMARKS,
    RIGHT_EYE_INNER_CORNER,
    RIGHT_EYE_OUTER_CORNER,
)

# ---------------------------------------------------------------------------------------------
# Head pose.
# ---------------------------------------------------------------------------------------------
# Canonical-face-model coordinates (x to the image's right, y up, z towards the camera; units of
# about a centimetre) of landmarks that expressions hardly move: eye corners, nose bridge and
# tip, forehead midline, temples and cheekbones. Mouth, jaw and brows are left out on purpose.
_POSE_REFERENCE: dict[int, tuple[float, float, float]] = {
    RIGHT_EYE_OUTER_CORNER: (-4.446, 2.664, 3.173),
    RIGHT_EYE_INNER_CORNER: (-1.856, 2.585, 3.758),
    LEFT_EYE_INNER_CORNER: (1.856, 2.585, 3.758),
    LEFT_EYE_OUTER_CORNER: (4.446, 2.664, 3.173),
    168: (0.000, 3.271, 5.236),  # nose bridge, between the eyes
    6: (0.000, 2.473, 5.789),
    197: (0.000, 1.728, 6.317),
    4: (0.000, -0.463, 7.587),  # nose tip
    1: (0.000, -1.127, 7.476),
    10: (0.000, 8.262, 4.482),  # forehead, top of the face oval
    151: (0.000, 6.545, 5.027),
    9: (0.000, 4.886, 5.385),
    234: (-7.664, 0.673, -2.436),  # right cheekbone, at the face oval
    454: (7.664, 0.673, -2.436),
    127: (-7.743, 2.365, -2.005),  # right temple
    356: (7.743, 2.365, -2.005),
}
POSE_LANDMARKS = tuple(_POSE_REFERENCE)
# From image axes (x right, y down, z away from the camera) to the canonical model's axes.
_IMAGE_TO_MODEL = np.array([1.0, -1.0, -1.0])
# Yaw, pitch, roll as intrinsic rotations about y, x, z (upper case: intrinsic), pitch negated so
# that raising the nose is positive.
_EULER_AXES = "YXZ"
_EULER_SIGNS = np.array([1.0, -1.0, 1.0])


def head_rotation(landmarks: np.ndarray | torch.Tensor) -> np.ndarray:
    """Rotations `(N, 3, 3)` taking the canonical face to each face, from landmarks `(N, 468, 3)`.

    Least-squares rigid alignment (Kabsch with Umeyama's reflection guard) of `POSE_LANDMARKS`,
    vectorised over the batch. Rotations act in the canonical model's axes: x to the image's
    right, y up, z towards the camera.
    """
    points = _as_landmarks(landmarks, dims=3)[:, list(POSE_LANDMARKS)].astype(np.float64) * _IMAGE_TO_MODEL
    reference = np.array(list(_POSE_REFERENCE.values()))
    observed = points - points.mean(axis=1, keepdims=True)
    canonical = reference - reference.mean(axis=0)
    covariance = np.einsum("nki,kj->nij", observed, canonical)
    u, _, vt = np.linalg.svd(covariance)
    guard = np.ones((len(points), 3))
    guard[:, 2] = np.sign(np.linalg.det(u @ vt))
    return (u * guard[:, None, :]) @ vt


def rotation_to_angles(rotations: np.ndarray) -> np.ndarray:
    """Yaw, pitch, roll in degrees `(N, 3)` with `rotations = Ry(yaw) @ Rx(-pitch) @ Rz(roll)`.

    Signs, as seen in the image: yaw > 0 turns the nose towards the image's right (the subject's
    left), pitch > 0 raises the nose, roll > 0 rotates the face counter-clockwise.
    """
    angles = Rotation.from_matrix(rotations).as_euler(_EULER_AXES, degrees=True)
    return angles * _EULER_SIGNS


def angles_to_rotation(angles: np.ndarray) -> np.ndarray:
    """Rotations `(N, 3, 3)` from yaw, pitch, roll in degrees `(N, 3)`; inverse of `rotation_to_angles`."""
    return Rotation.from_euler(_EULER_AXES, np.asarray(angles, dtype=np.float64) * _EULER_SIGNS, degrees=True).as_matrix()


def head_pose(landmarks: np.ndarray | torch.Tensor) -> np.ndarray:
    """Yaw, pitch, roll in degrees `(N, 3)` from FaceMesh landmarks `(N, 468, 3)`; signs as in `rotation_to_angles`."""
    return rotation_to_angles(head_rotation(landmarks))


def _as_landmarks(landmarks: np.ndarray | torch.Tensor, *, dims: int) -> np.ndarray:
    if isinstance(landmarks, torch.Tensor):
        landmarks = landmarks.detach().cpu().numpy()
    landmarks = np.asarray(landmarks)
    if landmarks.ndim != 3 or landmarks.shape[1] != NUM_LANDMARKS or landmarks.shape[2] < dims:
        raise ImageError(
            f"landmarks: expected FaceMesh landmarks (N, {NUM_LANDMARKS}, {dims}), got shape {landmarks.shape}"
        )
    if not np.isfinite(landmarks[..., :dims]).all():
        raise ImageError("landmarks: expected finite values, found NaN or infinity; drop images without a face")
    return landmarks[..., :dims]


# ---------------------------------------------------------------------------------------------
# Hair and skin colour.
# ---------------------------------------------------------------------------------------------
# Skin regions: both cheeks between the lower eyelid and the nasolabial fold, and a forehead band
# from a third of the way above the brows' upper edge (so brows stay out) to mid-forehead (above
# it, fringes often cover the skin).
CHEEK_POLYGONS = ((117, 118, 101, 36, 205, 187, 123), (346, 347, 330, 266, 425, 411, 352))
FOREHEAD_UPPER = (104, 69, 108, 151, 337, 299, 333)
FOREHEAD_LOWER = (105, 66, 107, 9, 336, 296, 334)  # the brows' upper edge, same order
_FOREHEAD_LIFT = 1 / 3
# The upper face oval from temple to temple, over the forehead; the hair band lies just outside it.
HAIR_ARC = (21, 54, 103, 67, 109, 10, 338, 297, 332, 284, 251)
# Skin polygons are shrunk towards their centre so that landmark error does not reach eyes or brows.
_SKIN_SHRINK = 0.85
_SUBPIXEL_BITS = 4


@dataclass(frozen=True)
class RegionColour:
    """Mean colour of one region per image.

    Attributes:
        rgb: `(N, 3)` mean sRGB in [0, 255].
        lab: `(N, 3)` mean CIELab (D65): L* in [0, 100], a* (green to red), b* (blue to yellow).
        pixels: `(N,)` pixels in the region; colours are NaN where it is 0 (e.g. the hair band
            lies outside the image).
    """

    rgb: np.ndarray
    lab: np.ndarray
    pixels: np.ndarray

    @property
    def lightness(self) -> np.ndarray:
        return self.lab[:, 0]

    @property
    def redness(self) -> np.ndarray:
        return self.lab[:, 1]

    @property
    def yellowness(self) -> np.ndarray:
        return self.lab[:, 2]


@dataclass(frozen=True)
class ColourAttributes:
    """Hair and skin colour of a batch, with the scalar scores used as attributes.

    Blond hair is high in both `hair_lightness` and `hair_yellowness`, red hair in `hair_redness`.
    """

    hair: RegionColour
    skin: RegionColour

    @property
    def hair_lightness(self) -> np.ndarray:
        return self.hair.lightness

    @property
    def hair_redness(self) -> np.ndarray:
        return self.hair.redness

    @property
    def hair_yellowness(self) -> np.ndarray:
        return self.hair.yellowness

    @property
    def skin_lightness(self) -> np.ndarray:
        return self.skin.lightness


def region_masks(
    landmarks: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    *,
    hair_band: tuple[float, float] = (0.05, 0.35),
) -> tuple[np.ndarray, np.ndarray]:
    """Skin and hair masks, each bool `(N, height, width)`, from landmarks `(N, 468, 2 or 3)`.

    The hair band is the upper face oval (`HAIR_ARC`) scaled away from the oval's centre by
    `1 + hair_band[0]` (inner edge) to `1 + hair_band[1]` (outer edge), minus the face oval, so it
    follows the head's roll and size. Polygons are rasterised with 1/16-pixel precision.
    """
    points = _as_landmarks(landmarks, dims=2) - 0.5  # to OpenCV's pixel-centre coordinates
    inner, outer = hair_band
    if not 0 <= inner < outer:
        raise ValueError(f"hair_band: expected 0 <= inner < outer, got {hair_band}")
    skin = np.zeros((len(points), height, width), dtype=np.uint8)
    hair = np.zeros_like(skin)
    face = np.zeros((height, width), dtype=np.uint8)
    for index, xy in enumerate(points):
        polygons = [_shrunk(polygon) for polygon in _skin_polygons(xy)]
        cv2.fillPoly(skin[index], [_fixed_point(p) for p in polygons], 1, shift=_SUBPIXEL_BITS)
        oval = xy[list(FACE_OVAL)]
        arc = xy[list(HAIR_ARC)]
        centre = oval.mean(axis=0)
        band = np.concatenate([_scaled(arc, centre, 1 + outer), _scaled(arc, centre, 1 + inner)[::-1]])
        cv2.fillPoly(hair[index], [_fixed_point(band)], 1, shift=_SUBPIXEL_BITS)
        face[:] = 0
        cv2.fillPoly(face, [_fixed_point(oval)], 1, shift=_SUBPIXEL_BITS)
        hair[index] &= 1 - face
    return skin.astype(bool), hair.astype(bool)


def _skin_polygons(xy: np.ndarray) -> list[np.ndarray]:
    upper, lower = xy[list(FOREHEAD_UPPER)], xy[list(FOREHEAD_LOWER)]
    forehead = np.concatenate([upper, (lower + _FOREHEAD_LIFT * (upper - lower))[::-1]])
    return [xy[list(cheek)] for cheek in CHEEK_POLYGONS] + [forehead]


def _shrunk(polygon: np.ndarray) -> np.ndarray:
    return _scaled(polygon, polygon.mean(axis=0), _SKIN_SHRINK)


def _scaled(points: np.ndarray, centre: np.ndarray, factor: float) -> np.ndarray:
    return centre + (points - centre) * factor


def _fixed_point(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SUBPIXEL_BITS)).astype(np.int32)


def region_colour(images: np.ndarray, lab: np.ndarray, masks: np.ndarray) -> RegionColour:
    """Mean RGB and mean CIELab of the pixels under `masks` `(N, H, W)`."""
    weights = masks.astype(np.float64)
    pixels = weights.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        rgb = np.einsum("nhw,nhwc->nc", weights, images.astype(np.float64)) / pixels[:, None]
        mean_lab = np.einsum("nhw,nhwc->nc", weights, lab.astype(np.float64)) / pixels[:, None]
    return RegionColour(rgb=rgb.astype(np.float32), lab=mean_lab.astype(np.float32), pixels=pixels.astype(np.int64))


def srgb_to_lab(images: np.ndarray) -> np.ndarray:
    """CIELab (D65) float32 `(N, H, W, 3)` of uint8 sRGB images, in one OpenCV call for the batch."""
    count, height, width = images.shape[:3]
    if images.size == 0:
        return np.zeros((count, height, width, 3), dtype=np.float32)
    flat = images.reshape(count * height, width, 3).astype(np.float32) / 255
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(count, height, width, 3)


def colour_attributes(
    images: np.ndarray | torch.Tensor,
    landmarks: np.ndarray | torch.Tensor,
    *,
    hair_band: tuple[float, float] = (0.05, 0.35),
) -> ColourAttributes:
    """Hair and skin colour of uint8 RGB images `(N, H, W, 3)` with their landmarks `(N, 468, 2 or 3)`.

    Colours are averaged per pixel in each space (CIELab after converting every pixel), so the Lab
    mean is a perceptual average rather than the conversion of the mean RGB.
    """
    images = as_uint8_images(images)
    if len(landmarks) != len(images):
        raise ImageError(f"landmarks: expected one set per image ({len(images)}), got {len(landmarks)}")
    skin, hair = region_masks(landmarks, *images.shape[1:3], hair_band=hair_band)
    lab = srgb_to_lab(images)
    return ColourAttributes(hair=region_colour(images, lab, hair), skin=region_colour(images, lab, skin))
