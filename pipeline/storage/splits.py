"""Train/validation/test splits of a run, made per source seed so that no face leaks.

All rows of one seed (the source face and its edits) show the same person, and a random row
split would put that person in both train and test. A seed's split follows from a fixed hash of
the seed alone (SplitMix64's finaliser, Steele et al. 2014, salted), so it does not depend on row
order, shard size or which other seeds a run holds; the same seed of the same generator lands in
the same split in every run, in every reader (the manifest's `split` column, `ManifestDataset`,
the Hugging Face view).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np

from pipeline.errors import ConfigError

# Hugging Face's split names, so the manifest's column, the torch Dataset and `load_dataset` agree.
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_SALT = "exprlock"


def seed_unit(seeds: Sequence[int] | np.ndarray, *, salt: str = DEFAULT_SALT) -> np.ndarray:
    """A uniform number in [0, 1) per seed, fixed by the seed and the salt alone.

    >>> seed_unit([0, 1, 2]).round(4).tolist() == seed_unit([2, 1, 0])[::-1].round(4).tolist()
    True
    """
    key = np.uint64(int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little"))
    x = np.asarray(seeds, dtype=np.int64).astype(np.uint64) ^ key
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_splits(
    seeds: Sequence[int] | np.ndarray,
    *,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
) -> np.ndarray:
    """'train', 'validation' or 'test' per seed, in the proportions `fractions` (train, validation, test)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ConfigError(f"fractions: expected three non-negative numbers (train, validation, test) summing to 1, got {fractions}")
    edges = np.cumsum(fractions)[:2]
    return np.asarray(SPLITS)[np.searchsorted(edges, seed_unit(seeds, salt=salt), side="right")]
