"""Image arrays and files: batch checks, atomic PNG writes with digests, and contact sheets."""

from __future__ import annotations

import ctypes
import hashlib
import io
import math
import os
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pipeline.errors import ImageError, naming

if TYPE_CHECKING:
    import torch


def as_uint8_images(images: np.ndarray | torch.Tensor, name: str = "images") -> np.ndarray:
    """A contiguous uint8 RGB numpy batch `(N, H, W, 3)`, or an ImageError naming the input `name`."""
    import torch  # here, not above, so that the file helpers stay light for the command line

    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        found = f"{images.dtype} of shape {tuple(images.shape)}" if hasattr(images, "shape") else type(images).__name__
        raise ImageError(f"{name}: expected uint8 RGB (N, H, W, 3), got {found}")
    if min(images.shape[1:3]) < 1:
        raise ImageError(f"{name}: expected a non-empty height and width, got {tuple(images.shape)}")
    return np.ascontiguousarray(images)


def to_float_images(images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 RGB `(N, H, W, 3)` as the generator's float `(N, 3, H, W)` in [-1, 1] on `device`:
    the inverse of `pipeline.generators.base.to_uint8`, for models that take generator images."""
    import torch

    return torch.from_numpy(as_uint8_images(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) RGB to PNG bytes (deterministic for the same pixels)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"image: expected uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def write_atomic(data: bytes, path: Path, *, durable: bool = True) -> str:
    """Write bytes under a temporary name, fsync (unless `durable=False`: the caller syncs
    later, see `ImageWriter`), rename; return their SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with naming(temp), open(temp, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


class ImageWriter:
    """Encodes and writes a shard's PNGs on a small thread pool while the caller scores on.

    Files are renamed into place as they are written but not synced one by one; `flush` waits
    for them and makes them durable at once (Linux `syncfs` on their filesystem, else an fsync
    per file), and must return before the caller commits anything that names them: the commit
    (the shard's Parquet rename) then only ever points at durable files, as with a per-file
    fsync. A crash before the commit leaves files the shard's redo overwrites.
    """

    def __init__(self, run_dir: Path, *, workers: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png")
        self._pending: list[Future[str]] = []
        self._written: list[Path] = []

    def submit(self, relative_paths: list[Path], images: np.ndarray) -> list[Future[str]]:
        """Queue uint8 images `(N, H, W, 3)` for `run_dir / relative_paths`; futures of their SHA-256."""
        futures = [self._pool.submit(self._write, self.run_dir / relative, image) for relative, image in zip(relative_paths, images, strict=True)]
        self._pending += futures
        return futures

    def flush(self) -> None:
        """Wait for every queued image, then raise the first failure in the order they were
        queued, or make them all durable. Waiting for all first leaves no write running or
        cancelled half-way when the error reaches the caller."""
        pending, self._pending = self._pending, []
        wait(pending)
        for future in pending:
            future.result()
        written, self._written = self._written, []
        if not written or _sync_filesystem(self.run_dir):
            return
        for path in written:
            with naming(path), open(path, "rb") as handle:
                os.fsync(handle.fileno())
        for directory in sorted({path.parent for path in written}):  # the renames
            fsync_directory(directory)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, path: Path, image: np.ndarray) -> str:
        digest = write_atomic(encode_png(image), path, durable=False)
        self._written.append(path)  # list.append is atomic under the GIL
        return digest


def _sync_filesystem(directory: Path) -> bool:
    """Flush every written file of `directory`'s filesystem (Linux `syncfs`); False where the
    call does not exist."""
    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if syncfs is None:
        return False
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(directory))
    finally:
        os.close(descriptor)
    return True


def fsync_directory(directory: Path) -> None:
    """Make the renames and creations inside `directory` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def contact_sheet(images: np.ndarray, *, columns: int | None = None, scale: int = 2, gap: int = 2) -> np.ndarray:
    """A grid of uint8 (N, H, W, 3) images, upscaled `scale` times (nearest), on white."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ImageError(f"contact sheet: expected uint8 (N, H, W, 3) with N > 0, got {images.dtype} {images.shape}")
    count, height, width, _ = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_h, cell_w = height * scale, width * scale
    sheet = np.full((rows * (cell_h + gap) + gap, columns * (cell_w + gap) + gap, 3), 255, np.uint8)
    enlarged = images.repeat(scale, axis=1).repeat(scale, axis=2)
    for index, image in enumerate(enlarged):
        top = gap + (index // columns) * (cell_h + gap)
        left = gap + (index % columns) * (cell_w + gap)
        sheet[top : top + cell_h, left : left + cell_w] = image
    return sheet


def read_png(path: Path) -> np.ndarray:
    """A PNG as uint8 (H, W, 3) RGB."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None


def wrap_text(text: str, width: float, font: object) -> list[str]:
    """`text` in lines no wider than `width` pixels in `font`, broken after spaces, dashes and
    underscores where possible and inside a word only where one alone is too wide."""
    import re

    pieces = [piece for piece in re.split(r"(?<=[ _-])", text) if piece]
    lines: list[str] = []
    line = ""
    for piece in pieces:
        if font.getlength(line + piece.rstrip()) <= width:
            line += piece
            continue
        if line:
            lines.append(line.rstrip())
        line = ""
        for char in piece:
            if line and font.getlength(line + char) > width:
                lines.append(line)
                line = ""
            line += char
    lines.append(line.rstrip())
    return [entry for entry in lines if entry] or [""]


def labelled_grid(
    cells: list[list[np.ndarray]],
    column_labels: list[str],
    *,
    captions: list[list[str]] | None = None,
    scale: int = 2,
    gap: int = 2,
) -> np.ndarray:
    """Rows of equally sized uint8 (H, W, 3) images under a header row of column labels, each
    image with its caption underneath when `captions` (one per image) are given. Labels and
    captions are wrapped to their cell's width (at spaces, dashes and underscores, or anywhere
    in a longer word), so that no text runs into the next column however long a name is."""
    from PIL import ImageDraw, ImageFont

    if not cells or any(len(row) != len(column_labels) for row in cells):
        raise ImageError(f"labelled grid: expected rows of {len(column_labels)} images, got {[len(r) for r in cells]}")
    if captions is not None and [len(row) for row in captions] != [len(row) for row in cells]:
        raise ImageError("labelled grid: expected one caption per image")
    font = ImageFont.load_default()
    cell_width = cells[0][0].shape[1] * scale + gap
    room = cell_width - gap - 2
    line_height = 11
    header_lines = [wrap_text(label, room, font) for label in column_labels]
    caption_lines = [[wrap_text(c, room, font) for c in row] for row in captions] if captions is not None else None
    header = line_height * max(len(lines) for lines in header_lines) + 3
    caption_height = line_height * max((len(lines) for row in caption_lines for lines in row), default=0) + 1 if caption_lines else 0
    rows = [contact_sheet(np.stack(row), columns=len(row), scale=scale, gap=gap)[gap:] for row in cells]
    row_height = rows[0].shape[0] + caption_height
    canvas = Image.new("RGB", (rows[0].shape[1], header + gap + len(rows) * row_height), "white")
    draw = ImageDraw.Draw(canvas)
    for index, lines in enumerate(header_lines):
        draw.multiline_text((gap + index * cell_width + 2, 1), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=0)
    for number, row in enumerate(rows):
        top = header + gap + number * row_height
        canvas.paste(Image.fromarray(row), (0, top))
        for index, lines in enumerate(caption_lines[number] if caption_lines is not None else []):
            draw.multiline_text((gap + index * cell_width + 2, top + row.shape[0] - gap), "\n".join(lines),
                                fill=(0, 0, 0), font=font, spacing=0)  # fmt: skip
    return np.asarray(canvas)
