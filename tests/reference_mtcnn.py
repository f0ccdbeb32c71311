"""facenet-pytorch's own MTCNN, run without torchvision, as the reference of the judges' port.

Its `mtcnn.py` and `utils/detect_face.py` (assets `mtcnn-reference-*`) are laid out as a package
in a temporary folder next to the weights, and imported with the two torchvision pieces they
name: `torchvision.ops.boxes.batched_nms`, supplied here as torchvision defines it (greedy NMS
per index, intersection over union of `(x2 - x1) * (y2 - y1)` areas, boxes overlapping a kept
one by more than the threshold dropped, result by decreasing score), and
`torchvision.transforms.functional`, which detection never calls.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import torch

from pipeline.models.assets import asset_path


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    keep: list[int] = []
    for i in order.tolist():
        ok = True
        for k in keep:
            if idxs[k] != idxs[i]:
                continue
            lt = torch.maximum(boxes[i, :2], boxes[k, :2])
            rb = torch.minimum(boxes[i, 2:], boxes[k, 2:])
            inter = (rb - lt).clamp(min=0).prod()
            union = (boxes[i, 2:] - boxes[i, :2]).prod() + (boxes[k, 2:] - boxes[k, :2]).prod() - inter
            if inter / union > iou_threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long)


def reference_mtcnn(folder: Path) -> Any:
    """facenet-pytorch's `MTCNN(keep_all=True)` as PyEmotion builds it."""
    package = folder / "facenet_reference"
    (package / "models" / "utils").mkdir(parents=True, exist_ok=True)
    (package / "data").mkdir(exist_ok=True)
    for init in (package, package / "models", package / "models" / "utils"):
        (init / "__init__.py").write_text("")
    shutil.copy(asset_path("mtcnn-reference-networks"), package / "models" / "mtcnn.py")
    shutil.copy(asset_path("mtcnn-reference-cascade"), package / "models" / "utils" / "detect_face.py")
    for net in ("pnet", "rnet", "onet"):
        shutil.copy(asset_path(f"mtcnn-{net}"), package / "data" / f"{net}.pt")
    stubs = {name: types.ModuleType(name) for name in ("torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms", "torchvision.transforms.functional")}
    stubs["torchvision.ops.boxes"].batched_nms = batched_nms  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module("facenet_reference.models.mtcnn")
    finally:
        sys.path.remove(str(folder))
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module.MTCNN(keep_all=True, device="cpu")
