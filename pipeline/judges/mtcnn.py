"""MTCNN face detection (Zhang et al. 2016), the face finder PyEmotion's authors use.

The three-stage cascade as facenet-pytorch 2.6.0 runs it, re-implemented here because that
package's detector imports torchvision, which does not import beside the CPU torch build:
1. P-Net slides over an image pyramid (scale 12 / `min_face`, then times `factor` while the
   short side stays at least 12 px) and proposes boxes above `thresholds[0]`; non-maximum
   suppression at IoU 0.5 per scale, then 0.7 per image; boxes moved by their regression and
   made square.
2. R-Net rescores 24x24 crops of them (`thresholds[1]`), NMS 0.7, regression, square.
3. O-Net rescores 48x48 crops (`thresholds[2]`), regression, then NMS on intersection over the
   smaller box ("Min") at 0.7.
Crops are area-resampled from the boxes cut at integer corners (truncated, clipped to the
image, 1-based as in the original Caffe code), pixels scaled by (x - 127.5) / 128. The IoU of
the first two stages has no +1 in box sizes, the last stage's has (as in facenet-pytorch).
Weights: assets `mtcnn-pnet`, `mtcnn-rnet`, `mtcnn-onet` (`facenet_pytorch/data/*.pt` from
`facenet-pytorch==2.6.0`, MIT; state dicts under the original layer names).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.images import as_uint8_images
from pipeline.models.assets import asset_path

MIN_FACE = 20
FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.7)


class _PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    """Flatten in the width-major order the dense layers were trained on (Caffe's layout)."""
    return x.permute(0, 3, 2, 1).reshape(len(x), -1)


class _RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_caffe(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class _ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_caffe(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), torch.softmax(self.dense6_1(x), dim=1)


def _load(network: nn.Module, asset: str) -> nn.Module:
    path = asset_path(asset)
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path}: not facenet-pytorch's MTCNN weights ({' '.join(str(exc).split())[:200]})") from None
    return network.requires_grad_(False).eval()


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def _nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float, *, smaller: bool = False) -> torch.Tensor:
    """Greedy non-maximum suppression within each group; indices kept, best score first.

    Overlap is intersection over union of box areas `(x2 - x1) * (y2 - y1)`, or with `smaller`
    intersection over the smaller box with sizes counted inclusively (`+ 1`); a box overlapping a
    kept one by more than `threshold` is dropped.
    """
    one = 1.0 if smaller else 0.0
    if smaller:  # facenet-pytorch runs this one in numpy: ties among float32 scores break as numpy's sort does
        order = np.argsort(scores.numpy())[::-1].tolist()
    else:
        order = torch.argsort(scores, descending=True, stable=True).tolist()
    x1, y1, x2, y2 = (boxes[:, i].tolist() for i in range(4))
    area = [(x2[i] - x1[i] + one) * (y2[i] - y1[i] + one) for i in range(len(x1))]
    group = groups.tolist()
    kept: list[int] = []
    for i in order:
        suppressed = False
        for k in kept:
            if group[k] != group[i]:
                continue
            w = max(0.0, min(x2[i], x2[k]) - max(x1[i], x1[k]) + one)
            h = max(0.0, min(y2[i], y2[k]) - max(y1[i], y1[k]) + one)
            inter = w * h
            overlap = inter / min(area[i], area[k]) if smaller else inter / (area[i] + area[k] - inter)
            if overlap > threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Each box grown to a square about its centre, side the larger of width and height."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(width, height)
    x0 = boxes[:, 0] + width * 0.5 - side * 0.5
    y0 = boxes[:, 1] + height * 0.5 - side * 0.5
    return torch.cat([torch.stack([x0, y0, x0 + side, y0 + side], dim=1), boxes[:, 4:]], dim=1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boxes moved by regression offsets in units of their inclusive width and height."""
    size = torch.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1] * 2, dim=1)
    return torch.cat([boxes[:, :4] + offsets * size, boxes[:, 4:]], dim=1)


def _crops(images: torch.Tensor, boxes: torch.Tensor, owners: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-resampled `size` crops at the boxes' truncated corners; which boxes gave one."""
    height, width = images.shape[2:]
    corners = boxes[:, :4].trunc().int().tolist()
    crops, valid = [], []
    for (x0, y0, x1, y1), owner in zip(corners, owners.tolist(), strict=True):
        x0, y0, x1, y1 = max(x0, 1), max(y0, 1), min(x1, width), min(y1, height)
        if y1 > y0 - 1 and x1 > x0 - 1:
            crops.append(F.interpolate(images[owner : owner + 1, :, y0 - 1 : y1, x0 - 1 : x1], size=(size, size), mode="area"))
            valid.append(True)
        else:
            valid.append(False)
    stacked = torch.cat(crops) if crops else images.new_zeros((0, 3, size, size))
    return _normalise(stacked), torch.tensor(valid, dtype=torch.bool)


class MTCNN:
    """Face boxes `(x0, y0, x1, y1, score)` per image, largest first, from uint8 RGB images."""

    def __init__(self, *, min_face: int = MIN_FACE, factor: float = FACTOR, thresholds: tuple[float, float, float] = THRESHOLDS) -> None:
        self.pnet = _load(_PNet(), "mtcnn-pnet")
        self.rnet = _load(_RNet(), "mtcnn-rnet")
        self.onet = _load(_ONet(), "mtcnn-onet")
        self.min_face, self.factor, self.thresholds = min_face, factor, thresholds

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        pixels = torch.from_numpy(as_uint8_images(images)).permute(0, 3, 1, 2).float()
        boxes, owners = self._propose(pixels)
        boxes, owners = self._refine(pixels, boxes, owners, self.rnet, 24, self.thresholds[1])
        boxes, owners = self._refine(pixels, boxes, owners, self.onet, 48, self.thresholds[2])
        result = []
        for image in range(len(pixels)):
            mine = boxes[owners == image].numpy().astype(np.float64)
            area = (mine[:, 2] - mine[:, 0]) * (mine[:, 3] - mine[:, 1])
            result.append(mine[np.argsort(-area, kind="stable")])
        return result

    def _propose(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = pixels.shape[2:]
        scale, side, scales = 12.0 / self.min_face, min(height, width) * 12.0 / self.min_face, []
        while side >= 12:
            scales.append(scale)
            scale, side = scale * self.factor, side * self.factor
        found, owners = [], []
        for scale in scales:
            resized = F.interpolate(pixels, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
            offsets, probabilities = self.pnet(_normalise(resized))
            face = probabilities[:, 1]
            hits = (face >= self.thresholds[0]).nonzero()
            cells = hits[:, 1:].flip(1).to(pixels.dtype)  # (x, y) of each cell
            corners = torch.cat([((2 * cells + 1) / scale).floor(), ((2 * cells + 12) / scale).floor()], dim=1)
            score = face[hits[:, 0], hits[:, 1], hits[:, 2]]
            regression = offsets.permute(0, 2, 3, 1)[hits[:, 0], hits[:, 1], hits[:, 2]]
            candidates = torch.cat([corners, score[:, None], regression], dim=1)
            keep = _nms(candidates[:, :4], candidates[:, 4], hits[:, 0], 0.5)
            found.append(candidates[keep])
            owners.append(hits[keep, 0])
        boxes, owners_all = torch.cat(found), torch.cat(owners)
        keep = _nms(boxes[:, :4], boxes[:, 4], owners_all, 0.7)
        boxes, owners_all = boxes[keep], owners_all[keep]
        size = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1)
        moved = torch.cat([boxes[:, :4] + boxes[:, 5:9] * size, boxes[:, 4:5]], dim=1)
        return _square(moved), owners_all

    def _refine(
        self, pixels: torch.Tensor, boxes: torch.Tensor, owners: torch.Tensor, network: nn.Module, size: int, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not len(boxes):
            return boxes[:, :5], owners
        crops, valid = _crops(pixels, boxes, owners, size)
        boxes, owners = boxes[valid], owners[valid]
        offsets, probabilities = network(crops)
        score = probabilities[:, 1]
        passed = score > threshold
        boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
        owners, offsets = owners[passed], offsets[passed]
        last = network is self.onet
        if last:
            boxes = _regress(boxes, offsets)
            keep = _nms(boxes[:, :4], boxes[:, 4], owners, 0.7, smaller=True)
            return boxes[keep], owners[keep]
        keep = _nms(boxes[:, :4], boxes[:, 4], owners, 0.7)
        return _square(_regress(boxes[keep], offsets[keep])), owners[keep]
