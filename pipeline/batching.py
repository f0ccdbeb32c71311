"""Batch sizes that fit the device: a batch that runs a GPU out of memory is halved, and the
smaller size is kept for the rest of the process.

A generate batch renders, edits (refinement and the lock render several candidates, with
gradients) and scores its faces, so its memory grows with the generator's resolution and the
edit methods in ways no table predicts; trying and halving finds what fits on any GPU.
"""

from __future__ import annotations

import logging

import torch

from pipeline.errors import RunError

_logger = logging.getLogger(__name__)
_fitting: dict[str, int] = {}  # device -> the largest batch known to fit in this process


def fitting_batch_size(device: torch.device, wanted: int) -> int:
    """`wanted`, or less where a larger batch already ran `device` out of memory."""
    return min(wanted, _fitting.get(str(device), wanted))


def halve_batch_size(device: torch.device, size: int, error: torch.OutOfMemoryError) -> None:
    """Record that a batch of `size` ran `device` out of memory, free what it left, and go on
    with half; a single face that does not fit is a `RunError` naming the device."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
    if size <= 1:
        raise RunError(
            f"{device}: out of memory with a batch of one face ({first_line}); free the device of other "
            "work, or run on a device with more memory"
        ) from None
    _fitting[str(device)] = size // 2
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _logger.warning("%s: out of memory with a batch of %d; going on with batches of %d", device, size, size // 2)


def forget_batch_sizes() -> None:
    """Forget the sizes learnt, as when the work that shared the device has ended."""
    _fitting.clear()
