"""Wall time of one `generate` run: shards in the flow's process versus on a local Dask cluster.

Run by hand, never in CI:

    python benchmarks/shard_runners.py                          # demo config, 2 Dask workers
    python benchmarks/shard_runners.py --count 256 --shard-size 16 --workers 4

Both runners render the same config into fresh directories through the real `generate` flow
(on PREFECT_API_URL when set, else on a temporary Prefect API), so the times include what a
user waits for: Prefect task orchestration, and for Dask the cluster start and every worker
loading the generator and scorers. The flow process loads its models once before timing. The
two manifests are checked to hold the same images. Printed: seconds and faces/s of each runner
and their ratio; CPU timings are only comparable on an otherwise idle machine, so the load
average is printed and recorded too. One JSON row is appended to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its neighbour pipeline.py would
# hide the `pipeline` package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from data_schemas import Col  # noqa: E402
from pipeline.config import parse_config  # noqa: E402
from pipeline.storage.manifest import read_manifest  # noqa: E402


def _api() -> contextlib.AbstractContextManager:
    if os.environ.get("PREFECT_API_URL"):
        return contextlib.nullcontext()
    from prefect.testing.utilities import prefect_test_harness

    return prefect_test_harness(server_startup_timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=64, help="source faces")
    parser.add_argument("--shard-size", type=int, default=16, help="faces per shard")
    parser.add_argument("--workers", type=int, default=2, help="local Dask worker processes")
    parser.add_argument("--scoring", action=argparse.BooleanOptionalAction, default=True, help="score the faces")
    args = parser.parse_args()

    from flows.generate import generate
    from pipeline.generators.factory import load_generator
    from pipeline.scoring import load_scorer

    settings = {"sources": {"count": args.count, "shard_size": args.shard_size},
                "scoring": {"enabled": args.scoring}, "device": "cpu"}
    config = parse_config(settings)
    load_generator(config.generator_kind, None, 1.0, "cpu")
    if args.scoring:
        load_scorer("cpu", config.scoring.attributes)
    with tempfile.TemporaryDirectory() as scratch, _api():
        path = Path(scratch) / "config.json"
        path.write_text(json.dumps(settings))
        seconds = {}
        for runner in ("process", "dask"):
            out = Path(scratch) / runner
            start = time.perf_counter()
            generate(str(path), str(out), runner=runner, dask_workers=args.workers)
            seconds[runner] = time.perf_counter() - start
        images = {runner: read_manifest(Path(scratch) / runner).column(Col.IMAGE_SOURCE_SHA256) for runner in seconds}
        assert images["process"].equals(images["dask"]), "the runners made different images"

    load = os.getloadavg()[0]
    for runner, value in seconds.items():
        print(f"{runner:>7}: {value:7.1f} s  {args.count / value:6.2f} faces/s")
    print(f"dask / process time: {seconds['dask'] / seconds['process']:.2f} ({args.workers} workers, "
          f"{os.cpu_count()} cores, load average {load:.1f})")
    row = {
        "benchmark": "shard_runners",
        "count": args.count,
        "shard_size": args.shard_size,
        "workers": args.workers,
        "scoring": args.scoring,
        "seconds": seconds,
        "ratio_dask_over_process": seconds["dask"] / seconds["process"],
        "cpus": os.cpu_count(),
        "load_average": load,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    with open(Path(__file__).with_name("results.jsonl"), "a") as results:
        results.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
