"""Reading exprlock's own safetensors files (directions, latent classifiers, editors).

Each kind carries a `format` name and `format_version` in its metadata; a file of another kind,
a newer version, or unreadable bytes is refused with one line naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from pipeline.errors import CheckpointError


def read_checked(
    path: Path, *, format: str, version: int, what: str, tensors: bool = True
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a file written as `format`; `tensors=False` reads the metadata only.

    `what` names the kind in errors, e.g. "latent classifier".
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} file not found")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != format:
                raise CheckpointError(f"{path}: not an exprlock {what} (format {metadata.get('format')!r})")
            if int(metadata.get("format_version", "0")) > version:
                raise CheckpointError(
                    f"{path}: {what} format version {metadata['format_version']} is newer than {version}; "
                    "upgrade exprlock"
                )
            state = {name: handle.get_tensor(name) for name in handle.keys()} if tensors else {}
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path}: cannot read the {what} ({error})") from error
    return metadata, state
