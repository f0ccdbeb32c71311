"""Runs to inspect and load in tests: a real source-only run, and a scored run with known values.

The scored run is written with the project's own writer (`to_table`, `write_shard`) from values
drawn here, so summaries, filters and splits can be checked against the same values in pandas.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas import ATTRIBUTE_FIELDS, CURRENT_VERSION, EMOTION_LABELS, Col
from pipeline.config import parse_config
from pipeline.images import encode_png, write_atomic
from pipeline.storage.manifest import to_table, write_shard
from pipeline.models.assets import REGISTRY
from pipeline.storage.layout import prepare_run, shard_count, shard_path
from pipeline.stages.generate import generate_shard

SOURCE_CONFIG = {"sources": {"count": 8, "shard_size": 4}, "scoring": {"enabled": False}, "device": "cpu"}
ATTRIBUTES = ("age", "gender", "hair_lightness")


def make_source_run(run_dir: Path) -> Path:
    """A real demo run: 8 DCGAN faces in 2 shards, neither edited nor scored."""
    config = parse_config(SOURCE_CONFIG)
    prepare_run(config, run_dir)
    for index in range(shard_count(config)):
        generate_shard(config, run_dir, index)
    return run_dir


def make_scored_run(run_dir: Path, *, seeds: int = 40, size: int = 8) -> pd.DataFrame:
    """A run of `seeds` sources x 3 attribute edits with drawn scores; returns its rows."""
    rng = np.random.default_rng(7)
    edits = {"attributes": list(ATTRIBUTES), "strengths": [2.0], "methods": ["editor_hfld"], "hfld_lambdas": [1.0]}
    config = parse_config({"sources": {"count": seeds, "shard_size": seeds // 2}, "edits": edits, "device": "cpu"})
    prepare_run(config, run_dir)
    generator, scorers = REGISTRY["dcgan-digiface"], [REGISTRY["fer-mini-xception"], REGISTRY["sface"]]
    models = [
        {"role": role, "name": a.name, "sha256": a.sha256, "licence": a.licence}
        for role, a in zip(("emotion", "identity"), scorers, strict=True)
    ]
    lock = np.random.default_rng(11)  # the edit's label and lock, drawn apart so the columns above keep their values
    rows = []
    for seed in range(seeds):
        source = _png(rng, size, run_dir / "images" / f"seed-{seed:09d}.png")
        for attribute in ATTRIBUTES:
            edit = _png(rng, size, run_dir / "images" / f"seed-{seed:09d}-{attribute}.png")
            flipped = bool(rng.random() < 0.3)
            emotion = str(rng.choice(EMOTION_LABELS))
            emotion_edit = str(rng.choice([e for e in EMOTION_LABELS if e != emotion])) if flipped else emotion
            face_edit = bool(rng.random() < 0.85)
            rows.append(
                {
                    Col.SEED: seed,
                    Col.SHARD: seed // (seeds // 2),
                    Col.ATTRIBUTE: attribute,
                    Col.STRENGTH: 2.0,
                    Col.EDITOR: "editor_hfld",
                    Col.HFLD_LAMBDA: 1.0,
                    Col.IMAGE_SOURCE: source[0],
                    Col.IMAGE_SOURCE_SHA256: source[1],
                    Col.IMAGE_EDIT: edit[0],
                    Col.IMAGE_EDIT_SHA256: edit[1],
                    Col.EMOTION_SOURCE: emotion,
                    Col.EMOTION_EDIT: emotion_edit,
                    Col.EMOTION_PROBS_SOURCE: (probs := rng.dirichlet(np.ones(7) * 0.5).astype(np.float32)).tolist(),
                    Col.EMOTION_CONFIDENCE_SOURCE: float(probs.max()),
                    Col.EMOTION_AGREEMENT_SOURCE: bool(rng.random() < 0.6),
                    Col.EMOTION_PROBS_EDIT: rng.dirichlet(np.ones(7)).astype(np.float32).tolist(),
                    Col.EMOTION_FLIPPED: flipped,
                    Col.EMOTION_JS: float(np.float32(rng.random())),
                    Col.IDENTITY_COSINE: float(np.float32(rng.uniform(0.2, 1.0))),
                    Col.LANDMARK_NME: float(np.float32(rng.uniform(0.0, 0.2))) if face_edit else None,
                    Col.ATTRIBUTES_SOURCE: {name: float(np.float32(rng.normal())) for name, _ in ATTRIBUTE_FIELDS},
                    Col.FACE_DETECTED_SOURCE: True,
                    Col.FACE_DETECTED_EDIT: face_edit,
                    Col.MODELS: models,
                    Col.EMOTION_CONFIDENCE_EDIT: float(np.float32(lock.uniform(0.2, 1.0))),
                    Col.EMOTION_AGREEMENT_EDIT: bool(lock.random() < 0.6),
                    Col.EXPRESSION_LOCKED: bool(lock.random() < 0.55),
                }
            )
    frame = pd.DataFrame(rows)
    created = datetime.now(timezone.utc)
    for shard, part in frame.groupby(Col.SHARD):
        count = len(part)
        columns = {name: part[name].astype(object).where(part[name].notna(), None).tolist() for name in part.columns}
        columns.update(
            {
                Col.RUN_ID: [config.run_id] * count,
                Col.LATENT: [rng.normal(size=4).astype(np.float32) for _ in range(count)],
                Col.LATENT_SHAPE: [[4]] * count,
                Col.GENERATOR: ["dcgan:dcgan-digiface"] * count,
                Col.GENERATOR_SHA256: [generator.sha256] * count,
                Col.SCHEMA_VERSION: [CURRENT_VERSION] * count,
                Col.CREATED_AT: [created] * count,
            }
        )
        write_shard(to_table(columns, run_id=config.run_id), shard_path(run_dir, int(shard)))
    return frame


def _png(rng: np.random.Generator, size: int, path: Path) -> tuple[str, str]:
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    digest = write_atomic(encode_png(pixels), path)
    return path.relative_to(path.parents[1]).as_posix(), digest
