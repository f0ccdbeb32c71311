"""Throughput and memory of StyleGAN2 and StyleGAN3 `synthesize`, by resolution and batch size.

Run by hand, never in CI:

    python benchmarks/stylegan.py                        # CPU, and CUDA when present
    python benchmarks/stylegan.py --device cuda --repeats 20 --peak-tflops 67
    python benchmarks/stylegan.py --reference ~/src/stylegan3 --resolutions 256

Weights are random in the published layouts (StyleGAN2 config-f channels, StyleGAN3 config T;
cost does not depend on the values). StyleGAN3 rows also print their throughput as a ratio to
StyleGAN2 at the same resolution and batch. With `--reference` (a checkout of NVlabs/stylegan3),
NVIDIA's own networks with the same weights are timed in the same process (CPU reference paths,
float32) and each row gets exprlock's throughput over NVIDIA's. For each device, resolution and batch size: warm-up calls, then the median of timed
`synthesize` calls under `torch.no_grad()`, with CUDA synchronised around each. Memory is the peak
during the timed calls (CUDA: `max_memory_allocated`; CPU: the peak resident set, restarted before
the timed calls) and its growth from the first to the last timed call, which stays near zero when
nothing accumulates across batches. Printed: images/s, StyleGAN2 GFLOP/s from an analytic count
of the convolutions, the batch-8 over batch-1 throughput ratio and, with `--peak-tflops`, the fraction of
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

import sys
from collections.abc import Callable

import torch

# Run as a script, this file's folder comes first on sys.path and its neighbour pipeline.py would
# hide the `pipeline` package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from pipeline.generators.mapping import MappedGenerator  # noqa: E402
from pipeline.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator, channels_nvidia  # noqa: E402
from pipeline.generators.stylegan3 import StyleGAN3Config, StyleGAN3Generator  # noqa: E402

RESULTS = Path(__file__).with_name("results.jsonl")
WIDTHS = (10, 5, 5, 9, 8, 8, 9, 10, 9, 9)


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


def build(family: str, resolution: int, device: torch.device) -> MappedGenerator:
    torch.manual_seed(0)
    if family == "stylegan3":
        return StyleGAN3Generator(StyleGAN3Config.config_t(resolution)).to(device).eval()
    config = StyleGAN2Config(resolution=resolution, channels=channels_nvidia(resolution))
    return StyleGAN2Generator(config).to(device).eval()


def nvidia_synthesis(repo: str, generator: MappedGenerator) -> Callable[[torch.Tensor], torch.Tensor]:
    """NVIDIA's synthesis network with the weights of `generator`, as a function of W+."""
    if repo not in sys.path:
        sys.path.insert(0, repo)
    common = {"z_dim": generator.z_dim, "c_dim": 0, "w_dim": generator.w_dim, "img_resolution": generator.resolution,
              "img_channels": 3}  # fmt: skip
    if isinstance(generator, StyleGAN3Generator):
        from training.networks_stylegan3 import Generator  # type: ignore[import-not-found]

        reference = Generator(**common, mapping_kwargs={"num_layers": generator.config.mapping_layers})
        options = {}
    else:
        from training.networks_stylegan2 import Generator  # type: ignore[import-not-found]

        reference = Generator(**common, mapping_kwargs={"num_layers": generator.config.mapping_layers}, channel_base=32768)
        options = {"noise_mode": "const"}
    reference.load_state_dict(generator.state_dict(), strict=False)  # NVIDIA also stores its blur filters
    reference = reference.to(generator.device).eval()
    return lambda ws: reference.synthesis(ws, force_fp32=True, **options)


def measure(
    render: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, float]:
    """Median seconds per `render` call, peak memory and its growth over the timed calls."""
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def memory() -> int:
        return torch.cuda.memory_allocated(device) if cuda else _proc_status_bytes("VmRSS")

    def run() -> torch.Tensor:
        return render(latents)

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
    header = ["family", "res", "batch", "median s", "img/s", "GFLOP/s", "peak MiB", "growth MiB", "/ SG2", "/ NVIDIA"]
    print(" ".join(f"{title:>{width}}" for title, width in zip(header, WIDTHS, strict=True)))
    for resolution in args.resolutions:
        sg2_rates: dict[int, float] = {}
        for family in args.families:
            generator = build(family, resolution, device)
            reference = nvidia_synthesis(args.reference, generator) if args.reference else None
            flops = conv_flops_per_image(generator.config) if family == "stylegan2" else None
            rates: dict[int, float] = {}
            for batch in args.batch_sizes:
                latents = generator.sample_latents(list(range(batch)))
                result = measure(generator.synthesize, latents, device, warmup, repeats)
                rate = batch / result["median_s"]
                rates[batch] = rate
                if family == "stylegan2":
                    sg2_rates[batch] = rate
                nvidia_rate = None
                if reference is not None:
                    nvidia_rate = batch / measure(reference, latents, device, warmup, repeats)["median_s"]
                gflops = rate * flops / 1e9 if flops else None
                utilisation = f"  {gflops / (args.peak_tflops * 1e3):.1%} of peak" if args.peak_tflops and gflops else ""
                versus_sg2 = rate / sg2_rates[batch] if family == "stylegan3" and batch in sg2_rates else None
                cells = [
                    family,
                    str(resolution),
                    str(batch),
                    f"{result['median_s']:.3f}",
                    f"{rate:.2f}",
                    f"{gflops:.1f}" if gflops else "-",
                    f"{result['peak_memory_bytes'] / 2**20:.0f}",
                    f"{result['memory_growth_bytes'] / 2**20:.1f}",
                    f"{versus_sg2:.2f}x" if versus_sg2 else "-",
                    f"{rate / nvidia_rate:.2f}x" if nvidia_rate else "-",
                ]
                print(" ".join(f"{c:>{w}}" for c, w in zip(cells, WIDTHS, strict=True)) + utilisation)
                row = {
                    "benchmark": f"{family}.synthesize",
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
                    "gflop_per_image": flops / 1e9 if flops else None,
                    "ratio_to_stylegan2": versus_sg2,
                    "nvidia_images_per_s": nvidia_rate,
                    **result,
                }
                with RESULTS.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            if 1 in rates and 8 in rates:
                print(f"{family} {resolution} batch 8 / batch 1 throughput: {rates[8] / rates[1]:.2f}x")
            del generator, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: the CPU, then CUDA when present (default: %(default)s)",
    )
    parser.add_argument("--families", nargs="+", choices=["stylegan2", "stylegan3"], default=["stylegan2", "stylegan3"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--reference", default=None, help="checkout of NVlabs/stylegan3, to time NVIDIA's networks too")
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
