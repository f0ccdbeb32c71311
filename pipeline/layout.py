"""Where a run keeps what it writes, and which seeds each shard holds.

A run directory holds `config.json` (the run id and resolved config), `manifest/shard-*.parquet`
(one file per shard; its presence means the shard is finished), `images/shard-*/`, the contact
sheet and the dataset card. Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pipeline
from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.images import write_atomic
from pipeline.manifest import MANIFEST_DIR, shard_filename

CONFIG_FILE = "config.json"
CONTACT_SHEET = "contact_sheet.png"
CARD_FILE = "dataset_card.md"


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
