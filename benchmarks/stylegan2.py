"""Throughput and memory of the StyleGAN2 generator's `synthesize`, by resolution and batch size.

Run by hand, never in CI:

    python benchmarks/stylegan2.py                       # CPU, and CUDA when present
    python benchmarks/stylegan2.py --device cuda --repeats 20 --peak-tflops 67

Weights are random in the config-f channel layout (`channels_nvidia`; cost does not depend on the
values). For each device, resolution and batch size: warm-up calls, then the median of timed
`synthesize` calls under `torch.no_grad()`, with CUDA synchronised around each. Memory is the peak
during the timed calls (CUDA: `max_memory_allocated`; CPU: the peak resident set, restarted before
the timed calls) and its growth from the first to the last timed call, which stays near zero when
nothing accumulates across batches. Printed: images/s, GFLOP/s from an analytic count of the
convolutions, the batch-8 over batch-1 throughput ratio and, with `--peak-tflops`, the fraction of
the device peak. CPU timings are only comparable on an otherwise idle machine, so the load average
is printed and recorded too. One JSON row per measurement is appended to
benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from pipeline.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator, channels_nvidia

RESULTS = Path(__file__).with_name("results.jsonl")
WIDTHS = (5, 5, 9, 8, 8, 9, 10)


def conv_flops_per_image(config: StyleGAN2Config) -> float:
    """Multiply-adds x 2 of the convolutions as this implementation runs them.

    An upsampling layer is a stride-2 transposed convolution, whose work is counted at the input
    resolution; the blur, modulation and mapping network are below 1% and left out.
    """
    macs = 0
    for res in config.block_resolutions:
        cout = config.channels[res]
        if res > 4:
            macs += config.channels[res // 2] * cout * 9 * (res // 2) ** 2  # conv0, transposed
        macs += cout * cout * 9 * res * res  # conv1
        macs += cout * 3 * res * res  # toRGB
    return 2.0 * macs


def _proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (Linux), e.g. VmRSS (current) or VmHWM (peak)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_resident() -> None:
    """Restart the peak resident-set count (Linux >= 4.0), so each measurement has its own."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def measure(
    generator: StyleGAN2Generator, batch: int, device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds per `synthesize` call, peak memory and its growth over the timed calls."""
    latents = generator.sample_latents(list(range(batch)))
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def memory() -> int:
        return torch.cuda.memory_allocated(device) if cuda else _proc_status_bytes("VmRSS")

    def run() -> torch.Tensor:
        return generator.synthesize(latents)

    with torch.no_grad():
        for _ in range(warmup):
            run()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        else:
            reset_peak_resident()
        times, memories = [], []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            images = run()
            sync()
            times.append(time.perf_counter() - start)
            del images
            memories.append(memory())
    peak = torch.cuda.max_memory_allocated(device) if cuda else _proc_status_bytes("VmHWM")
    return {
        "median_s": statistics.median(times),
        "peak_memory_bytes": peak,
        "memory_growth_bytes": memories[-1] - memories[0],
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def bench_device(args: argparse.Namespace, device: torch.device) -> None:
    cuda = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    repeats = args.repeats if args.repeats is not None else (20 if cuda else 3)
    threads = torch.get_num_threads()
    load = os.getloadavg()[0]
    print(
        f"\n{device_name(device)} ({device.type}, torch {torch.__version__}, {threads} threads, "
        f"load average {load:.1f} on {os.cpu_count()} CPUs)"
    )
    header = ["res", "batch", "median s", "img/s", "GFLOP/s", "peak MiB", "growth MiB"]
    print(" ".join(f"{title:>{width}}" for title, width in zip(header, WIDTHS, strict=True)))
    for resolution in args.resolutions:
        config = StyleGAN2Config(resolution=resolution, channels=channels_nvidia(resolution))
        torch.manual_seed(0)
        generator = StyleGAN2Generator(config).to(device).eval()
        flops = conv_flops_per_image(config)
        rates: dict[int, float] = {}
        for batch in args.batch_sizes:
            result = measure(generator, batch, device, warmup, repeats)
            rate = batch / result["median_s"]
            rates[batch] = rate
            gflops = rate * flops / 1e9
            utilisation = (
                f"  {gflops / (args.peak_tflops * 1e3):.1%} of peak" if args.peak_tflops else ""
            )
            cells = [
                str(resolution),
                str(batch),
                f"{result['median_s']:.3f}",
                f"{rate:.2f}",
                f"{gflops:.1f}",
                f"{result['peak_memory_bytes'] / 2**20:.0f}",
                f"{result['memory_growth_bytes'] / 2**20:.1f}",
            ]
            print(" ".join(f"{c:>{w}}" for c, w in zip(cells, WIDTHS, strict=True)) + utilisation)
            row = {
                "benchmark": "stylegan2.synthesize",
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "device": device.type,
                "device_name": device_name(device),
                "torch": torch.__version__,
                "threads": threads,
                "load_average": os.getloadavg()[0],
                "resolution": resolution,
                "batch": batch,
                "warmup": warmup,
                "repeats": repeats,
                "images_per_s": rate,
                "gflop_per_image": flops / 1e9,
                **result,
            }
            with RESULTS.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        if 1 in rates and 8 in rates:
            print(f"{resolution:>5} batch 8 / batch 1 throughput: {rates[8] / rates[1]:.2f}x")
        del generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: the CPU, then CUDA when present (default: %(default)s)",
    )
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 3 on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="default: 3 on CPU, 20 on CUDA")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="float32 peak of the device named by --device, to print the fraction reached",
    )
    args = parser.parse_args()
    if args.peak_tflops is not None and args.device == "auto":
        parser.error("--peak-tflops needs --device cpu or --device cuda")
    devices = {"cpu": ["cpu"], "cuda": ["cuda"]}.get(
        args.device, ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    for name in devices:
        bench_device(args, torch.device(name))


if __name__ == "__main__":
    main()
