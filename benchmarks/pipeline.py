"""End-to-end `generate` throughput against the raw generator, and where the time goes.

Run by hand, never in CI:

    python benchmarks/pipeline.py --config configs/demo.yaml [--device cpu|cuda] [--count 64] [--threads N]
        [--precision float32|bfloat16|float16] [--json]

Renders the config's sources (`--count` of them when given) through the real `generate` flow
into a fresh directory (on PREFECT_API_URL when set, else a temporary Prefect API started before
timing), after loading the generator and scorers once, and times the raw generator (latents
sampled and rendered in the run's batches; the median of three passes) on as many faces in the
same process. Stage shares come from timing the leaf calls exclusively (a call's time excludes
the timed calls inside it): render, each scorer model, the colour and pose attributes, the
edits, PNGs (encoded and written on a thread pool: the time the shard spends queueing them, and
waiting for and syncing them before its commit), Parquet writing, the rest of the shard task,
the contact sheet and card, and Prefect (the flow's wall time outside all of these:
orchestration, logging, artifacts). Prints a table, or with --json one object with
`e2e_faces_per_s`, `raw_faces_per_s`, `ratio` and `stages`; appends it to
benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would hide the
# `pipeline` package: take the folder off.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from pipeline.config import RunConfig, load_config, parse_config, with_device  # noqa: E402
from pipeline.generators.factory import load_run_generator, resolve_device  # noqa: E402
from pipeline.scoring import load_scorer  # noqa: E402
from pipeline.threads import ENV_VAR, configure_threads  # noqa: E402


class StageClock:
    """Exclusive wall time per stage: time spent inside nested timed calls goes to them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [start, time of timed children]

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        frame = [time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - frame[0]
            self.seconds[name] += elapsed - frame[1]
            if self._stack:
                self._stack[-1][1] += elapsed

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        """Time every call of `owner.attribute` as stage `name`."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)


def instrument(clock: StageClock, config: RunConfig, device: str) -> None:
    """Wrap the leaf calls of a shard, by stage."""
    import flows.generate
    import pipeline.stages.generate
    import pipeline.scoring
    from pipeline.edits import Editing
    from pipeline.images import ImageWriter
    from pipeline.models.adience import AdienceGenderAge
    from pipeline.models.detector import FaceDetector
    from pipeline.models.emotion import EmotionClassifier
    from pipeline.models.face_age_gender import AgeGenderClassifier
    from pipeline.models.face_expression import FaceExpressionClassifier
    from pipeline.models.facemesh import FaceMeshLandmarker
    from pipeline.models.identity import IdentityEncoder

    generator, _, _ = load_run_generator(config, device)
    clock.wrap(type(generator), "synthesize", "render")
    for owner, attribute, name in [
        (FaceMeshLandmarker, "forward", "facemesh"),
        (EmotionClassifier, "forward", "emotion (FER2013)"),
        (FaceExpressionClassifier, "forward", "emotion (face-api)"),
        (IdentityEncoder, "forward", "identity (SFace)"),
        (FaceDetector, "detect", "detector (YuNet)"),
        (AdienceGenderAge, "predict", "gender and age (Adience)"),
        (AgeGenderClassifier, "forward", "gender and age (face-api)"),
        (pipeline.scoring, "colour_attributes", "attributes (colour, pose)"),
        (pipeline.scoring, "head_pose", "attributes (colour, pose)"),
        (Editing, "apply", "edits"),
        (ImageWriter, "submit", "png (queued)"),
        (ImageWriter, "flush", "png (waited for, synced)"),
        (pipeline.stages.generate, "write_shard", "parquet"),
        (flows.generate, "generate_shard_once", "shard task, other"),
        (flows.generate, "write_contact_sheet", "contact sheet and card"),
        (flows.generate, "write_card", "contact sheet and card"),
    ]:
        clock.wrap(owner, attribute, name)


def raw_rate(config: RunConfig, device: str, count: int, repeats: int = 3) -> float:
    """Faces per second of the generator alone: latents sampled and rendered in batches; the
    median of `repeats` passes, as one pass of a small generator lasts under a second."""
    generator, _, _ = load_run_generator(config, device)
    seeds = list(range(count))
    batch = config.batch_size_on(torch.device(device).type)
    rates = []
    with torch.no_grad():
        generator.synthesize(generator.sample_latents(seeds[:batch]))  # warm-up
        for _ in range(repeats):
            _synchronise(device)
            start = time.perf_counter()
            for first in range(0, count, batch):
                generator.synthesize(generator.sample_latents(seeds[first : first + batch]))
            _synchronise(device)
            rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def _synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _api() -> contextlib.AbstractContextManager:
    if os.environ.get("PREFECT_API_URL"):
        return contextlib.nullcontext()
    from prefect.testing.utilities import prefect_test_harness

    return prefect_test_harness(server_startup_timeout=120)


def profile(config_path: Path, device: str | None, count: int | None, precision: str | None = None) -> dict[str, Any]:
    from flows.generate import generate

    config = with_device(load_config(config_path), device)
    data = config.model_dump(mode="json")
    if count is not None:
        data["sources"]["count"] = count
    if precision is not None:
        data["scoring"]["precision"] = precision
    config = parse_config(data)
    resolved = str(resolve_device(config.device))
    faces = config.sources.count
    configure_threads()
    load_run_generator(config, resolved)
    if config.scoring.enabled:
        load_scorer(*config.scorer_settings(resolved))
    raw = raw_rate(config, resolved, faces)
    clock = StageClock()
    instrument(clock, config, resolved)
    with tempfile.TemporaryDirectory(prefix="exprlock-profile-") as scratch, _api():
        run_config = Path(scratch) / "run.yaml"
        data = config.model_dump(mode="json", exclude={"base_dir"})  # its relative paths made absolute:
        data["edits"]["directory"] = str(config.models_dir.absolute())
        data["edits"]["direction_files"] = {k: str(config.resolve(v).absolute()) for k, v in config.edits.direction_files.items()}
        if config.checkpoint_path:
            data["generator"]["checkpoint"] = str(config.checkpoint_path.absolute())
        run_config.write_text(json.dumps(data))
        start = time.perf_counter()
        with clock.stage("prefect"):
            summary = generate(str(run_config), str(Path(scratch) / "run"), device=device)
        wall = time.perf_counter() - start
    e2e = faces / wall
    return {
        "benchmark": "pipeline",
        "config": str(config_path),
        "device": resolved,
        "threads": torch.get_num_threads(),
        "precision": config.scoring.precision,
        "faces": faces,
        "rows": summary["rows_written"],
        "seconds": round(wall, 3),
        "e2e_faces_per_s": round(e2e, 3),
        "raw_faces_per_s": round(raw, 3),
        "ratio": round(e2e / raw, 5),
        "stages": {name: round(seconds / wall, 4) for name, seconds in sorted(clock.seconds.items(), key=lambda kv: -kv[1])},
        "load_average": os.getloadavg()[0],
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: the config's")
    parser.add_argument("--count", type=int, default=None, help="sources to render; default the config's")
    parser.add_argument("--threads", type=int, default=None, help="thread budget of torch, OpenCV and onnxruntime")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "float16"], default=None,
                        help="the classifiers' scoring.precision; default the config's")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.threads is not None:
        os.environ[ENV_VAR] = str(args.threads)
    result = profile(args.config, args.device, args.count, args.precision)
    with open(Path(__file__).with_name("results.jsonl"), "a") as log:
        log.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['faces']} faces on {result['device']} ({result['threads']} threads, classifiers in "
          f"{result['precision']}) in {result['seconds']:.1f} s; "
          f"load average {result['load_average']:.2f}")
    print(f"end to end {result['e2e_faces_per_s']:.2f} faces/s, raw generator {result['raw_faces_per_s']:.1f} faces/s, "
          f"ratio {result['ratio']:.2%}")
    for name, share in result["stages"].items():
        print(f"  {name:<28}{share:>7.1%}")


if __name__ == "__main__":
    main()
