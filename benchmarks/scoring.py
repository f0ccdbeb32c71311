"""Scoring throughput: (source, edit) pairs per second at batch sizes 1, 8 and 32.

Run by hand: `python benchmarks/scoring.py [--pairs 64] [--repeats 3]`. Every batch size scores
the same pairs in the same process; batch 1 is the one-at-a-time baseline the ratios refer to.
Appends one JSON row per batch size to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its neighbour pipeline.py would
# hide the `pipeline` package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from pipeline.generators.dcgan import load_dcgan  # noqa: E402
from pipeline.scoring import FaceScorer, compare  # noqa: E402


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_pairs(scorer: FaceScorer, sources: torch.Tensor, edits: torch.Tensor, batch: int, repeats: int) -> float:
    """Median seconds to score every pair, `batch` pairs per call."""
    runs = []
    for _ in range(repeats):
        _synchronise(scorer.device)
        start = time.perf_counter()
        for i in range(0, len(sources), batch):
            compare(scorer.score(sources[i : i + batch]), scorer.score(edits[i : i + batch]))
        _synchronise(scorer.device)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="pairs scored per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings per batch size (median taken)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    generator = load_dcgan(device=args.device)
    scorer = FaceScorer(device=args.device)
    with torch.no_grad():
        latents = generator.sample_latents(range(args.pairs))
        sources = generator.synthesize(latents)
        edits = generator.synthesize(latents + 0.5 * torch.randn_like(latents))
    time_pairs(scorer, sources[:8], edits[:8], 8, 1)  # warm-up

    results = {batch: args.pairs / time_pairs(scorer, sources, edits, batch, args.repeats) for batch in (1, 8, 32)}
    baseline = results[1]
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.pairs} pairs")
    with open(Path(__file__).with_name("results.jsonl"), "a") as log:
        for batch, rate in results.items():
            print(f"batch {batch:>2}: {rate:7.2f} pairs/s  ({rate / baseline:.2f}x one-at-a-time)")
            row = {"benchmark": "scoring", "device": args.device, "torch": torch.__version__,
                   "machine": platform.machine(), "batch": batch, "pairs_per_s": rate, "ratio_to_batch_1": rate / baseline}
            log.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
