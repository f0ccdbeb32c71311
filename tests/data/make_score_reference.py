"""Writes score_reference.npz: every score of 16 fixed demo faces, as the scorers gave them.

`tests/test_score_reference.py` compares today's scorers against these values, so a change made
for speed (another runtime, batch layout, thread setting) cannot move a score unnoticed. Rewrite
only for a change meant to move scores, and say so in the commit:

    python tests/data/make_score_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from pipeline.generators.dcgan import load_dcgan  # noqa: E402
from pipeline.scoring import FaceScorer, compare  # noqa: E402

SEEDS = list(range(1000, 1016))
OUT = Path(__file__).with_name("score_reference.npz")


def reference_scores(precision: str = "float32") -> dict[str, np.ndarray]:
    """Scores of `SEEDS` (all scorers on, classifiers at `precision`), and pair metrics of the
    first half against the second."""
    generator = load_dcgan()
    with torch.no_grad():
        images = generator.synthesize(generator.sample_latents(SEEDS))
    scores = FaceScorer(device="cpu", attributes=True, precision=precision).score(images)
    half = len(SEEDS) // 2
    first, second = (
        type(scores)(**{name: getattr(scores, name)[part] for name in scores.__dataclass_fields__})
        for part in (slice(0, half), slice(half, None))
    )
    pair = compare(first, second)
    values = {name: getattr(scores, name) for name in scores.__dataclass_fields__}
    values |= {f"pair_{name}": getattr(pair, name) for name in pair.__dataclass_fields__}
    return {name: np.asarray(value) for name, value in values.items()}


if __name__ == "__main__":
    np.savez_compressed(OUT, seeds=np.asarray(SEEDS), **reference_scores())
    print(f"wrote {OUT}")
