"""Scores stay what they were: 16 fixed demo faces scored now against values stored before.

The reference (`tests/data/score_reference.npz`, written by `tests/data/make_score_reference.py`)
holds every score the scorers give, so speed work (another runtime, memory layout, batching,
threads) is checked against the outputs it must not move. Tolerances are float32 rounding of
the models' arithmetic, in each score's unit.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from data_schemas import ATTRIBUTE_FIELDS

pytestmark = pytest.mark.slow

# Per attribute column: probability, years, degrees, CIELAB units.
ATTRIBUTE_TOLERANCE = {"p_female": 1e-4, "age": 1e-3, "yaw": 1e-3, "pitch": 1e-3, "roll": 1e-3,
                       "hair_lightness": 1e-3, "hair_redness": 1e-3, "hair_yellowness": 1e-3, "skin_lightness": 1e-3}  # fmt: skip
TOLERANCE = {
    "emotion_model_probs": 1e-4,  # probability
    "landmarks": 1e-3,  # pixels
    "embeddings": 1e-4,  # unit vector components
    "face_score": 1e-4,  # detector confidence
    "pair_emotion_js": 1e-4,  # bits
    "pair_identity_cosine": 1e-4,
    "pair_landmark_nme": 1e-5,  # inter-ocular distances
}
EXACT = ("face_found", "pair_emotion_flipped")


@pytest.fixture(scope="module")
def scored() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    spec = importlib.util.spec_from_file_location("make_score_reference", Path(__file__).with_name("data") / "make_score_reference.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    stored = dict(np.load(maker.OUT))
    assert stored["seeds"].tolist() == maker.SEEDS
    return stored, maker.reference_scores()


def test_every_score_equals_the_stored_reference(scored: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> None:
    stored, now = scored
    assert set(now) == set(stored) - {"seeds"}
    for name, tolerance in TOLERANCE.items():
        np.testing.assert_allclose(now[name], stored[name], rtol=0, atol=tolerance, err_msg=name)
    for name in EXACT:
        np.testing.assert_array_equal(now[name], stored[name], err_msg=name)
    for column, (name, _) in enumerate(ATTRIBUTE_FIELDS):
        np.testing.assert_allclose(now["attributes"][:, column], stored["attributes"][:, column], rtol=0,
                                   atol=ATTRIBUTE_TOLERANCE[name], err_msg=name)  # fmt: skip
