"""Kill `exprlock generate` with SIGKILL at random moments, resume it each time, and compare the
result with a run made in one go: it must verify clean and hold the same rows and images.

    python benchmarks/crash_resume.py --kills 5 --shards 20

The whole process group is killed (the CLI and its temporary Prefect server), as a crashed
machine would lose them; nothing gets a chance to clean up. Prints one line per kill and a final
verdict; exits 1 if the runs differ.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_schemas import Col
from pipeline.config import load_config
from pipeline.integrity import verify_run
from pipeline.layout import shard_count, shard_path
from pipeline.manifest import read_manifest

EXPRLOCK = str(Path(sys.executable).parent / "exprlock")


def generate(config: Path, out: Path, *, kill_after: float | None = None) -> int | None:
    """Run generate; with `kill_after`, SIGKILL its process group after that many seconds."""
    process = subprocess.Popen([EXPRLOCK, "generate", "--config", str(config), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        return process.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def same(left: Path, right: Path) -> list[str]:
    """Differences between two runs' rows (commit times aside) and images."""
    a, b = (read_manifest(d).drop_columns([Col.CREATED_AT]).to_pylist() for d in (left, right))
    if a != b:
        return [f"rows differ ({len(a)} against {len(b)})"]
    return [
        f"{row[column]} differs"
        for row in a
        for column in (Col.IMAGE_SOURCE, Col.IMAGE_EDIT)
        if row[column] and (left / row[column]).read_bytes() != (right / row[column]).read_bytes()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="exprlock-crash-"))
    config = work / "run.yaml"
    config.write_text(f"profile: demo\nsources: {{count: {args.shards * args.shard_size}, shard_size: {args.shard_size}}}\n"
                      "scoring: {attributes: false}\n")
    total = shard_count(load_config(config))
    killed, one_go = work / "killed", work / "one-go"
    started = time.perf_counter()
    generate(config, one_go)
    print(f"one go: {total} shards in {time.perf_counter() - started:.0f} s")
    for kill in range(1, args.kills + 1):
        delay = rng.uniform(4.0, 20.0)
        status = generate(config, killed, kill_after=delay)
        done = sum(shard_path(killed, i).exists() for i in range(total))
        print(f"kill {kill}: SIGKILL after {delay:.1f} s" if status is None else f"kill {kill}: finished before {delay:.1f} s",
              f"({done} of {total} shards committed)")
    status = generate(config, killed)
    report = verify_run(killed)
    differences = same(killed, one_go)
    claims = list((killed / "manifest").glob(".*.claim"))
    print(f"resumed run: exit {status}, verify: {len(report.problems)} problems, {report.shards} shards and "
          f"{report.images} images checked; differences from the one-go run: {len(differences)}; claims left: {len(claims)}")
    for line in [*map(str, report.problems), *differences]:
        print(f"  {line}")
    return 0 if status == 0 and not report.problems and not differences and not claims else 1


if __name__ == "__main__":
    sys.exit(main())
