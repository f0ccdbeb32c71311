"""The `.env` file that docker-compose.yml reads: the database password and the models volume key.

The compose file holds no default password: it refuses to start without `POSTGRES_PASSWORD`,
which this module draws once and never changes (the database volume was initialised with it).
The models volume is named after a digest of the asset registry, `EXPRLOCK_ASSETS_KEY`: when
exprlock pins other model files, compose mounts a fresh volume, which Docker fills from the new
image, instead of the old files over the new ones. Other lines of an existing `.env` (a
`PREFECT_UI_API_URL` for a remote host, say) are kept.

Needs only the standard library, so it runs before anything is installed:
`make compose-env`, or `python3 -m pipeline.compose_env [PATH]`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path

from pipeline.models.assets import REGISTRY

PASSWORD = "POSTGRES_PASSWORD"
ASSETS_KEY = "EXPRLOCK_ASSETS_KEY"


def assets_key() -> str:
    """12 hex digits of SHA-256 over every registered asset's name, package, member and digest."""
    records = sorted((a.name, a.requirement, a.member, a.sha256) for a in REGISTRY.values())
    return hashlib.sha256(json.dumps(records).encode()).hexdigest()[:12]


def write_compose_env(path: Path) -> dict[str, str]:
    """Create or update `path`; returns the values compose will read from it."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    values = dict(line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))
    wanted = {PASSWORD: values.get(PASSWORD) or secrets.token_urlsafe(24), ASSETS_KEY: assets_key()}
    kept = [line for line in lines if line.split("=", 1)[0] not in wanted]
    text = "\n".join([*kept, *(f"{name}={value}" for name, value in wanted.items())]) + "\n"
    temp = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a password: owner only
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temp, path)
    return {**values, **wanted}


def main(argv: list[str]) -> None:
    path = Path(argv[0] if argv else ".env")
    had_password = path.exists() and f"{PASSWORD}=" in path.read_text()
    values = write_compose_env(path)
    kept = "kept" if had_password else "new"
    print(f"{path}: {PASSWORD} ({kept}), {ASSETS_KEY}={values[ASSETS_KEY]} (models volume exprlock-models-{values[ASSETS_KEY]})")


if __name__ == "__main__":
    main(sys.argv[1:])
