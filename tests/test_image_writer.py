"""PNGs written on a thread pool: the same bytes and digests, durable before `flush` returns."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pipeline.images as images
from pipeline.images import ImageWriter, encode_png, read_png


def _faces(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 16, 16, 3), dtype=np.uint8)


def test_written_files_and_digests_are_those_of_the_encoded_pixels(tmp_path: Path) -> None:
    faces = _faces(12)
    paths = [Path("images") / f"shard-{i % 3:05d}" / f"seed-{i:09d}.png" for i in range(12)]
    with ImageWriter(tmp_path, workers=3) as writer:
        futures = writer.submit(paths[:5], faces[:5]) + writer.submit(paths[5:], faces[5:])
        writer.flush()
    for path, face, future in zip(paths, faces, futures, strict=True):
        data = (tmp_path / path).read_bytes()
        assert data == encode_png(face) and future.result() == hashlib.sha256(data).hexdigest()
        np.testing.assert_array_equal(read_png(tmp_path / path), face)
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary file left behind


def test_flush_syncs_the_filesystem_once_instead_of_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    fsynced: list[int] = []
    monkeypatch.setattr(images, "_sync_filesystem", lambda directory: synced.append(directory) or True)
    monkeypatch.setattr(images.os, "fsync", lambda fd: fsynced.append(fd))
    with ImageWriter(tmp_path) as writer:
        writer.submit([Path(f"images/{i}.png") for i in range(6)], _faces(6))
        writer.flush()
        writer.flush()  # nothing new: no second sync
    assert synced == [tmp_path] and fsynced == []


def test_without_syncfs_every_file_and_its_folder_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsynced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(images, "_sync_filesystem", lambda directory: False)

    def record(descriptor: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(images.os, "fsync", record)
    with ImageWriter(tmp_path) as writer:
        writer.submit([Path(f"images/a/{i}.png") for i in range(3)] + [Path("images/b/0.png")], _faces(4))
        writer.flush()
    files = {str(tmp_path / f"images/a/{i}.png") for i in range(3)} | {str(tmp_path / "images/b/0.png")}
    assert set(fsynced) == files | {str(tmp_path / "images/a"), str(tmp_path / "images/b")}


def test_a_failed_write_is_raised_by_flush_with_the_path(tmp_path: Path) -> None:
    (tmp_path / "images").write_text("a file where a folder should be")
    with ImageWriter(tmp_path) as writer:
        writer.submit([Path("images/0.png")], _faces(1))
        with pytest.raises(OSError) as raised:
            writer.flush()
    assert "images" in str(raised.value)


def test_the_real_filesystem_sync_runs(tmp_path: Path) -> None:
    """On Linux the one-call sync exists and succeeds; elsewhere the writer falls back."""
    assert images._sync_filesystem(tmp_path) is sys.platform.startswith("linux")


def test_flush_lets_every_queued_write_finish_before_raising_the_first_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the first write fails while a slower one is still running, flush waits for the
    slower one rather than leaving it running (or queued, to be cancelled), then raises the first
    failure."""
    real = images.write_atomic

    def first_fails(data: bytes, path: Path, **options: bool) -> str:
        if path.name == "a.png":
            raise OSError(28, "No space left on device", str(path))
        time.sleep(0.3)
        return real(data, path, **options)

    monkeypatch.setattr(images, "write_atomic", first_fails)
    with ImageWriter(tmp_path, workers=2) as writer:
        futures = writer.submit([Path("a.png"), Path("b.png")], _faces(2))
        with pytest.raises(OSError, match="a.png"):
            writer.flush()
        assert futures[1].done() and not futures[1].cancelled()
    assert (tmp_path / "b.png").is_file()
