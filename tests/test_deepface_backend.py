"""DeepFaceEmotion against deepface's own `DeepFace.analyze`, offline.

The real weights are user-supplied, so each test writes a stand-in: deepface's own `EmotionModel`
with seeded random weights, saved as the state dict deepface's PyTorch engine reads, at the path
it reads it from. Every test runs with sockets refused, so any download attempt fails it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from deepface.commons import backend_utils, weight_utils
from deepface.models.demography.pytorch.Emotion import EmotionModel
from deepface.modules import modeling
from network_guard import NetworkAttempt

from pipeline.errors import AssetError, ImageError
from pipeline.models.deepface_backend import LABELS, WEIGHTS_FILE, DeepFaceEmotion, weights_path

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture
def deepface_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty DEEPFACE_HOME, deepface on its PyTorch engine, and deepface's model cache cleared."""
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    monkeypatch.setenv("DEEPFACE_BACKEND_ENGINE", "pytorch")
    monkeypatch.setattr(backend_utils, "_backend_engine", None)
    fresh = {task: {} for task in modeling.AVAILABLE_MODELS}
    monkeypatch.setattr(modeling, "cached_models", fresh, raising=False)
    return tmp_path


@pytest.fixture
def home(deepface_env: Path) -> Path:
    """DEEPFACE_HOME holding stand-in emotion weights in deepface's format and place."""
    torch.manual_seed(0)
    net = EmotionModel()
    # He initialisation keeps the activations' spread through the ReLUs, so that the outputs vary
    # with the image and a preprocessing slip shows in the probabilities.
    for layer in net.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    path = deepface_env / ".deepface" / "weights" / WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return deepface_env


def blotches(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 RGB images `(N, H, W, 3)` of smooth random colour fields, distinct to the stand-in net."""
    rng = np.random.default_rng(seed)
    count, height, width = shape
    coarse = torch.from_numpy(rng.random((count, 3, 4, 4), dtype=np.float32))
    fields = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (fields * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def analyze_reference(images: np.ndarray) -> np.ndarray:
    """deepface's own emotion probabilities for uint8 RGB images, in our label order."""
    from deepface import DeepFace  # imported late: the import creates $DEEPFACE_HOME/.deepface/


    rows = []
    for image in images:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        (result,) = DeepFace.analyze(bgr, actions=["emotion"], detector_backend="skip", silent=True)
        rows.append([result["emotion"][label] / 100 for label in LABELS])
    return np.array(rows)


@pytest.mark.parametrize("shape", [(3, 70, 50), (2, 41, 96), (2, 224, 224)])
def test_matches_deepface_analyze(home: Path, shape: tuple[int, int, int]) -> None:
    images = blotches(sum(shape), shape)
    expected = analyze_reference(images)

    found = DeepFaceEmotion().probabilities(images).numpy()

    np.testing.assert_allclose(found, expected, atol=2e-6)
    # The images' probabilities differ by thousands of times the tolerance, so the check has teeth.
    assert np.ptp(expected, axis=0).max() > 0.01, "stand-in weights too flat to tell images apart"


def test_explicit_home_overrides_environment(home: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("elsewhere")
    (other / ".deepface" / "weights").mkdir(parents=True)
    (home / ".deepface" / "weights" / WEIGHTS_FILE).rename(other / ".deepface" / "weights" / WEIGHTS_FILE)

    model = DeepFaceEmotion(home=other)

    assert model.weights_path == other / ".deepface" / "weights" / WEIGHTS_FILE


def test_batch_equals_single_images(home: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (4, 60, 60, 3), dtype=np.uint8)
    model = DeepFaceEmotion()

    batched = model.probabilities(images)
    single = torch.cat([model.probabilities(images[i : i + 1]) for i in range(len(images))])

    torch.testing.assert_close(batched, single, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched.sum(dim=1), torch.ones(len(images)))


def test_forward_is_differentiable_and_agrees(home: Path) -> None:
    images = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    model = DeepFaceEmotion()
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).requires_grad_()

    logits = model(pixels)
    logits[:, LABELS.index("happy")].sum().backward()

    torch.testing.assert_close(logits.detach().softmax(dim=1), model.probabilities(images), atol=1e-5, rtol=0)
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_missing_weights_name_path_and_remedy(deepface_env: Path) -> None:
    expected = deepface_env / ".deepface" / "weights" / WEIGHTS_FILE
    assert weights_path() == expected

    with pytest.raises(AssetError, match=rf"not found at {expected}; download https://\S+/{WEIGHTS_FILE}"):
        DeepFaceEmotion()


def test_socket_guard_catches_deepface_downloading(deepface_env: Path) -> None:
    """The guard is what proves the tests offline: deepface's own loader trips it."""
    with pytest.raises(ValueError, match="exception occurred while downloading") as raised:
        weight_utils.download_weights_if_necessary(WEIGHTS_FILE, "https://example.invalid/weights.pth")
    assert isinstance(raised.value.__cause__, NetworkAttempt)


def test_truncated_weights_are_refused(home: Path) -> None:
    path = home / ".deepface" / "weights" / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:1000])

    with pytest.raises(AssetError, match=rf"{path}: not a readable torch state dict .*fresh copy of https://"):
        DeepFaceEmotion()


def test_foreign_state_dict_is_refused(home: Path) -> None:
    path = home / ".deepface" / "weights" / WEIGHTS_FILE
    state = torch.load(path, weights_only=True)
    state["fc_3.weight"] = state["fc_3.weight"][:6]
    del state["fc_3.bias"]
    torch.save(state, path)

    with pytest.raises(AssetError, match=r"missing \['fc_3.bias'\], unexpected \[\], wrong shape \['fc_3.weight'\]"):
        DeepFaceEmotion()


def test_bad_images_are_refused(home: Path) -> None:
    model = DeepFaceEmotion()
    with pytest.raises(ImageError, match=r"expected uint8 RGB \(N, H, W, 3\), got torch.float32 of shape \(1, 8, 8, 3"):
        model.probabilities(np.zeros((1, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ImageError, match=r"expected a float RGB tensor \(N, 3, H, W\) in \[-1, 1\], got torch.float32"):
        model(torch.zeros(1, 8, 8, 3))
