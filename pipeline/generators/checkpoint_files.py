"""Helpers every checkpoint reader shares: one-line descriptions, reasons and digests."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from torch import Tensor


def describe(value: object) -> str:
    """What a value is, for an error message: a tensor's dtype and shape, else its type."""
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def one_line_reason(exc: BaseException) -> str:
    """One line out of an error, e.g. torch.load's multi-paragraph weights-only message."""
    text = str(exc)
    if match := re.search(r"GLOBAL ([\w.]+)", text):
        return f"it refers to {match[1]}, which is not on the weights-only allowlist"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
