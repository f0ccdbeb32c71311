"""Comparing edit methods on a run's manifest: the table behind the HFLD claim.

Every (source, edit) row already carries its scores, so the comparison is a group-by over
attribute, strength, method and lambda: attribute success rate, emotion flip rate, mean
Jensen-Shannon divergence of the emotion distributions, landmark NME, identity cosine and the
rate at which a face is still detected. The paper's headline, "reduction in the change of
emotion" of the editor with HFLD against the same editor without it, is reported at equal
attribute success: each method's emotion change is a curve over its strengths through the
origin (strength 0 changes nothing and reaches nothing), and the HFLD editor's curve is read at
the success the base editor reached, so a method cannot look better by simply editing less.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas import Col
from pipeline.manifest import read_manifest

GROUP = [Col.ATTRIBUTE, Col.STRENGTH, Col.EDITOR, Col.HFLD_LAMBDA]
METRICS = {
    "attribute_success": (Col.ATTRIBUTE_REACHED, "mean"),
    "emotion_flip_rate": (Col.EMOTION_FLIPPED, "mean"),
    "emotion_js": (Col.EMOTION_JS, "mean"),
    "landmark_nme": (Col.LANDMARK_NME, "mean"),
    "identity_cosine": (Col.IDENTITY_COSINE, "mean"),
    "face_detected_rate": (Col.FACE_DETECTED_EDIT, "mean"),
    "edits": (Col.SEED, "count"),
}
EMOTION_CHANGE = ("emotion_js", "emotion_flip_rate")
METHOD_ORDER = ("linear", "linear_projected", "editor", "editor_hfld", "refined")
EXTRAPOLATION_LIMIT = 0.05


def load_edits(run_dirs: list[Path]) -> pd.DataFrame:
    """The edit rows of one or more runs (source-only rows dropped)."""
    frames = [read_manifest(d).to_pandas() for d in run_dirs]
    frame = pd.concat(frames, ignore_index=True)
    return frame[frame[Col.ATTRIBUTE].notna()]


def summarise(edits: pd.DataFrame) -> pd.DataFrame:
    """One row per (attribute, strength, method, lambda) with the comparison metrics."""
    table = edits.assign(**{c: edits[c].astype(float) for c in (Col.ATTRIBUTE_REACHED, Col.EMOTION_FLIPPED, Col.FACE_DETECTED_EDIT)})
    summary = table.groupby(GROUP, dropna=False).agg(**METRICS).reset_index()
    order = summary[Col.EDITOR].map({m: i for i, m in enumerate(METHOD_ORDER)})
    return summary.assign(_order=order).sort_values([Col.ATTRIBUTE, Col.STRENGTH, "_order", Col.HFLD_LAMBDA]).drop(columns="_order").reset_index(drop=True)


def change_at_success(summary: pd.DataFrame, *, attribute: str, editor: str, hfld_lambda: float, success: float, metric: str) -> float:
    """A method's emotion change read off its (success, change) curve at a given success.

    The curve runs through (0, 0) and the measured strengths in order of success. Past the
    largest success measured it is extended along its last segment by at most
    `EXTRAPOLATION_LIMIT` of success; further out the value is NaN.
    """
    rows = summary[
        (summary[Col.ATTRIBUTE] == attribute) & (summary[Col.EDITOR] == editor) & np.isclose(summary[Col.HFLD_LAMBDA], hfld_lambda)
    ].sort_values("attribute_success")
    xs = np.concatenate([[0.0], rows["attribute_success"].to_numpy()])
    ys = np.concatenate([[0.0], rows[metric].to_numpy()])
    if success <= xs[-1]:
        return float(np.interp(success, xs, ys))
    if success - xs[-1] > EXTRAPOLATION_LIMIT + 1e-9 or xs[-1] == xs[-2]:
        return float("nan")
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(ys[-1] + slope * (success - xs[-1]))


def reductions(summary: pd.DataFrame, *, base: str = "editor", ours: str = "editor_hfld") -> pd.DataFrame:
    """Per attribute, strength and lambda: (base - ours) / base of each emotion-change metric,
    with `ours` read at the attribute success `base` reached at that strength."""
    records = []
    base_rows = summary[summary[Col.EDITOR] == base]
    ours_rows = summary[summary[Col.EDITOR] == ours]
    for _, row in base_rows.iterrows():
        for hfld_lambda in sorted(ours_rows.loc[ours_rows[Col.ATTRIBUTE] == row[Col.ATTRIBUTE], Col.HFLD_LAMBDA].unique()):
            record = {
                Col.ATTRIBUTE: row[Col.ATTRIBUTE],
                Col.STRENGTH: row[Col.STRENGTH],
                Col.EDITOR: ours,
                Col.HFLD_LAMBDA: hfld_lambda,
                "attribute_success": row["attribute_success"],
            }
            for metric in EMOTION_CHANGE:
                matched = change_at_success(
                    summary, attribute=row[Col.ATTRIBUTE], editor=ours, hfld_lambda=hfld_lambda,
                    success=row["attribute_success"], metric=metric,
                )
                record[f"{metric}_{base}"] = row[metric]
                record[f"{metric}_matched"] = matched
                record[f"{metric}_reduction"] = (row[metric] - matched) / row[metric] if row[metric] > 0 else float("nan")
            records.append(record)
    return pd.DataFrame.from_records(records)


def hfld_reductions(summary: pd.DataFrame) -> pd.DataFrame:
    """`reductions` of the HFLD editor and of its refinement, whichever the summary holds."""
    parts = [reductions(summary, ours=method) for method in ("editor_hfld", "refined") if (summary[Col.EDITOR] == method).any()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def markdown_table(frame: pd.DataFrame, *, digits: int = 3) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "n/a" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def contact_sheet_cells(edits: pd.DataFrame, run_dirs: list[Path], *, attribute: str, strength: float, sources: int) -> tuple[list[list[np.ndarray]], list[str]]:
    """For a few sources: the source, then its edit by every method, side by side."""
    from pipeline.images import read_png

    chosen = edits[(edits[Col.ATTRIBUTE] == attribute) & np.isclose(edits[Col.STRENGTH], strength)]
    methods = sorted(chosen[[Col.EDITOR, Col.HFLD_LAMBDA]].drop_duplicates().itertuples(index=False), key=lambda m: (METHOD_ORDER.index(m[0]), m[1]))
    labels = ["source"] + [f"{m}" if m in ("linear", "linear_projected", "editor") else f"{m} l={l:g}" for m, l in methods]
    rows = []
    for seed in sorted(chosen[Col.SEED].unique())[:sources]:
        of_seed = chosen[chosen[Col.SEED] == seed]
        run_dir = _run_dir_of(run_dirs, of_seed.iloc[0])
        row = [read_png(run_dir / of_seed.iloc[0][Col.IMAGE_SOURCE])]
        for method, hfld_lambda in methods:
            match = of_seed[(of_seed[Col.EDITOR] == method) & np.isclose(of_seed[Col.HFLD_LAMBDA], hfld_lambda)]
            if match.empty:
                break
            row.append(read_png(run_dir / match.iloc[0][Col.IMAGE_EDIT]))
        if len(row) == len(labels):
            rows.append(row)
    return rows, labels


def _run_dir_of(run_dirs: list[Path], row: pd.Series) -> Path:
    for run_dir in run_dirs:
        if (Path(run_dir) / row[Col.IMAGE_SOURCE]).is_file() and (Path(run_dir) / "config.json").is_file():
            if json.loads((Path(run_dir) / "config.json").read_text())["run_id"] == row[Col.RUN_ID]:
                return Path(run_dir)
    raise FileNotFoundError(f"no run directory holds run {row[Col.RUN_ID]}")


def plot_tradeoff(summary: pd.DataFrame, path: Path, *, attribute: str, metric: str = "emotion_js") -> Path:
    """Attribute success against emotion change, one line per method and lambda, points at
    each strength: how much emotion each unit of success costs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary[summary[Col.ATTRIBUTE] == attribute]
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for (method, hfld_lambda), group in rows.groupby([Col.EDITOR, Col.HFLD_LAMBDA]):
        group = group.sort_values(Col.STRENGTH)
        label = method if hfld_lambda == 0 else f"{method} lambda={hfld_lambda:g}"
        axes.plot([0, *group["attribute_success"]], [0, *group[metric]], marker="o", label=label)
    axes.set_xlabel(f"attribute success ({attribute})")
    axes.set_ylabel(metric.replace("_", " "))
    axes.set_title(f"{attribute}: success against emotion change (points: strengths)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(run_dirs: list[Path], out: Path, *, name: str = "hfld-evaluation", sheet_strength: float | None = None) -> Path:
    """Tables (Markdown and CSV), trade-off plots and a contact sheet for one or more runs."""
    from pipeline.images import encode_png, labelled_grid, write_atomic

    out = Path(out)
    edits = load_edits([Path(d) for d in run_dirs])
    summary = summarise(edits)
    reduced = hfld_reductions(summary)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / f"{name}.csv", index=False)
    reduced.to_csv(out / f"{name}-reductions.csv", index=False)
    lines = [
        f"# {name}",
        "",
        f"Runs: {', '.join(str(d) for d in run_dirs)}; {edits[Col.SEED].nunique()} sources, {len(edits)} edits.",
        "Written by `exprlock evaluate`; see `pipeline/evaluation.py` for the definitions.",
        "",
        "## Methods compared",
        "",
        markdown_table(summary),
        "",
        "## Reduction in emotion change against the editor without HFLD, at equal attribute success",
        "",
        "Each row reads the method (`editor`: the HFLD editor or its refinement) at the attribute success",
        "the editor without HFLD reached, along its success/change curve over the strengths.",
        "",
        markdown_table(reduced),
        "",
    ]
    for attribute in sorted(edits[Col.ATTRIBUTE].unique()):
        plot = plot_tradeoff(summary, out / f"{name}-{attribute}.png", attribute=attribute)
        lines += [f"![{attribute}]({plot.name})", ""]
        strength = sheet_strength if sheet_strength is not None else float(edits[Col.STRENGTH].max())
        cells, labels = contact_sheet_cells(edits, [Path(d) for d in run_dirs], attribute=attribute, strength=strength, sources=6)
        if cells:
            sheet = out / f"{name}-{attribute}-sheet.png"
            write_atomic(encode_png(labelled_grid(cells, labels)), sheet)
            lines += [f"![{attribute} edits at strength {strength:g}]({sheet.name})", ""]
    report = out / f"{name}.md"
    write_atomic("\n".join(lines).encode(), report)
    return report
