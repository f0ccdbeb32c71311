"""Kill `exprlock generate` with SIGKILL at random moments, resume it each time, and compare the
result with a run made in one go: it must verify clean and hold the same rows and images.

    python benchmarks/crash_resume.py --kills 5 --shards 20

Each kill comes a random fraction of a shard's time after the attempt committed its first new
shard, so it lands while a shard is being rendered or written. The whole process group is
killed (the CLI and its temporary Prefect server), as a crashed machine would lose them; nothing
gets a chance to clean up. Prints one line per kill and a final verdict; exits 1 if the runs
differ.
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

# Run as a script, this file's folder comes first on sys.path and its neighbour pipeline.py would
# hide the `pipeline` package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from data_schemas import Col  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.storage.integrity import verify_run  # noqa: E402
from pipeline.storage.layout import shard_count, shard_path  # noqa: E402
from pipeline.storage.manifest import read_manifest  # noqa: E402

EXPRLOCK = str(Path(sys.executable).parent / "exprlock")


def committed(out: Path, total: int) -> int:
    return sum(shard_path(out, i).exists() for i in range(total))


def generate(config: Path, out: Path, total: int, *, kill_after: float | None = None) -> int | None:
    """Run generate; with `kill_after`, SIGKILL its process group that many seconds after it
    committed a shard (None: it finished first)."""
    process = subprocess.Popen([EXPRLOCK, "generate", "--config", str(config), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if kill_after is None:
        return process.wait()
    before = committed(out, total)
    while committed(out, total) == before and process.poll() is None:
        time.sleep(0.05)
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
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--delays", type=float, nargs=2, default=(0.0, 3.0),
                        help="range of seconds after a commit before each kill (about one shard's time)")
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
    generate(config, one_go, total)
    print(f"one go: {total} shards in {time.perf_counter() - started:.0f} s")
    for kill in range(1, args.kills + 1):
        delay = rng.uniform(*args.delays)
        status = generate(config, killed, total, kill_after=delay)
        in_flight = sorted(p.name for p in (killed / "manifest").glob(".*.claim"))
        print(f"kill {kill}: SIGKILL {delay:.1f} s after a commit" if status is None else f"kill {kill}: finished first",
              f"({committed(killed, total)} of {total} shards committed; claims left behind: {', '.join(in_flight) or 'none'})")
    status = generate(config, killed, total)
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
