"""Metrics shared by in-pipeline scoring and held-out evaluation, so both mean the same thing."""

from __future__ import annotations

import numpy as np


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits (so in [0, 1]) between rows of two distributions."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ratio = np.divide(a, b, out=np.ones_like(a), where=a > 0)
        return np.sum(np.where(a > 0, a * np.log2(ratio), 0.0), axis=-1)

    return np.clip((kl(p, m) + kl(q, m)) / 2, 0.0, 1.0)
