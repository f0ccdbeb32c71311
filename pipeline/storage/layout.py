"""Where a run keeps what it writes, and which seeds each shard holds.

A run directory holds `config.json` (the run id and resolved config), `manifest/shard-*.parquet`
(one file per shard; its presence means the shard is finished), `images/shard-*/seed-*.png`
(sources, and edits named after their spec), the contact sheet and the dataset card. Nothing here imports torch, so the command line can check a run's
inputs and summarise a finished run in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pipeline
from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.images import write_atomic
from pipeline.storage.manifest import MANIFEST_DIR, shard_filename

CONFIG_FILE = "config.json"
CONTACT_SHEET = "contact_sheet.png"
CARD_FILE = "README.md"
GENERATOR_FILE = "generator.json"
IMAGES_DIR = "images"


def shard_count(config: RunConfig) -> int:
    """How many shards the run's seeds make."""
    return -(-config.sources.count // config.sources.shard_size)


def shard_seeds(config: RunConfig, index: int) -> range:
    """The seeds of one shard: computed, not looked up, so it costs the same in any size of run."""
    if not 0 <= index < shard_count(config):
        raise IndexError(f"shard {index} is outside this run's shards 0-{shard_count(config) - 1}")
    start = index * config.sources.shard_size
    return config.seeds[start : start + config.sources.shard_size]


def default_run_dir(config: RunConfig, root: Path = Path("runs")) -> Path:
    return root / config.run_id


def prepare_run(config: RunConfig, run_dir: Path) -> Path:
    """Create the run directory and record the config; refuse a directory of another run."""
    run_dir = Path(run_dir)
    record = run_dir / CONFIG_FILE
    if record.exists():
        previous = json.loads(record.read_text()).get("run_id")
        if previous != config.run_id:
            raise other_run_error(run_dir, previous, config.run_id)
        return run_dir
    payload = {"run_id": config.run_id, "exprlock": pipeline.__version__, "config": config.model_dump(mode="json")}
    write_atomic((json.dumps(payload, indent=2) + "\n").encode(), record)
    return run_dir


def run_complete(config: RunConfig, run_dir: Path) -> bool:
    """Whether every shard of the run is committed."""
    return all(shard_path(run_dir, index).exists() for index in range(shard_count(config)))


def record_generator(run_dir: Path, record: dict[str, Any]) -> None:
    """Write what the run's generator is (`FaceGenerator.describe` with its name and SHA-256) for
    the dataset card; every shard writes the same record, so only a changed one is rewritten."""
    path = Path(run_dir) / GENERATOR_FILE
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    if not path.is_file() or path.read_bytes() != data:
        write_atomic(data, path)


def other_run_error(run_dir: Path, previous: str | None, run_id: str) -> ConfigError:
    return ConfigError(
        f"{run_dir}: holds run {previous}, but this config is run {run_id}; "
        "choose another --out directory (nothing was changed)"
    )


def shard_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / MANIFEST_DIR / shard_filename(index)


def shard_images(index: int) -> Path:
    """A shard's image folder, relative to the run directory (as the manifest records paths)."""
    return Path(IMAGES_DIR) / f"shard-{index:05d}"


def source_image(index: int, seed: int) -> Path:
    return shard_images(index) / f"seed-{seed:09d}.png"


def edit_image(index: int, seed: int, slug: str) -> Path:
    return shard_images(index) / f"seed-{seed:09d}-{slug}.png"


def finished_summary(config: RunConfig, run_dir: Path, shards: list[int]) -> dict[str, Any] | None:
    """What a `generate` run of `shards` reports when nothing is left to do: every shard
    committed as its ledger record says (size, SHA-256, images present) and, for a complete
    run, the contact sheet and card written. None while work remains."""
    from pipeline.storage.ledger import record_mismatch, shard_record

    run_dir = Path(run_dir)
    for index in shards:
        record = shard_record(run_dir, index)
        if record is None or record_mismatch(run_dir, record) is not None:
            return None
    complete = run_complete(config, run_dir)
    sheet, card = run_dir / CONTACT_SHEET, run_dir / CARD_FILE
    if complete and not (sheet.is_file() and card.is_file()):
        return None
    return {
        "run_id": config.run_id,
        "run_dir": str(run_dir),
        "manifest": str(run_dir / MANIFEST_DIR),
        "complete": complete,
        "contact_sheet": str(sheet) if complete else None,
        "dataset_card": str(card) if complete else None,
        "shards_written": 0,
        "shards_skipped": len(shards),
        "remade": [],
        "busy": [],
        "rows_written": 0,
    }
