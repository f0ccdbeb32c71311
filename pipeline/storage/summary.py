"""Summaries and plots of a run's manifest: what was made, what was scored, what failed.

`RunManifest.read` opens a pyarrow dataset over the run's finished shards, after checking each
shard's schema version, and reads only scalar and struct columns (never the latents).
`summarize` works on that. It reports every
column the manifest has; a score that a manifest lacks (schema 1.0) or holds only nulls (a run
that made no edits or has not been scored) is reported as "not scored" rather than failing.
Struct columns (the attribute scores) are flattened to `column.field`. `write_plots` draws the
distribution of each scalar score with matplotlib's object API (no pyplot global state, so it
is safe inside worker threads).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from data_schemas import EMOTION_LABELS, Col
from pipeline.images import write_atomic
from pipeline.storage.image_view import ROLES, read_image_table
from pipeline.storage.manifest import open_manifest
from pipeline.storage.splits import SPLITS

NOT_SCORED = "not scored"
PLOTS_DIR = "plots"
CATEGORIES = (Col.ATTRIBUTE, Col.EDITOR, Col.EMOTION_SOURCE, Col.EMOTION_EDIT)
FACE_DETECTED = (Col.FACE_DETECTED_SOURCE, Col.FACE_DETECTED_EDIT)
# Floating-point columns that say how a row was made, not what it scored.
_PARAMETERS = {Col.STRENGTH, Col.HFLD_LAMBDA}


@dataclass(frozen=True)
class RunManifest:
    """A run's finished shards, each schema checked once, and their scalar columns read once,
    so a summary, its plots and a dataset card can all be made from one pass over the files."""

    run_dir: Path
    dataset: ds.Dataset
    schema_version: str
    scalars: pa.Table
    images: pa.Table  # one row per image: `pipeline.storage.image_view`

    @classmethod
    def read(cls, run_dir: Path) -> RunManifest:
        dataset, version = open_manifest(run_dir)
        return cls(Path(run_dir), dataset, version, _scalar_table(dataset), read_image_table(run_dir, dataset))


def summarize(manifest: RunManifest) -> dict[str, Any]:
    """A JSON-ready summary: counts, categories, rates and score distributions."""
    dataset, table = manifest.dataset, manifest.scalars
    summary: dict[str, Any] = {
        "run_dir": str(manifest.run_dir),
        "run_id": table.column(Col.RUN_ID)[0].as_py() if table.num_rows else None,
        "schema_version": manifest.schema_version,
        "rows": table.num_rows,
        "shards": len(dataset.files),
        "columns": dataset.schema.names,
        "seeds": _seed_summary(table),
        "generators": _counts(table, [Col.GENERATOR, Col.GENERATOR_SHA256]),
        "images": image_counts(manifest.images),
    }
    for name in CATEGORIES:
        summary[name] = _value_counts(table, name)
    summary[Col.EMOTION_SOURCE] = _value_counts(_role(manifest.images, "source"), "label_name")  # once per face
    summary["flip_rate"] = _mean(table, Col.EMOTION_FLIPPED)
    summary["flip_rate_by_attribute"] = _grouped_mean(table, Col.EMOTION_FLIPPED, Col.ATTRIBUTE)
    rates = {f.name: _mean(table, f.name) for f in table.schema if pa.types.is_boolean(f.type)}
    summary["rates"] = {k: v for k, v in rates.items() if v != NOT_SCORED} or NOT_SCORED
    summary["failures"] = _failures(table)
    summary["metrics"] = {name: _describe(table.column(name)) for name in metric_columns(table)} or NOT_SCORED
    summary["expressions"] = expression_yield(table)
    summary["locked_share_by_attribute"] = _grouped_mean(table, Col.EXPRESSION_LOCKED, Col.ATTRIBUTE)
    return summary


def image_counts(images: pa.Table) -> dict[str, Any]:
    """Faces, not rows: sources and edits in all and per split, and images per label."""
    split_counts = {}
    for split in SPLITS:
        part = images.filter(pc.equal(images.column(Col.SPLIT), split))
        split_counts[split] = {"faces": len(pc.unique(part.column("group"))), **_roles(part)}
    return {**_roles(images), "by_split": split_counts, "labels": _value_counts(images, "label_name")}


def _roles(images: pa.Table) -> dict[str, int]:
    counts = {role: _role(images, role).num_rows for role in ROLES}
    return {"sources": counts["source"], "edits": counts["edit"], "images": images.num_rows}


def _role(images: pa.Table, role: str) -> pa.Table:
    return images.filter(pc.equal(images.column("role"), role))


def expression_yield(table: pa.Table) -> dict[str, dict[str, float | int]] | str:
    """Per target expression: faces written, candidates tried, acceptance rate, mean steps.

    Counted over distinct sources (a source's edit rows repeat its steering columns). A
    candidate is a seed tried for a slot; the acceptance rate is faces / candidates.
    """
    if not _scored(table, Col.EXPRESSION_TARGET):
        return NOT_SCORED
    columns = [Col.SEED, Col.EXPRESSION_TARGET, Col.EXPRESSION_STEPS, Col.EXPRESSION_REJECTED]
    sources = table.select(columns).group_by(columns).aggregate([])
    result = {}
    for row in sources.group_by(Col.EXPRESSION_TARGET).aggregate(
        [([], "count_all"), (Col.EXPRESSION_REJECTED, "sum"), (Col.EXPRESSION_STEPS, "mean")]
    ).to_pylist():
        faces, rejected = row["count_all"], row[f"{Col.EXPRESSION_REJECTED}_sum"]
        result[row[Col.EXPRESSION_TARGET]] = {
            "faces": faces,
            "candidates": faces + rejected,
            "acceptance_rate": round(faces / (faces + rejected), 6),
            "mean_steps": round(row[f"{Col.EXPRESSION_STEPS}_mean"], 3),
        }
    order = {label: i for i, label in enumerate(EMOTION_LABELS)}
    return dict(sorted(result.items(), key=lambda item: order.get(item[0], len(order))))


def metric_columns(table: pa.Table) -> list[str]:
    """Floating-point score columns holding at least one value (edit parameters excluded)."""
    return [
        f.name
        for f in table.schema
        if pa.types.is_floating(f.type) and f.name not in _PARAMETERS and table.column(f.name).null_count < table.num_rows
    ]


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as aligned plain-text lines for a terminal."""
    seeds = summary["seeds"]
    lines = [
        f"{'run':<16}{summary['run_id']}  ({summary['run_dir']})",
        f"{'schema':<16}{summary['schema_version']}",
        f"{'images':<16}{_images_line(summary['images'])}",
        f"{'  by split':<16}"
        + ", ".join(f"{split}: {c['faces']} faces, {c['images']} images" for split, c in summary["images"]["by_split"].items()),
        f"{'  by label':<16}{_inline(summary['images']['labels'])}",
        f"{'rows':<16}{summary['rows']} (source, edit) pairs in {summary['shards']} shards",
        f"{'seeds':<16}{seeds['min']}..{seeds['max']} ({seeds['unique']} unique)",
        f"{'columns':<16}{', '.join(summary['columns'])}",
    ]
    for entry in summary["generators"]:
        digest = entry[Col.GENERATOR_SHA256][:16]
        lines.append(f"{'generator':<16}{entry[Col.GENERATOR]} sha256:{digest}... ({entry['rows']} rows)")
    for name in CATEGORIES:
        lines.append(f"{name:<16}{_inline(summary[name])}")
    lines.append(f"{'flip rate':<16}{_inline(summary['flip_rate'])}")
    if summary["flip_rate_by_attribute"] != NOT_SCORED:
        lines.append(f"{'  by attribute':<16}{_inline(summary['flip_rate_by_attribute'])}")
    if summary["locked_share_by_attribute"] != NOT_SCORED:
        lines.append(f"{'locked share':<16}{_inline(summary['locked_share_by_attribute'])}")
    lines.append(f"{'failures':<16}{_inline(summary['failures'])}")
    if summary["expressions"] != NOT_SCORED:
        for label, y in summary["expressions"].items():
            lines.append(
                f"{'target ' + label:<16}{y['faces']} faces from {y['candidates']} candidates "
                f"(acceptance {y['acceptance_rate']:.2f}, mean steps {y['mean_steps']:.2f})"
            )
    if summary["metrics"] == NOT_SCORED:
        lines.append(f"{'metrics':<16}{NOT_SCORED}")
        return lines
    width = max(16, *(len(name) + 2 for name in summary["metrics"]))
    for name, s in summary["metrics"].items():
        lines.append(
            f"{name:<{width}}mean {s['mean']:.4f}  median {s['median']:.4f}  p05 {s['p05']:.4f}  "
            f"p95 {s['p95']:.4f}  (n={s['count']}, missing {s['missing']})"
        )
    return lines


def _images_line(images: dict[str, Any]) -> str:
    return f"{images['images']} ({images['sources']} source faces, {images['edits']} edits)"


def markdown_summary(manifest: RunManifest, files: dict[str, str | None]) -> str:
    """The run in a few lines of Markdown (for an orchestrator's UI): rows, sources, edits per
    attribute and method, the source emotions, the emotion-kept rate, identity and landmark
    medians, and where the manifest, contact sheet and card are (`files`: name -> path)."""
    summary, table = summarize(manifest), manifest.scalars
    kept = summary["flip_rate"]
    lines = [
        f"# Run `{summary['run_id']}`",
        "",
        f"**{summary['images']['images']} images**: **{summary['images']['sources']} source faces** and "
        f"{summary['images']['edits']} edits, in {summary['shards']} shards.",
        "",
    ]
    edits = [row for row in _counts(table, [Col.ATTRIBUTE, Col.EDITOR]) if row[Col.ATTRIBUTE] is not None]
    if edits:
        lines += ["| attribute | method | edits |", "|---|---|---|"]
        lines += [f"| {r[Col.ATTRIBUTE]} | {r[Col.EDITOR]} | {r['rows']} |" for r in sorted(edits, key=lambda r: (r[Col.ATTRIBUTE], r[Col.EDITOR]))]
        lines.append("")
    emotions = summary[Col.EMOTION_SOURCE]
    if emotions != NOT_SCORED:
        lines.append("Source emotions: " + ", ".join(f"{label} {count}" for label, count in emotions.items()) + ".")
    metrics = summary["metrics"] if summary["metrics"] != NOT_SCORED else {}
    facts = [f"emotion kept in {1 - kept:.1%} of edits" if kept != NOT_SCORED else None]
    facts += [f"median {name} {metrics[name]['median']:.3f}" for name in (Col.IDENTITY_COSINE, Col.LANDMARK_NME) if name in metrics]
    if any(facts):
        lines.append("; ".join(f for f in facts if f).capitalize() + ".")
    lines += ["", *(f"- {name}: `{path}`" for name, path in files.items() if path)]
    return "\n".join(lines) + "\n"


def write_plots(manifest: RunManifest, *, out_dir: Path | None = None) -> list[Path]:
    """A histogram PNG per score column, and bar charts of emotions and flip rates.

    Returns the paths written: none for a manifest without scores. Default folder: RUN_DIR/plots.
    """

    out_dir = Path(out_dir) if out_dir is not None else manifest.run_dir / PLOTS_DIR
    table = manifest.scalars
    written = []
    for name in metric_columns(table):
        values = table.column(name).drop_null().to_numpy().astype(np.float64)
        values = values[np.isfinite(values)]
        figure, axes = _figure((5, 3.2))
        axes.hist(values, bins=30, color="#4c72b0")
        axes.set(title=f"{name} (n={len(values)})", xlabel=name, ylabel="rows")
        written.append(_save(figure, out_dir / f"{name}.png"))
    if _scored(manifest.images, "label_name"):
        written.append(_emotion_bars(manifest.images, out_dir / "emotions.png"))
    rates = _grouped_mean(table, Col.EMOTION_FLIPPED, Col.ATTRIBUTE)
    if rates != NOT_SCORED:
        figure, axes = _figure((5, 3.2))
        axes.bar(list(rates), list(rates.values()), color="#c44e52")
        axes.set(title="dominant-emotion flip rate by attribute", ylabel="flip rate", ylim=(0, 1))
        written.append(_save(figure, out_dir / "flip_rate_by_attribute.png"))
    return written


def to_json(summary: dict[str, Any]) -> str:
    """The summary as JSON (NaN written as null: JSON has no NaN)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(summary), indent=2)


def _scalar_table(dataset: ds.Dataset) -> pa.Table:
    """Scalar and struct columns (lists such as latents left unread), structs flattened."""
    wanted = [f.name for f in dataset.schema if not pa.types.is_list(f.type) and not pa.types.is_fixed_size_list(f.type)]
    table = dataset.to_table(columns=wanted)
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    return table


def _emotion_bars(images: pa.Table, path: Path) -> Path:
    """Images per dominant emotion, source faces and edits side by side."""
    counts = {f"{role}s": _value_counts(_role(images, role), "label_name") for role in ROLES}
    counts = {role: per for role, per in counts.items() if per != NOT_SCORED}
    seen = {label for per in counts.values() for label in per}
    labels = [label for label in EMOTION_LABELS if label in seen] + sorted(seen - set(EMOTION_LABELS))
    figure, axes = _figure((6, 3.2), bottom=0.24)
    width = 0.8 / len(counts)
    positions = np.arange(len(labels))
    for offset, (role, per) in enumerate(counts.items()):
        axes.bar(positions + offset * width, [per.get(label, 0) for label in labels], width, label=role)
    axes.set_xticks(positions + width * (len(counts) - 1) / 2, labels, rotation=30)
    axes.set(title="dominant emotion", ylabel="images")
    axes.legend()
    return _save(figure, path)


def _figure(size: tuple[float, float], *, bottom: float = 0.16) -> tuple[Any, Any]:
    """A figure with one axes and fixed margins: a constrained layout costs a second draw,
    about a third of the card's plotting time, for plots whose labels are alike."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    figure.subplots_adjust(left=0.15, right=0.97, top=0.89, bottom=bottom)
    return figure, figure.subplots()


def _save(figure: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_atomic(buffer.getvalue(), path)
    return path


def _scored(table: pa.Table, name: str) -> bool:
    return name in table.schema.names and table.column(name).null_count < table.num_rows


def _seed_summary(table: pa.Table) -> dict[str, int | None]:
    seeds = table.column(Col.SEED)
    bounds = pc.min_max(seeds).as_py()
    return {"min": bounds["min"], "max": bounds["max"], "unique": len(pc.unique(seeds))}


def _counts(table: pa.Table, keys: list[str]) -> list[dict[str, Any]]:
    grouped = table.group_by(keys).aggregate([([], "count_all")]).to_pylist()
    return [{**{k: row[k] for k in keys}, "rows": row["count_all"]} for row in grouped]


def _value_counts(table: pa.Table, name: str) -> dict[str, int] | str:
    """Counts per value, most frequent first (nulls left out); "not scored" without values."""
    if not _scored(table, name):
        return NOT_SCORED
    pairs = pc.value_counts(table.column(name).drop_null()).to_pylist()
    return {str(p["values"]): p["counts"] for p in sorted(pairs, key=lambda p: (-p["counts"], str(p["values"])))}


def _mean(table: pa.Table, name: str) -> float | str:
    if not _scored(table, name):
        return NOT_SCORED
    return round(pc.mean(pc.cast(table.column(name), pa.float64())).as_py(), 6)


def _grouped_mean(table: pa.Table, name: str, by: str) -> dict[str, float] | str:
    if not _scored(table, name) or not _scored(table, by):
        return NOT_SCORED
    values = table.select([by]).append_column(name, pc.cast(table.column(name), pa.float64()))
    rows = values.filter(pc.is_valid(values.column(by))).group_by(by).aggregate([(name, "mean")]).to_pylist()
    return {
        str(row[by]): round(row[f"{name}_mean"], 6)
        for row in sorted(rows, key=lambda r: str(r[by]))
        if row[f"{name}_mean"] is not None
    }


def _failures(table: pa.Table) -> dict[str, int] | str:
    """Rows whose face was not found, and missing (null or NaN) values in scored columns."""
    failures = {}
    for name in FACE_DETECTED:
        if _scored(table, name):
            failures[f"no face ({name})"] = int(pc.sum(pc.cast(pc.invert(table.column(name)), pa.int64())).as_py() or 0)
    for name in metric_columns(table):
        missing = _describe(table.column(name))["missing"]
        if missing:
            failures[f"missing {name}"] = missing
    return failures or NOT_SCORED


def _describe(values: pa.ChunkedArray) -> dict[str, float | int]:
    present = values.drop_null().to_numpy().astype(np.float64)
    present = present[np.isfinite(present)]
    stats: dict[str, float | int] = {"count": int(len(present)), "missing": int(len(values) - len(present))}
    if len(present) == 0:
        return {**stats, **dict.fromkeys(("mean", "std", "min", "p05", "median", "p95", "max"), float("nan"))}
    quantiles = np.quantile(present, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {
        **stats,
        "mean": float(present.mean()),
        "std": float(present.std()),
        **{k: float(v) for k, v in zip(("min", "p05", "median", "p95", "max"), quantiles, strict=True)},
    }


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
