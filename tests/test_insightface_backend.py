"""The insightface adapters against insightface's own API, offline.

The buffalo_l pack is user-supplied, so each test writes small stand-in graphs with the contracts
insightface routes on, under `<root>/models/buffalo_l/` with the pack's file names: an ArcFace-like
graph (NCHW 1x3x112x112 input `input.1`, one `(N, 512)` output) and an SCRFD-like graph (nine
outputs: scores, box distances and landmark offsets for strides 8, 16 and 32, two anchors each).
Every test runs with sockets refused, so any download attempt fails it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from insightface.app.common import Face
from insightface.model_zoo import get_model
from insightface.utils import storage
from network_guard import NetworkAttempt
from onnx import TensorProto, helper, numpy_helper

from pipeline.errors import AssetError, ImageError
from pipeline.models.identity import align_crops, cosine
from pipeline.models.insightface_backend import (
    DETECTION_FILE,
    RECOGNITION_FILE,
    ArcFaceIdentity,
    SCRFDDetector,
    pack_dir,
)

pytestmark = pytest.mark.usefixtures("no_network")

RED, BLUE = (255, 0, 0), (0, 0, 255)


def save_model(nodes: list, inputs: list, outputs: list, initialisers: list, path: Path) -> Path:
    model = helper.make_model(
        helper.make_graph(nodes, path.stem, inputs, outputs, initialisers),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def write_arcface(path: Path, *, normalises_inside: bool = False) -> Path:
    """A random linear ArcFace stand-in: Conv 8x8/8 to 8 channels, flatten, project to 512.

    With `normalises_inside` its first nodes are MXNet-style `_minus`/`_mul` nodes, the pattern from
    which insightface infers that the graph wants raw pixels (mean 0, std 1).
    """
    rng = np.random.default_rng(7)
    nodes, pixels = [], "input.1"
    initialisers = [
        numpy_helper.from_array(rng.normal(0, 0.1, (8, 3, 8, 8)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8 * 14 * 14, 512)).astype(np.float32), "fc_w"),
    ]
    if normalises_inside:
        initialisers += [
            numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
            numpy_helper.from_array(np.array(1 / 128, np.float32), "scale"),
        ]
        nodes += [
            helper.make_node("Sub", [pixels, "mean"], ["centred"], name="_minus0"),
            helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="_mul0"),
        ]
        pixels = "scaled"
    nodes += [
        helper.make_node("Conv", [pixels, "conv_w"], ["conv"], strides=[8, 8], name="Conv_0"),
        helper.make_node("Flatten", ["conv"], ["flat"], axis=1, name="Flatten_1"),
        helper.make_node("MatMul", ["flat", "fc_w"], ["683"], name="MatMul_2"),
    ]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])]
    return save_model(nodes, inputs, outputs, initialisers, path)


def write_scrfd(path: Path) -> Path:
    """An SCRFD stand-in that detects red: an anchor scores high where its stride cell is red in
    the network's RGB input, with a box of 4 strides square centred on the anchor and fixed
    landmark offsets."""
    landmark_offsets = np.array([-1, -1, 1, -1, 0, 0, -1, 1, 1, 1], np.float32) * 0.8
    nodes, initialisers, outputs = [], [], []
    for head, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in (8, 16, 32):
            weight = np.zeros((2 * width, 3, stride, stride), np.float32)
            bias = np.zeros(2 * width, np.float32)
            if head == "score":  # logit 4 * mean(R - G - B) - 8: about +4 on red, -4 on black, -12 on blue
                weight[:, 0], weight[:, 1:] = 4 / stride**2, -4 / stride**2
                bias[:] = -8
            elif head == "bbox":
                bias[:] = 2
            else:
                bias[:] = np.tile(landmark_offsets, 2)
            name = f"{head}_{stride}"
            initialisers += [
                numpy_helper.from_array(weight, f"{name}_w"),
                numpy_helper.from_array(bias, f"{name}_b"),
                numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}_shape"),
            ]
            flat = f"{name}_flat" if head == "score" else name
            nodes += [
                helper.make_node("Conv", ["input.1", f"{name}_w", f"{name}_b"], [f"{name}_conv"], strides=[stride] * 2),
                helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_nhwc"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [flat]),
            ]
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [flat], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width]))
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])]
    return save_model(nodes, inputs, outputs, initialisers, path)


def bgr(images: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(image[:, :, ::-1]) for image in images]


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def squares(colour: tuple[int, int, int], count: int = 1) -> np.ndarray:
    """Black 200x160 RGB images with a 60x60 square of `colour` at x 60..120, y 40..100."""
    images = np.zeros((count, 200, 160, 3), np.uint8)
    images[:, 40:100, 60:120] = colour
    return images


@pytest.fixture
def crops() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)


@pytest.mark.parametrize("normalises_inside", [False, True], ids=["mean-127.5", "mxnet-graph"])
def test_embeddings_match_insightface_get_feat(tmp_path: Path, crops: np.ndarray, normalises_inside: bool) -> None:
    path = write_arcface(tmp_path / "models" / "buffalo_l" / RECOGNITION_FILE, normalises_inside=normalises_inside)
    reference = get_model(str(path), providers=["CPUExecutionProvider"])
    assert reference.input_mean == (0.0 if normalises_inside else 127.5)
    expected = unit(reference.get_feat(bgr(crops)))

    identity = ArcFaceIdentity(tmp_path, providers=["CPUExecutionProvider"])
    found = identity.embed(crops).numpy()

    np.testing.assert_allclose(found, expected, atol=1e-5)
    swapped = identity.embed(crops[..., ::-1].copy()).numpy()
    assert (found * swapped).sum(axis=1).max() < 0.99, "stand-in blind to channel order"


def test_embed_is_one_session_call_and_batch_independent(
    tmp_path: Path, crops: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_arcface(tmp_path / "models" / "buffalo_l" / RECOGNITION_FILE)
    identity = ArcFaceIdentity(tmp_path, providers=["CPUExecutionProvider"])
    calls = []
    run = identity.model.session.run
    monkeypatch.setattr(identity.model.session, "run", lambda *a, **k: calls.append(1) or run(*a, **k))

    batched = identity.embed(torch.from_numpy(crops))

    assert len(calls) == 1
    single = torch.cat([identity.embed(crops[i : i + 1]) for i in range(len(crops))])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched.norm(dim=1), torch.ones(len(crops)))
    assert identity.embed(crops[:0]).shape == (0, 512)


def test_cosine_matches_insightface_compute_sim(tmp_path: Path, crops: np.ndarray) -> None:
    path = write_arcface(tmp_path / "models" / "buffalo_l" / RECOGNITION_FILE)
    identity = ArcFaceIdentity(tmp_path, providers=["CPUExecutionProvider"])
    a, b = identity.embed(crops[:2]), identity.embed(crops[2:])
    reference = get_model(str(path), providers=["CPUExecutionProvider"])

    expected = [reference.compute_sim(x, y) for x, y in zip(a.numpy(), b.numpy())]

    np.testing.assert_allclose(identity.cosine(a, b).numpy(), expected, atol=1e-6)
    torch.testing.assert_close(identity.cosine(a, -a), -torch.ones(2))


def test_detections_match_insightface_detect(tmp_path: Path) -> None:
    path = write_scrfd(tmp_path / "models" / "buffalo_l" / DETECTION_FILE)
    images = np.concatenate([squares(RED), squares(BLUE)])
    reference = get_model(str(path), providers=["CPUExecutionProvider"])
    expected = [reference.detect(image, input_size=(640, 640), det_thresh=0.5) for image in bgr(images)]

    red, blue = SCRFDDetector(tmp_path, providers=["CPUExecutionProvider"]).detect(images)

    np.testing.assert_array_equal(red.boxes, expected[0][0][:, :4])
    np.testing.assert_array_equal(red.scores, expected[0][0][:, 4])
    np.testing.assert_array_equal(red.landmarks, expected[0][1])
    # The red square is found where it is, in the input image's pixels; blue (red read as BGR) is not.
    centres = (red.boxes[:, :2] + red.boxes[:, 2:]) / 2
    assert len(red) > 0 and len(blue) == 0
    assert np.all((centres >= (60, 40)) & (centres <= (120, 100)))
    assert np.all(np.diff(red.scores) <= 0)


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # inside insightface's norm_crop
def test_detect_align_embed_matches_insightface_get(tmp_path: Path) -> None:
    """The whole chain against insightface's `ArcFaceONNX.get`, which aligns a face with the
    detector's landmarks by its own `norm_crop` and embeds it."""
    write_scrfd(tmp_path / "models" / "buffalo_l" / DETECTION_FILE)
    path = write_arcface(tmp_path / "models" / "buffalo_l" / RECOGNITION_FILE)
    rng = np.random.default_rng(5)
    image = squares(RED)  # then textured, still red enough for the stand-in to detect
    image[0, 40:100, 60:120] = np.stack(
        [rng.integers(180, 256, (60, 60)), rng.integers(0, 60, (60, 60)), rng.integers(0, 60, (60, 60))], axis=-1
    )
    (faces,) = SCRFDDetector(tmp_path, providers=["CPUExecutionProvider"]).detect(image)
    reference = get_model(str(path), providers=["CPUExecutionProvider"])
    expected = reference.get(bgr(image)[0], Face(kps=faces.landmarks[0]))

    crops = align_crops(image, faces.landmarks[:1])
    found = ArcFaceIdentity(tmp_path, providers=["CPUExecutionProvider"]).embed(crops)

    # align_crops (torch) and norm_crop (OpenCV) differ by at most one grey level in a few pixels.
    assert float(cosine(found, expected[None])) > 0.9999


@pytest.mark.parametrize(("cls", "filename"), [(ArcFaceIdentity, RECOGNITION_FILE), (SCRFDDetector, DETECTION_FILE)])
def test_missing_model_names_path_remedy_and_licence(tmp_path: Path, cls: type, filename: str) -> None:
    expected = tmp_path / "models" / "buffalo_l" / filename
    with pytest.raises(AssetError, match=rf"not found at {expected}; put the buffalo_l pack's files .*non-commercial"):
        cls(tmp_path)


def test_default_root_is_insightfaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pack_dir() == tmp_path / ".insightface" / "models" / "buffalo_l"
    with pytest.raises(AssetError, match=rf"not found at {tmp_path}/.insightface/models/buffalo_l/{RECOGNITION_FILE}"):
        ArcFaceIdentity()


def test_wrong_or_broken_files_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "buffalo_l"
    write_scrfd(folder / RECOGNITION_FILE)
    with pytest.raises(AssetError, match=r"reads it as SCRFD, expected a recognition model \(ArcFaceONNX\)"):
        ArcFaceIdentity(tmp_path)
    (folder / DETECTION_FILE).write_bytes(b"not an onnx graph")
    with pytest.raises(AssetError, match=rf"{folder / DETECTION_FILE}: not a readable ONNX model"):
        SCRFDDetector(tmp_path)


def test_bad_crops_are_refused(tmp_path: Path) -> None:
    write_arcface(tmp_path / "models" / "buffalo_l" / RECOGNITION_FILE)
    identity = ArcFaceIdentity(tmp_path, providers=["CPUExecutionProvider"])
    with pytest.raises(ImageError, match=r"expected aligned crops \(N, 112, 112, 3\), got \(1, 100, 112, 3\)"):
        identity.embed(np.zeros((1, 100, 112, 3), np.uint8))
    with pytest.raises(ImageError, match=r"crops: expected uint8 RGB \(N, H, W, 3\), got float32 of shape"):
        identity.embed(np.zeros((1, 112, 112, 3), np.float32))


def test_socket_guard_catches_insightface_downloading(tmp_path: Path) -> None:
    """The guard is what proves the tests offline: insightface's own downloader trips it."""
    with pytest.raises(NetworkAttempt):
        storage.download("models", "buffalo_l", root=str(tmp_path))
