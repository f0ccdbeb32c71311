"""A `generate` run: seeds split into shards, each rendered and committed on its own.

Every function takes plain values (config, run directory, shard index), so the Prefect tasks
that wrap them stay thin and everything here runs without Prefect. A shard whose Parquet file
exists is finished and skipped; its images are renamed into place before the Parquet file, so
the Parquet rename is the commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import pipeline
from data_schemas import CURRENT_VERSION, Col
from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.images import contact_sheet, encode_png, read_png, write_atomic
from pipeline.manifest import MANIFEST_DIR, read_manifest, shard_filename, to_table, write_shard
from pipeline.models.factory import load_generator, resolve_device
from pipeline.models.generator import to_uint8
from pipeline.scoring import concat_scores, load_scorer, source_score_columns

CONFIG_FILE = "config.json"
CONTACT_SHEET = "contact_sheet.png"


@dataclass(frozen=True)
class ShardResult:
    index: int
    path: Path
    rows: int
    skipped: bool


def plan_shards(config: RunConfig) -> list[range]:
    """The seed range of each shard, in shard order."""
    seeds, size = config.seeds, config.sources.shard_size
    return [seeds[start : start + size] for start in range(0, len(seeds), size)]


def default_run_dir(config: RunConfig, root: Path = Path("runs")) -> Path:
    return root / config.run_id


def prepare_run(config: RunConfig, run_dir: Path) -> Path:
    """Create the run directory and record the config; refuse a directory of another run."""
    run_dir = Path(run_dir)
    record = run_dir / CONFIG_FILE
    if record.exists():
        previous = json.loads(record.read_text()).get("run_id")
        if previous != config.run_id:
            raise ConfigError(
                f"{run_dir}: holds run {previous}, but this config is run {config.run_id}; "
                "choose another --out directory (nothing was changed)"
            )
        return run_dir
    payload = {"run_id": config.run_id, "exprlock": pipeline.__version__, "config": config.model_dump(mode="json")}
    write_atomic((json.dumps(payload, indent=2) + "\n").encode(), record)
    return run_dir


def shard_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / MANIFEST_DIR / shard_filename(index)


def generate_shard(config: RunConfig, run_dir: Path, index: int) -> ShardResult:
    """Render one shard's seeds, save the PNGs, then commit the shard's Parquet file."""
    path = shard_path(run_dir, index)
    if path.exists():
        return ShardResult(index, path, 0, skipped=True)
    seeds = plan_shards(config)[index]
    device = resolve_device(config.device)
    generator, generator_name, generator_sha = load_generator(
        config.generator_kind, config.generator.checkpoint, config.generator.truncation_psi, str(device)
    )
    scorer = load_scorer(str(device), config.scoring.attributes) if config.scoring.enabled else None
    latents, image_paths, image_hashes, scores = [], [], [], []
    for start in range(0, len(seeds), config.batch_size):
        batch = seeds[start : start + config.batch_size]
        batch_latents = generator.sample_latents(batch)
        with torch.no_grad():
            floats = generator.synthesize(batch_latents)
        images = to_uint8(floats).numpy()
        if scorer is not None:
            scores.append(scorer.score(floats))
        latents.append(batch_latents.detach().float().cpu().numpy())
        for seed, image in zip(batch, images, strict=True):
            relative = Path("images") / f"shard-{index:05d}" / f"seed-{seed:09d}.png"
            image_hashes.append(write_atomic(encode_png(image), Path(run_dir) / relative))
            image_paths.append(relative.as_posix())
    flat = np.concatenate(latents).reshape(len(seeds), -1)
    created = datetime.now(timezone.utc)
    rows = {
        Col.RUN_ID: [config.run_id] * len(seeds),
        Col.SHARD: [index] * len(seeds),
        Col.SEED: list(seeds),
        Col.LATENT: list(flat),
        Col.LATENT_SHAPE: [list(generator.latent_shape)] * len(seeds),
        Col.GENERATOR: [generator_name] * len(seeds),
        Col.GENERATOR_SHA256: [generator_sha] * len(seeds),
        Col.IMAGE_SOURCE: image_paths,
        Col.IMAGE_SOURCE_SHA256: image_hashes,
        Col.SCHEMA_VERSION: [CURRENT_VERSION] * len(seeds),
        Col.CREATED_AT: [created] * len(seeds),
    }
    if scorer is not None:
        rows.update(source_score_columns(concat_scores(scores), scorer.provenance()))
    write_shard(to_table(rows, run_id=config.run_id), path)
    return ShardResult(index, path, len(seeds), skipped=False)


def write_contact_sheet(run_dir: Path, *, limit: int = 64) -> Path:
    """A PNG grid of the first `limit` source faces of the run's manifest."""
    table = read_manifest(run_dir).slice(0, limit)
    images = np.stack([read_png(Path(run_dir) / p) for p in table.column(Col.IMAGE_SOURCE).to_pylist()])
    path = Path(run_dir) / CONTACT_SHEET
    write_atomic(encode_png(contact_sheet(images)), path)
    return path
