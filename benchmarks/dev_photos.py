"""Fetch the real photos exprlock develops on: CelebA's aligned JPEGs 000007-000506 (178x218).

They ship in the `felonfinder` 1.0.3 wheel on the package index, which is downloaded without
being installed (its metadata pins Python 3.12.2), checked by SHA-256 and unpacked into
`$EXPRLOCK_HOME/photos/celeba/`. CelebA is for non-commercial research only: the photos are
fetched where they are used and never committed. Human labels for the even-numbered half (the
development half) are in the file `--labels` names; the odd-numbered half is a test set whose
labels exprlock never reads.

    python benchmarks/dev_photos.py            # or: make dev-photos
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from pipeline.models.assets import exprlock_home  # noqa: E402

WHEEL = "felonfinder==1.0.3"
WHEEL_SHA256 = "8d0cfecd73b747366695db615f4d23e38dce6c9fb40ab969921255f6aeed8861"
MEMBER_PREFIX = "felonfinder/img/faces/"
PHOTOS = 500


def photos_dir() -> Path:
    return exprlock_home() / "photos" / "celeba"


def fetch(destination: Path | None = None) -> Path:
    """The folder of the 500 photos, downloading and unpacking them when missing."""
    destination = destination or photos_dir()
    if len(list(destination.glob("*.jpg"))) == PHOTOS:
        return destination
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--python-version", "3.12.2",
                   "--only-binary=:all:", WHEEL, "-d", scratch]  # fmt: skip
        subprocess.run(command, check=True)
        (wheel,) = Path(scratch).glob("*.whl")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise SystemExit(f"{wheel.name}: SHA-256 {digest}, expected {WHEEL_SHA256}; not unpacked")
        staging = destination.with_name(f".{destination.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith(MEMBER_PREFIX) and name.endswith(".jpg"):
                    (staging / Path(name).name).write_bytes(archive.read(name))
        shutil.rmtree(destination, ignore_errors=True)
        staging.rename(destination)
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the photos (default $EXPRLOCK_HOME/photos/celeba)")
    print(fetch(parser.parse_args().out))


if __name__ == "__main__":
    main()
