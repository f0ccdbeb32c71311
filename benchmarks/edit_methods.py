"""Cost of each edit method per edit: apply, render and score, with and without the lock.

Run by hand, after `exprlock train-editor` for the config:

    python benchmarks/edit_methods.py --config configs/expression-lock.yaml --sources 32

Every method of the config's first attribute, at its largest strength, edits the same sources in
one batch in one process (models loaded before timing); the lock is timed with the config's candidates, or
`--candidates` when the config has none. Printed: seconds per edit and the ratio to the `editor`
method (or the first method when the config lacks it). CPU timings are only comparable on an
otherwise idle machine, so the load average is printed and recorded too. One JSON row is
appended to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its neighbour pipeline.py would
# hide the `pipeline` package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from pipeline.config import LockConfig, load_config  # noqa: E402
from pipeline.editing.plan import plan_edits  # noqa: E402
from pipeline.edits import Editing, edit_directions  # noqa: E402
from pipeline.generators.factory import load_run_generator, resolve_device  # noqa: E402
from pipeline.stages.generate import make_edit  # noqa: E402
from pipeline.scoring import load_scorer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--sources", type=int, default=32, help="sources edited per method")
    parser.add_argument("--candidates", type=int, default=5, help="lock candidates when the config sets none")
    args = parser.parse_args()

    config = load_config(args.config)
    device = resolve_device(config.device)
    generator, _, _ = load_run_generator(config, str(device))
    scorer = load_scorer(*config.scorer_settings(str(device)))
    editing = Editing(config, generator)
    attribute, strength = config.edits.attributes[0], max(config.edits.strengths)
    specs = [s for s in plan_edits(config) if s.attribute == attribute and s.strength == strength]
    candidates = config.edits.lock.candidates if config.edits.lock.candidates > 1 else args.candidates
    locked = config.model_copy(update={"edits": config.edits.model_copy(update={"lock": LockConfig(candidates=candidates)})})
    unlocked = config.model_copy(update={"edits": config.edits.model_copy(update={"lock": LockConfig(candidates=1)})})

    latents = generator.sample_latents(range(config.sources.first_seed, config.sources.first_seed + args.sources))
    with torch.no_grad():
        scores = scorer.score(generator.synthesize(latents))
    signs = edit_directions(scores.attribute(editing.score_name(attribute)), editing.threshold(attribute))
    for spec in specs:  # load every editor and loss once, outside the timings
        make_edit(unlocked, editing, generator, scorer, spec, latents, scores, signs)

    rows = []
    for spec in specs:
        method = f"{spec.method} {spec.weights.slug}" if spec.method.endswith("preserve") else spec.method
        for name, settings in ((method, unlocked), (f"{method}+lock{candidates}", locked)):
            start = time.perf_counter()
            make_edit(settings, editing, generator, scorer, spec, latents, scores, signs)
            rows.append({"method": name, "seconds_per_edit": (time.perf_counter() - start) / args.sources})

    base = next((r for r in rows if r["method"] == "editor"), rows[0])["seconds_per_edit"]
    load = os.getloadavg()[0]
    print(f"{attribute} at strength {strength:g}, {args.sources} sources, device {device}, load average {load:.2f}")
    print(f"{'method':<44}{'s/edit':>10}{'ratio':>8}")
    for row in rows:
        row["ratio"] = row["seconds_per_edit"] / base
        print(f"{row['method']:<44}{row['seconds_per_edit']:>10.3f}{row['ratio']:>8.2f}")
    record = {
        "benchmark": "edit_methods", "config": str(args.config), "sources": args.sources, "device": str(device),
        "load_average": load, "machine": platform.machine(), "rows": rows,
    }
    with open(Path(__file__).with_name("results.jsonl"), "a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
