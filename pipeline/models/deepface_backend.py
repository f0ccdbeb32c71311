"""deepface's facial-expression model as the emotion scorer of the `ffhq` profile.

The network is the 7-class FER2013 CNN of deepface (Serengil & Ozpinar, "LightFace: A Hybrid
Deep Face Recognition Framework", ASYU 2020; github.com/serengil/deepface): five unpadded
convolutions and three dense layers on a 48x48 grey face in [0, 1], ending in a softmax. Since
deepface 0.0.102 the model also exists as a PyTorch module (`EmotionModel` in
`deepface.models.demography.pytorch.Emotion`), so no TensorFlow is needed. This module builds
that very class, loads deepface's PyTorch weights into it and reproduces the preprocessing of
`DeepFace.analyze(..., actions=["emotion"], detector_backend="skip")` in batched torch code:

    RGB / 255 -> letterbox into 224x224 (bilinear resize keeping the aspect ratio, zero padding,
    as `deepface.modules.preprocessing.resize_image`) -> BT.601 grey -> bilinear resize to 48x48.

Resizing and grey conversion are both linear, so converting to grey first (one channel instead
of three) gives deepface's numbers; bilinear interpolation without antialiasing is what
OpenCV's `INTER_LINEAR` computes. `DeepFace.analyze` divides by 255 only when an image's maximum
exceeds 1; this module always divides, which differs only for images whose pixels are all 0 or 1.

Weights: `facial_expression_model_weights.pth` (a torch state dict), which exprlock never
downloads. deepface reads it from `$DEEPFACE_HOME/.deepface/weights/` (DEEPFACE_HOME defaults to
the user's home), and so does this module. The file is published by the deepface author in the
serengil/deepface_models releases and on the Hugging Face hub (serengil/deepface); deepface is
MIT-licensed, and the model was trained on FER2013 (Goodfellow et al. 2013).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from deepface.models.demography.DemographyUtils import EMOTION_LABELS
from deepface.models.demography.pytorch import Emotion as deepface_emotion
from torch import nn

from pipeline.errors import AssetError, ImageError
from pipeline.models.emotion import LABELS

WEIGHTS_FILE = "facial_expression_model_weights.pth"
LETTERBOX_SIZE = 224  # `DeepFace.analyze` resizes every face to 224x224 before any attribute model
INPUT_SIZE = 48  # `EmotionClient._preprocess_image`
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # cv2.COLOR_BGR2GRAY, in R, G, B order


def deepface_home(home: Path | None = None) -> Path:
    """The folder holding `.deepface/`: `home`, else `$DEEPFACE_HOME`, else the user's home."""
    if home is not None:
        return Path(home).expanduser()
    return Path(os.environ.get("DEEPFACE_HOME") or Path.home()).expanduser()


def weights_path(home: Path | None = None) -> Path:
    """Where deepface keeps the emotion weights, whether or not the file is there."""
    return deepface_home(home) / ".deepface" / "weights" / WEIGHTS_FILE


def require_weights(home: Path | None = None) -> Path:
    """The emotion weights' path, or an error saying where to put them (exprlock never downloads)."""
    path = weights_path(home)
    if not path.is_file():
        raise AssetError(
            f"deepface emotion weights not found at {path}; download "
            f"{' or '.join(deepface_emotion.WEIGHTS_URL)} to that path (exprlock never "
            "downloads), or set DEEPFACE_HOME to the folder whose .deepface/weights/ holds "
            f"{WEIGHTS_FILE}"
        )
    return path


def _load_state_dict(path: Path, into: nn.Module) -> None:
    """Load tensors only (never arbitrary pickled objects), after checking every name and shape."""
    remedy = f"replace it with a fresh copy of {deepface_emotion.WEIGHTS_URL[0]}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise AssetError(f"{path}: not a readable torch state dict ({error}); {remedy}") from None
    if not isinstance(state, dict):
        raise AssetError(f"{path}: expected a state dict, found {type(state).__name__}; {remedy}")
    expected = {name: tuple(t.shape) for name, t in into.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items() if isinstance(t, torch.Tensor)}
    if found != expected:
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        reshaped = sorted(n for n in set(expected) & set(found) if expected[n] != found[n])
        raise AssetError(
            f"{path}: not deepface's emotion model (missing {missing}, unexpected {unexpected}, "
            f"wrong shape {reshaped}); {remedy}"
        )
    into.load_state_dict(state)


class DeepFaceEmotion(nn.Module):
    """deepface's emotion CNN: seven FER2013 expression classes (`LABELS`) from RGB faces.

    Args:
        home: the folder that holds `.deepface/weights/`; None uses `$DEEPFACE_HOME`, else the
            user's home, exactly as deepface does.

    `forward` is the differentiable path and returns logits; `probabilities` scores uint8 images
    as `DeepFace.analyze` does. The whole image is the face (deepface's `detector_backend="skip"`).
    The module is frozen: its weights never require gradients, and dropout is never applied.

    Raises:
        AssetError: the weights file is absent or is not deepface's emotion state dict.
    """

    LABELS = LABELS

    def __init__(self, home: Path | None = None) -> None:
        super().__init__()
        self.weights_path = require_weights(home)
        self.net = deepface_emotion.EmotionModel()
        _load_state_dict(self.weights_path, self.net)
        self.net.requires_grad_(False)
        # Index into deepface's output for each of our labels, so the order is ours by name.
        order = torch.tensor([EMOTION_LABELS.index(label) for label in LABELS])
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("grey", torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.grey.device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits `(N, 7)` over `LABELS` for float RGB `(N, 3, H, W)` in [-1, 1]; differentiable.

        Softmax of the logits is what deepface reports (in percent) as the emotion scores.
        """
        if not (isinstance(images, torch.Tensor) and images.is_floating_point() and images.ndim == 4) or (
            images.shape[1] != 3
        ):
            found = f"{images.dtype} of shape {tuple(images.shape)}" if hasattr(images, "shape") else type(images)
            raise ImageError(f"images: expected a float RGB tensor (N, 3, H, W) in [-1, 1], got {found}")
        return self._logits(self._preprocess((images + 1) / 2))

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class probabilities `(N, 7)` (float32, CPU) for uint8 RGB faces `(N, H, W, 3)`."""
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ImageError(
                f"images: expected uint8 RGB (N, H, W, 3), got {images.dtype} of shape {tuple(images.shape)}"
            )
        pixels = images.to(self.device).permute(0, 3, 1, 2).float() / 255
        return self._logits(self._preprocess(pixels)).softmax(dim=1).cpu()

    def _preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB `(N, 3, H, W)` in [0, 1] to the network input, grey `(N, 1, 48, 48)` in [0, 1]."""
        grey = (pixels.to(self.device) * self.grey).sum(dim=1, keepdim=True)
        grey = letterbox(grey, LETTERBOX_SIZE)
        return F.interpolate(grey, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)

    def _logits(self, grey: torch.Tensor) -> torch.Tensor:
        """deepface's `EmotionModel.forward` without its final softmax, columns in our label order."""
        net = self.net
        x = net.pool_1(net.relu(net.conv_1(grey)))
        x = net.pool_2(net.relu(net.conv_3(net.relu(net.conv_2(x)))))
        x = net.pool_3(net.relu(net.conv_5(net.relu(net.conv_4(x)))))
        x = net.relu(net.fc_2(net.relu(net.fc_1(torch.flatten(x, start_dim=1)))))  # dropout: inference
        return net.fc_3(x)[:, self.order]


def letterbox(images: torch.Tensor, size: int) -> torch.Tensor:
    """Fit `(N, C, H, W)` into `size` x `size`: bilinear resize keeping the aspect ratio, then
    centred zero padding (the extra pixel of an odd margin goes to the bottom/right).

    The scaled sides are truncated, not rounded, as in `deepface.modules.preprocessing.resize_image`.
    """
    height, width = images.shape[-2:]
    factor = min(size / height, size / width)
    scaled_h, scaled_w = int(height * factor), int(width * factor)
    if (scaled_h, scaled_w) != (height, width):
        images = F.interpolate(images, size=(scaled_h, scaled_w), mode="bilinear", align_corners=False)
    pad_h, pad_w = size - scaled_h, size - scaled_w
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
