"""One thread budget for every runtime that runs models in a process: torch, OpenCV, onnxruntime.

Each runtime sizes its own pool to the machine. In one process they run one after another, so
the default (every core the process may use) is right; but where several processes share a
machine (Dask workers, several Prefect workers) each runtime of each process would still take
every core, and the cores are oversubscribed. The budget of a process is `EXPRLOCK_THREADS`, else
`OMP_NUM_THREADS` (which Dask's nanny sets to each worker's threads, and which torch alone would
follow), else every core; `configure_threads` applies it to torch and OpenCV, and
`session_options` to onnxruntime sessions made afterwards.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.errors import ConfigError

ENV_VAR = "EXPRLOCK_THREADS"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_budget() -> int:
    """`EXPRLOCK_THREADS`, else `OMP_NUM_THREADS`, else every available core."""
    for name in (ENV_VAR, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"{name}={value!r}: expected a positive number of threads; unset it to use every core")
        return int(value)
    return available_cores()


def configure_threads() -> int:
    """Size torch's and OpenCV's thread pools to the budget; returns it."""
    import cv2
    import torch

    count = thread_budget()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    cv2.setNumThreads(count)
    return count


def session_options() -> Any:
    """onnxruntime session options with the budget as the intra-op pool and no inter-op pool."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = thread_budget()
    options.inter_op_num_threads = 1
    return options
