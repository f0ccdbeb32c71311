"""One HFLD editor-training step against its unavoidable work, measured in the same process.

Run by hand, never in CI:

    python benchmarks/hfld_step.py [--config configs/demo-models.yaml] [--attribute gender] [--steps 10]
                                   [--hfld-only] [--json]

Builds the editor trainer that `exprlock train-editor` builds for the config's default
preservation weights (the demo's: HFLD lambda 1000 and the emotion ensemble's KL; with
`--hfld-only` the landmark term alone) on the config's
committed direction and latent classifier, with fresh latents of its generator as the pool, and
times its `train_step` (median of `--steps`, after one warm-up). The baseline is the work no
implementation can skip: the HFLD share of the batch rendered and run through FaceMesh, forward
and backward to the latents, with the same autograd settings. Prints both, their ratio, and the
profiler's top operators of one step; appends the numbers to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would hide the
# `pipeline` package: take the folder off.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from pipeline.config import PreservationWeights, load_config  # noqa: E402
from pipeline.editing.editor import LatentEditor  # noqa: E402
from pipeline.editing.files import CLASSIFIER_FILE, direction_path  # noqa: E402
from pipeline.editing.directions import load_direction  # noqa: E402
from pipeline.editing.latent_classifier import load_latent_classifier  # noqa: E402
from pipeline.editing.training import EditorTrainer, EditorTrainingConfig  # noqa: E402
from pipeline.generators.factory import load_run_generator  # noqa: E402
from pipeline.models.facemesh import FaceMeshLandmarker  # noqa: E402
from pipeline.objectives import preservation_loss  # noqa: E402
from pipeline.threads import configure_threads  # noqa: E402


def _median_seconds(run: Any, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(config_path: Path, attribute: str, steps: int, hfld_only: bool) -> dict[str, Any]:
    config = load_config(config_path)
    threads = configure_threads()
    generator, _, _ = load_run_generator(config, "cpu")
    directory = config.models_dir
    direction = load_direction(direction_path(directory, attribute), latent_shape=generator.latent_shape)
    classifier = load_latent_classifier(directory / CLASSIFIER_FILE, latent_shape=generator.latent_shape, device="cpu")
    weights = config.edits.preserve[0].weights(attribute)
    if hfld_only:
        weights = PreservationWeights(landmarks=weights.landmarks)
    settings = config.training
    trainer = EditorTrainer(
        LatentEditor.from_direction(direction, layers=config.edits.layers.get(attribute)),
        classifier,
        generator.sample_latents(range(1024)),
        EditorTrainingConfig(attribute=attribute, steps=steps + 1, batch_size=settings.batch_size,
                             hfld_fraction=settings.hfld_fraction, strength="uniform", strength_range=(3.0, 6.0)),  # fmt: skip
        preservation=preservation_loss(config, generator, weights),
    )
    step = _median_seconds(trainer.train_step, steps)

    count = math.ceil(settings.hfld_fraction * settings.batch_size)
    landmarker = FaceMeshLandmarker().eval()
    latents = generator.sample_latents(range(count))

    def unavoidable() -> None:
        edited = latents.clone().requires_grad_(True)
        landmarks, _ = landmarker(generator.synthesize(edited))
        landmarks.square().sum().backward(inputs=[edited])  # gradients for the latents only, as training asks

    floor = _median_seconds(unavoidable, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        trainer.train_step()
    top = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return {
        "benchmark": "hfld_step",
        "config": str(config_path),
        "attribute": attribute,
        "weights": asdict(weights),
        "batch_size": settings.batch_size,
        "rendered": count,
        "threads": threads,
        "step_seconds": round(step, 4),
        "render_facemesh_fwd_bwd_seconds": round(floor, 4),
        "ratio": round(step / floor, 3),
        "machine": platform.machine(),
        "profile": top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/demo-models.yaml"))
    parser.add_argument("--attribute", default="gender")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--hfld-only", action="store_true", help="the landmark term alone (the editor_hfld objective)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.config, args.attribute, args.steps, args.hfld_only)
    profile = result.pop("profile")
    with open(Path(__file__).with_name("results.jsonl"), "a") as log:
        log.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['attribute']} editor with {result['weights']}, batch {result['batch_size']} ({result['rendered']} rendered), {result['threads']} threads")
    print(f"train step {result['step_seconds']:.3f} s; render + FaceMesh forward and backward "
          f"{result['render_facemesh_fwd_bwd_seconds']:.3f} s; ratio {result['ratio']:.2f}")  # fmt: skip
    print(profile)


if __name__ == "__main__":
    main()
