"""`exprlock export`: a run's images in the layouts training code reads, each once, atomically."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.errors import ConfigError, ManifestError
from pipeline.storage.dataset import ManifestDataset
from pipeline.storage.export import export_run
from pipeline.storage.image_view import LABEL_NAMES
from pipeline.storage.splits import SPLITS

runner = CliRunner()


def read_image_folder(root: Path) -> list[tuple[np.ndarray, str]]:
    """What torchvision's ImageFolder yields (classes are the sorted folder names), without torchvision."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [(np.asarray(Image.open(path).convert("RGB")), label)
            for label in classes for path in sorted((root / label).glob("*.png"))]  # fmt: skip


def _fingerprint(pixels: np.ndarray, label: str) -> tuple[bytes, str]:
    return pixels.tobytes(), label


def test_an_image_folder_export_reads_back_as_the_loader_gives_it_per_split(scored: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    run_dir, frame = scored
    result = runner.invoke(app, ["export", str(run_dir), str(tmp_path / "out"), "--format", "imagefolder"])
    assert result.exit_code == 0, result.output
    for split in SPLITS:
        loader = ManifestDataset(run_dir, split=split)
        expected = sorted(_fingerprint((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), LABEL_NAMES[labels["label"]])
                          for image, labels in (loader[i] for i in range(len(loader))))  # fmt: skip
        folder = sorted(_fingerprint(pixels, label) for pixels, label in read_image_folder(tmp_path / "out" / split))
        assert folder == expected and len(folder) == len(loader) > 0
    total = sum(len(read_image_folder(tmp_path / "out" / split)) for split in SPLITS)
    assert total == frame["seed"].nunique() + len(frame)  # each source once, each edit once
    card = (tmp_path / "out" / "README.md").read_text()
    assert "license: other" in card and "Filters: none" in card and (tmp_path / "out" / "LICENSE.md").is_file()


def test_filters_and_the_csv_layout(scored: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    run_dir, frame = scored
    made = export_run(run_dir, tmp_path / "csv", layout="csv", filters={"expression_locked": True, "roles": ["edit"]})
    with open(tmp_path / "csv" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    locked = frame[frame["expression_locked"]]
    assert len(rows) == made.images == len(locked)
    assert {row["role"] for row in rows} == {"edit"} and {row["expression_locked"] for row in rows} == {"True"}
    by_name = {Path(path).name: label for path, label in zip(locked["image_edit"], locked["emotion_edit"], strict=True)}
    for row in rows:
        assert (tmp_path / "csv" / row["path"]).is_file() and row["label"] == by_name[Path(row["path"]).name]
    inode = (tmp_path / "csv" / rows[0]["path"]).stat().st_ino
    assert made.linked == made.images and inode == (run_dir / locked.iloc[0]["image_edit"]).parent.joinpath(Path(rows[0]["path"]).name).stat().st_ino
    copied = export_run(run_dir, tmp_path / "copied", layout="csv", filters={"min_confidence": 0.9}, copy=True)
    assert copied.linked == 0 and "`min_confidence=0.9`" in (tmp_path / "copied" / "README.md").read_text()


def test_an_hf_export_loads_with_datasets(scored: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets import ClassLabel, load_dataset

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    run_dir, _ = scored
    export_run(run_dir, tmp_path / "hf", layout="hf", filters={"attributes": ["age"]})
    data = load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache"))
    for split, part in data.items():
        loader = ManifestDataset(run_dir, split=split, attributes=["age"])
        assert sorted(zip(part["group"], part["role"], part["label"], strict=True)) == sorted(
            (r["group"], r["role"], r["label"]) for r in loader.table.to_pylist()
        )
        assert part.features["label"] == ClassLabel(names=list(LABEL_NAMES))


def test_bad_requests_are_refused_and_write_nothing(scored: tuple[Path, pd.DataFrame], unscored: Path, tmp_path: Path) -> None:
    run_dir, _ = scored
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        export_run(run_dir, tmp_path / "taken", layout="csv")
    with pytest.raises(ManifestError, match="no image has a label"):
        export_run(unscored, tmp_path / "unscored", layout="imagefolder")
    with pytest.raises(ManifestError, match="no image passes the filters"):
        export_run(run_dir, tmp_path / "none", layout="csv", filters={"attributes": ["yaw"], "roles": ["edit"]})
    result = runner.invoke(app, ["export", str(tmp_path / "runs" / "dmeo"), str(tmp_path / "x")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


KILLED_EXPORT = """
import os, sys, time
import pipeline.storage.export as export
real = export._bring
def slow(*args, **kwargs):
    linked = real(*args, **kwargs)
    print("copied", flush=True)
    time.sleep(0.2)
    return linked
export._bring = slow
export.export_run(sys.argv[1], sys.argv[2], layout="imagefolder")
"""


def test_an_export_killed_midway_leaves_nothing_that_looks_complete(scored: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    run_dir, _ = scored
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(run_dir), str(out)], stdout=subprocess.PIPE, text=True)
    for _ in range(5):
        assert process.stdout.readline().strip() == "copied"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name != "out"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".out.export-") and any(leftovers[0].rglob("*.png"))
    made = export_run(run_dir, out, layout="imagefolder")
    assert made.images > 5 and [p.name for p in tmp_path.iterdir()] == ["out"]  # the next export removed the leftover
