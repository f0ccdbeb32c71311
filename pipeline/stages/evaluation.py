"""Comparing edit methods on a run's manifest: the table behind the HFLD claim.

Every (source, edit) row already carries the in-pipeline scores, so the comparison is a
group-by over attribute, strength, method and lambda: attribute success rate, emotion flip rate,
mean Jensen-Shannon divergence of the emotion distributions, landmark NME, identity cosine and
the rate at which a face is still detected. The held-out judges (`pipeline.judges`, used here and
nowhere else) add their own view of the same edits: PyEmotion's emotion divergence, flip and kept
rates and dlib's 68-point NME, raw and aligned.

The paper's headline, "reduction in the change of emotion" of the editor with HFLD against the
same editor without it, is reported at equal attribute success: each method's change is a curve
over its strengths through the origin (strength 0 changes nothing and reaches nothing), and the
HFLD editor's curve is read at the success the base editor reached, so a method cannot look
better by simply editing less. Every reduction comes with a bootstrap 95 % interval: sources are
resampled with replacement (all edits of a source move together) and the whole computation,
success and curve included, is repeated per draw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas import EMOTION_LABELS, Col
from pipeline.editing.plan import preserving_method
from pipeline.storage.manifest import read_manifest

GROUP = [Col.ATTRIBUTE, Col.STRENGTH, Col.EDITOR, Col.HFLD_LAMBDA]
RUN_DIR = "run_dir"
METRICS = {
    "attribute_success": (Col.ATTRIBUTE_REACHED, "mean"),
    "emotion_flip_rate": (Col.EMOTION_FLIPPED, "mean"),
    "emotion_js": (Col.EMOTION_JS, "mean"),
    "landmark_nme": (Col.LANDMARK_NME, "mean"),
    "identity_cosine": (Col.IDENTITY_COSINE, "mean"),
    "face_detected_rate": (Col.FACE_DETECTED_EDIT, "mean"),
    "edits": (Col.SEED, "count"),
}
JUDGE_METRICS = {
    "pyemotion_judged_rate": ("pyemotion_judged", "mean"),
    "pyemotion_js": ("pyemotion_js", "mean"),
    "pyemotion_flip_rate": ("pyemotion_flipped", "mean"),
    "pyemotion_kept_rate": ("pyemotion_kept", "mean"),
    "dlib68_judged_rate": ("dlib68_judged", "mean"),
    "dlib68_nme": ("dlib68_nme", "mean"),
    "dlib68_nme_aligned": ("dlib68_nme_aligned", "mean"),
}
# Change metrics whose reduction is reported, with the scorer that measures them.
CHANGE_METRICS = {
    "emotion_js": "pipeline",
    "emotion_flip_rate": "pipeline",
    "landmark_nme": "pipeline",
    "pyemotion_js": "pyemotion",
    "pyemotion_flip_rate": "pyemotion",
    "dlib68_nme": "dlib68",
    "dlib68_nme_aligned": "dlib68",
}
METHOD_ORDER = ("linear", "linear_projected", "editor", "editor_hfld", "refined", "editor_preserve", "refined_preserve")
BASE_METHODS = ("linear", "linear_projected", "editor")
EXTRAPOLATION_LIMIT = 0.05
DRAWS = 1000
CONFIDENT = 0.6
_BOOLEAN = (Col.ATTRIBUTE_REACHED, Col.EMOTION_FLIPPED, Col.FACE_DETECTED_EDIT, "pyemotion_judged", "pyemotion_kept", "dlib68_judged")


def load_edits(run_dirs: list[Path]) -> pd.DataFrame:
    """The edit rows of one or more runs (source-only rows dropped), with their run directory.

    The `editor` column names the method as compared: a preserving editor's weights and the lock
    are part of it (`editor_preserve l1000-e30`, `editor_preserve l1000-e30+lock`), so editors
    with other terms, and locked and unlocked edits of pooled runs, are told apart.
    """
    frames = [read_manifest(d).to_pandas().assign(**{RUN_DIR: str(d)}) for d in run_dirs]
    frame = pd.concat(frames, ignore_index=True)
    frame = frame[frame[Col.ATTRIBUTE].notna()].reset_index(drop=True)
    return frame.assign(**{Col.EDITOR: [method_label(row) for row in frame.to_dict("records")]})


def method_label(row: dict) -> str:
    """The compared method of a manifest row: editor, preservation weights, lock."""
    label = preserving_method(row[Col.EDITOR], row.get(Col.PRESERVATION))
    candidates = row.get(Col.LOCK_CANDIDATES)
    if candidates is not None and not pd.isna(candidates) and candidates > 1:
        label = f"{label}+lock"
    return label


def method_rank(label: str) -> int:
    """Where a method label sorts: by its base method in `METHOD_ORDER`, locked after unlocked."""
    base = label.split(" ")[0].split("+")[0]
    rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return 2 * rank + label.endswith("+lock")


def attach_judges(edits: pd.DataFrame, *, cache: Path | None = None) -> pd.DataFrame:
    """`edits` with the held-out judges' per-edit metrics and PyEmotion's source label."""
    from pipeline.judges.scores import EDIT_COLUMNS, SOURCE_LABEL, edit_metrics, score_images, source_labels

    def paths(image: str, digest: str) -> tuple[list[Path], list[str]]:
        return [Path(d) / p for d, p in zip(edits[RUN_DIR], edits[image], strict=True)], edits[digest].tolist()

    source_paths, source_digests = paths(Col.IMAGE_SOURCE, Col.IMAGE_SOURCE_SHA256)
    edit_paths, edit_digests = paths(Col.IMAGE_EDIT, Col.IMAGE_EDIT_SHA256)
    scores = score_images(source_paths + edit_paths, source_digests + edit_digests, cache=cache)
    sources = scores.loc[source_digests].set_axis(edits.index)
    metrics = edit_metrics(sources, scores.loc[edit_digests].set_axis(edits.index))
    labels = source_labels(sources).rename(SOURCE_LABEL)
    return pd.concat([edits.drop(columns=[*EDIT_COLUMNS, SOURCE_LABEL], errors="ignore"), metrics, labels], axis=1)


def _numeric(edits: pd.DataFrame) -> pd.DataFrame:
    present = [c for c in _BOOLEAN if c in edits]
    return edits.assign(**{c: edits[c].astype(float) for c in present})


def _metrics_of(edits: pd.DataFrame) -> dict[str, tuple[str, str]]:
    return METRICS | {name: spec for name, spec in JUDGE_METRICS.items() if spec[0] in edits}


def summarise(edits: pd.DataFrame) -> pd.DataFrame:
    """One row per (attribute, strength, method, lambda) with the comparison metrics."""
    summary = _numeric(edits).groupby(GROUP, dropna=False).agg(**_metrics_of(edits)).reset_index()
    order = summary[Col.EDITOR].map(method_rank)
    return summary.assign(_order=order).sort_values([Col.ATTRIBUTE, Col.STRENGTH, "_order", Col.HFLD_LAMBDA]).drop(columns="_order").reset_index(drop=True)


def _curve_value(successes: np.ndarray, changes: np.ndarray, success: float) -> float:
    """A change read off the curve through (0, 0) and the measured (success, change) points.

    Past the largest success measured the curve is extended along its last segment by at most
    `EXTRAPOLATION_LIMIT` of success; further out the value is NaN.
    """
    order = np.argsort(successes, kind="stable")
    xs = np.concatenate([[0.0], successes[order]])
    ys = np.concatenate([[0.0], changes[order]])
    if np.isnan(success) or np.isnan(xs).any() or np.isnan(ys).any():
        return float("nan")
    if success <= xs[-1]:
        return float(np.interp(success, xs, ys))
    if success - xs[-1] > EXTRAPOLATION_LIMIT + 1e-9 or xs[-1] == xs[-2]:
        return float("nan")
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(ys[-1] + slope * (success - xs[-1]))


def change_at_success(summary: pd.DataFrame, *, attribute: str, editor: str, hfld_lambda: float, success: float, metric: str) -> float:
    """A method's change (`metric`) read off its success/change curve at a given success."""
    rows = summary[
        (summary[Col.ATTRIBUTE] == attribute) & (summary[Col.EDITOR] == editor) & np.isclose(summary[Col.HFLD_LAMBDA], hfld_lambda)
    ]
    return _curve_value(rows["attribute_success"].to_numpy(float), rows[metric].to_numpy(float), success)


def _bootstrap_means(edits: pd.DataFrame, groups: pd.DataFrame, columns: dict[str, str], *, draws: int, seed: int) -> dict[str, np.ndarray]:
    """Per metric, `(draws + 1, groups)` means: row 0 on all sources, then one row per draw.

    A draw resamples sources (source images, so pooled runs of the same faces stay paired) with
    replacement; its mean is the weighted mean over the edits that are not NaN, each weighted by
    how often its source was drawn.
    """
    numeric = _numeric(edits)
    # A source is its face: runs pooled over the same sources resample them together.
    source_ids, sources = pd.factorize(numeric[Col.IMAGE_SOURCE_SHA256])
    keys = pd.MultiIndex.from_frame(groups[GROUP])
    group_ids = keys.get_indexer(pd.MultiIndex.from_frame(numeric[GROUP]))
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(len(sources)), rng.multinomial(len(sources), np.full(len(sources), 1 / len(sources)), size=draws)])
    means = {}
    for name, column in columns.items():
        values = numeric[column].to_numpy(float)
        valid = ~np.isnan(values)
        sums = np.zeros((len(groups), len(sources)))
        counts = np.zeros((len(groups), len(sources)))
        np.add.at(sums, (group_ids[valid], source_ids[valid]), values[valid])
        np.add.at(counts, (group_ids[valid], source_ids[valid]), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[name] = (weights @ sums.T) / (weights @ counts.T)
    return means


def _interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of the finite draws; NaN when under half are finite."""
    finite = values[np.isfinite(values)]
    if len(finite) < len(values) / 2:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def reductions(
    edits: pd.DataFrame, *, base: str = "editor", ours: str = "editor_hfld", draws: int = DRAWS, seed: int = 0
) -> pd.DataFrame:
    """(base - ours) / base of every change metric, `ours` read at the success `base` reached.

    One row per attribute, strength, lambda of `ours` and metric, with the scorer that measured
    it, the base method's value (`base`), ours at the same success (`matched`), the reduction and
    its bootstrap 95 % interval (`low`, `high`).
    """
    summary = summarise(edits)
    metrics = {name: _metrics_of(edits)[name][0] for name in ("attribute_success", *CHANGE_METRICS) if name in summary}
    means = _bootstrap_means(edits, summary, metrics, draws=draws, seed=seed)
    success = means["attribute_success"]
    records = []
    for b in np.flatnonzero(summary[Col.EDITOR].to_numpy() == base):
        attribute = summary.at[b, Col.ATTRIBUTE]
        same = (summary[Col.ATTRIBUTE] == attribute) & (summary[Col.EDITOR] == ours)
        for hfld_lambda in sorted(summary.loc[same, Col.HFLD_LAMBDA].unique()):
            curve = np.flatnonzero(same & np.isclose(summary[Col.HFLD_LAMBDA], hfld_lambda))
            for metric in (m for m in CHANGE_METRICS if m in metrics):
                change = means[metric]
                matched = np.array([_curve_value(success[d, curve], change[d, curve], success[d, b]) for d in range(len(change))])
                with np.errstate(invalid="ignore", divide="ignore"):
                    reduced = np.where(change[:, b] > 0, (change[:, b] - matched) / change[:, b], np.nan)
                low, high = _interval(reduced[1:])
                records.append({
                    Col.ATTRIBUTE: attribute, Col.STRENGTH: summary.at[b, Col.STRENGTH], Col.EDITOR: ours,
                    Col.HFLD_LAMBDA: hfld_lambda, "scorer": CHANGE_METRICS[metric], "metric": metric,
                    "attribute_success": success[0, b], "base": change[0, b], "matched": matched[0],
                    "reduction": reduced[0], "low": low, "high": high,
                })
    return pd.DataFrame.from_records(records)


def method_reductions(edits: pd.DataFrame, *, draws: int = DRAWS) -> pd.DataFrame:
    """`reductions` against the editor without preservation of every preserving method the
    edits hold (HFLD editor, refinement, preserving editors, locked or not)."""
    methods = sorted((m for m in set(edits[Col.EDITOR]) if m not in BASE_METHODS), key=lambda m: (method_rank(m), m))
    if "editor" not in set(edits[Col.EDITOR]) or not methods:
        return pd.DataFrame()
    return pd.concat([reductions(edits, ours=m, draws=draws) for m in methods], ignore_index=True)


# (summary column, scorer, metric name) of the long table, in its order.
LONG_METRICS = (
    ("attribute_success", "pipeline", "attribute_success"),
    ("emotion_js", "pipeline", "emotion_js"),
    ("emotion_flip_rate", "pipeline", "emotion_flip"),
    ("landmark_nme", "pipeline", "landmark_nme"),
    ("identity_cosine", "pipeline", "identity_cosine"),
    ("pyemotion_js", "pyemotion", "emotion_js"),
    ("pyemotion_flip_rate", "pyemotion", "emotion_flip"),
    ("dlib68_nme", "dlib68", "landmark_nme"),
    ("dlib68_nme_aligned", "dlib68_aligned", "landmark_nme"),  # dlib after similarity alignment
)


def method_name(editor: str, hfld_lambda: float) -> str:
    """A method as the long table names it: HFLD methods carry their lambda."""
    return f"{editor} l{hfld_lambda:g}" if editor in ("editor_hfld", "refined") else editor


def long_table(summary: pd.DataFrame, reduced: pd.DataFrame) -> pd.DataFrame:
    """One row per (attribute, strength, method, scorer, metric): the value, and where the
    method is compared with the base editor, its reduction at equal success and interval."""
    keyed = {}
    for row in reduced.to_dict("records"):
        key = (row[Col.ATTRIBUTE], row[Col.STRENGTH], method_name(row[Col.EDITOR], row[Col.HFLD_LAMBDA]), row["metric"])
        keyed[key] = row
    records = []
    for row in summary.to_dict("records"):
        method = method_name(row[Col.EDITOR], row[Col.HFLD_LAMBDA])
        for column, scorer, metric in LONG_METRICS:
            if column not in row:
                continue
            match = keyed.get((row[Col.ATTRIBUTE], row[Col.STRENGTH], method, column), {})
            records.append({
                "attribute": row[Col.ATTRIBUTE], "strength": row[Col.STRENGTH], "method": method, "scorer": scorer,
                "metric": metric, "value": row[column], "reduction": match.get("reduction", np.nan),
                "low": match.get("low", np.nan), "high": match.get("high", np.nan),
            })
    return pd.DataFrame.from_records(records, columns=["attribute", "strength", "method", "scorer", "metric", "value", "reduction", "low", "high"])


def lock_table(edits: pd.DataFrame) -> pd.DataFrame:
    """Per locked method, attribute and strength: the share of edits the lock kept within its
    budget, and how often PyEmotion sees the dominant emotion unchanged (over edits it judged),
    on all sources and on sources with a confident label."""
    locked = edits[edits[Col.EDITOR].str.endswith("+lock")]
    if locked.empty:
        return pd.DataFrame()
    judged = "pyemotion_flipped" in locked
    confident = confident_sources(locked) if judged else locked.iloc[:0]
    rows = []
    for (attribute, strength, editor), part in locked.groupby([Col.ATTRIBUTE, Col.STRENGTH, Col.EDITOR]):
        sure = confident.loc[confident.index.intersection(part.index)]
        row = {
            Col.ATTRIBUTE: attribute, Col.STRENGTH: strength, Col.EDITOR: editor, "edits": len(part),
            "locked_share": part[Col.EXPRESSION_LOCKED].astype(float).mean(),
            "attribute_success": part[Col.ATTRIBUTE_REACHED].astype(float).mean(),
        }
        if judged:
            row["pyemotion_unchanged"] = 1 - part["pyemotion_flipped"].astype(float).mean()
            row["confident_edits"] = len(sure)
            row["pyemotion_unchanged_confident"] = 1 - sure["pyemotion_flipped"].astype(float).mean()
            locked_sure = sure[sure[Col.EXPRESSION_LOCKED].astype(bool)]
            row["pyemotion_unchanged_confident_locked"] = 1 - locked_sure["pyemotion_flipped"].astype(float).mean()
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def cost_table(edits: pd.DataFrame) -> pd.DataFrame:
    """Per attribute and method: mean wall seconds per edit as the runs recorded it
    (`edit_seconds`, schema 1.6: the edit, every lock candidate, and scoring the kept face) and
    its multiple of the same attribute's editor without preservation. Empty for runs that did not
    record it."""
    if Col.EDIT_SECONDS not in edits or edits[Col.EDIT_SECONDS].isna().all():
        return pd.DataFrame()
    timed = edits[edits[Col.EDIT_SECONDS].notna()]
    key = [Col.ATTRIBUTE, Col.EDITOR, Col.HFLD_LAMBDA]
    table = timed.groupby(key, dropna=False).agg(edits=(Col.SEED, "count"), seconds_per_edit=(Col.EDIT_SECONDS, "mean")).reset_index()
    base = table[table[Col.EDITOR] == "editor"].set_index(Col.ATTRIBUTE)["seconds_per_edit"]
    table["relative_to_editor"] = table["seconds_per_edit"] / table[Col.ATTRIBUTE].map(base)
    order = table[Col.EDITOR].map(method_rank)
    return table.assign(_order=order).sort_values([Col.ATTRIBUTE, "_order", Col.HFLD_LAMBDA]).drop(columns="_order").reset_index(drop=True)


def mirror_floor(edits: pd.DataFrame, *, draws: int = DRAWS, seed: int = 0) -> pd.DataFrame:
    """What PyEmotion and the pipeline's emotion ensemble each report between every distinct
    source face and its left-right mirror, which shows the same expression: each scorer's own
    noise, a floor under the change it reports for any edit. Means over the sources the scorer
    judged both times (PyEmotion: MTCNN found a face in both), with bootstrap 95 % intervals."""
    from pipeline.images import read_png, to_float_images
    from pipeline.judges.scores import mirror_changes
    from pipeline.metrics import js_divergence
    from pipeline.scoring import load_scorer

    sources = edits.drop_duplicates(Col.IMAGE_SOURCE_SHA256)
    pixels = np.stack([read_png(Path(d) / p) for d, p in zip(sources[RUN_DIR], sources[Col.IMAGE_SOURCE], strict=True)])
    judge = mirror_changes(pixels)
    images = to_float_images(pixels)
    scorer = load_scorer("cpu", False)
    p, q = (scorer.describe(batch, attributes=())[0] for batch in (images, images.flip(3)))
    ensemble = pd.DataFrame({"judged": True, "js": js_divergence(p, q), "flipped": (p.argmax(axis=1) != q.argmax(axis=1)).astype(float)})
    rng = np.random.default_rng(seed)
    rows = []
    for scorer_name, changes in (("pipeline", ensemble), ("pyemotion", judge)):
        judged = changes[changes["judged"].astype(bool)]
        for metric, column in (("emotion_js", "js"), ("emotion_flip", "flipped")):
            values = judged[column].to_numpy(float)
            low, high = _interval(values[rng.integers(0, len(values), size=(draws, len(values)))].mean(axis=1))
            rows.append({
                "scorer": scorer_name, "metric": metric, "sources": len(sources), "judged": len(judged),
                "value": values.mean(), "low": low, "high": high,
            })
    return pd.DataFrame.from_records(rows)


def confident_sources(edits: pd.DataFrame, threshold: float = CONFIDENT) -> pd.DataFrame:
    """Edits whose source label is one the pipeline vouches for.

    Schema 1.2: the emotion ensemble gives the label at least `threshold` and its models agree.
    Older runs, labelled by one model: that model's top probability is at least `threshold`.
    """
    if Col.EMOTION_CONFIDENCE_SOURCE in edits and edits[Col.EMOTION_CONFIDENCE_SOURCE].notna().all():
        return edits[(edits[Col.EMOTION_CONFIDENCE_SOURCE] >= threshold) & edits[Col.EMOTION_AGREEMENT_SOURCE].astype(bool)]
    top = edits[Col.EMOTION_PROBS_SOURCE].map(lambda p: float(np.max(p)) if p is not None else float("nan"))
    return edits[top >= threshold]


def label_agreement(edits: pd.DataFrame, *, draws: int = DRAWS, seed: int = 0) -> pd.DataFrame:
    """How often PyEmotion names the pipeline's label of a source, overall and per label.

    Over the distinct sources the judge found a face in, with bootstrap 95 % intervals.
    """
    from pipeline.judges.scores import SOURCE_LABEL

    sources = edits.drop_duplicates([Col.RUN_ID, Col.SEED])
    sources = sources[sources[SOURCE_LABEL].notna()]
    rng = np.random.default_rng(seed)
    records = []
    for label, part in [("all", sources), *sorted(sources.groupby(Col.EMOTION_SOURCE))]:
        agree = (part[Col.EMOTION_SOURCE] == part[SOURCE_LABEL]).to_numpy(float)
        draws_of = agree[rng.integers(0, len(agree), size=(draws, len(agree)))].mean(axis=1)
        low, high = _interval(draws_of)
        records.append({"pipeline_label": label, "sources": len(part), "judge": "pyemotion", "agreement": agree.mean(), "low": low, "high": high})
    return pd.DataFrame.from_records(records)


def judged_sources(run_dir: Path, *, cache: Path | None) -> pd.DataFrame:
    """One row per source of a run, with PyEmotion's label of its face (`pyemotion_source`)."""
    from pipeline.judges.scores import SOURCE_LABEL, score_images, source_labels

    sources = read_manifest(run_dir).to_pandas().drop_duplicates(Col.SEED).reset_index(drop=True)
    sources[RUN_DIR] = str(run_dir)
    digests = sources[Col.IMAGE_SOURCE_SHA256].tolist()
    scores = score_images([Path(run_dir) / p for p in sources[Col.IMAGE_SOURCE]], digests, cache=cache)
    sources[SOURCE_LABEL] = source_labels(scores.loc[digests]).to_numpy()
    return sources


def judge_confusion(sources: pd.DataFrame) -> pd.DataFrame:
    """Rows: exprlock's label; columns: the share of those faces PyEmotion puts in each class."""
    from pipeline.judges.scores import SOURCE_LABEL

    judged = sources[sources[SOURCE_LABEL].notna()]
    table = pd.crosstab(judged[Col.EMOTION_SOURCE], judged[SOURCE_LABEL], normalize="index")
    table = table.reindex(columns=[label for label in EMOTION_LABELS], fill_value=0.0)
    return table.rename_axis(None, axis=1).reset_index().rename(columns={Col.EMOTION_SOURCE: "exprlock label"})


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


def contact_sheet_cells(edits: pd.DataFrame, *, attribute: str, strength: float, sources: int) -> tuple[list[list[np.ndarray]], list[str]]:
    """For a few sources: the source, then its edit by every method, side by side."""
    from pipeline.images import read_png

    chosen = edits[(edits[Col.ATTRIBUTE] == attribute) & np.isclose(edits[Col.STRENGTH], strength)]
    methods = sorted(chosen[[Col.EDITOR, Col.HFLD_LAMBDA]].drop_duplicates().itertuples(index=False), key=lambda m: (method_rank(m[0]), m[1]))
    labels = ["source"] + [m if m in BASE_METHODS or " " in m else f"{m} l={l:g}" for m, l in methods]
    rows = []
    for seed in sorted(chosen[Col.SEED].unique())[:sources]:
        of_seed = chosen[chosen[Col.SEED] == seed]
        run_dir = Path(of_seed.iloc[0][RUN_DIR])
        row = [read_png(run_dir / of_seed.iloc[0][Col.IMAGE_SOURCE])]
        for method, hfld_lambda in methods:
            match = of_seed[(of_seed[Col.EDITOR] == method) & np.isclose(of_seed[Col.HFLD_LAMBDA], hfld_lambda)]
            if match.empty:
                break
            row.append(read_png(Path(match.iloc[0][RUN_DIR]) / match.iloc[0][Col.IMAGE_EDIT]))
        if len(row) == len(labels):
            rows.append(row)
    return rows, labels


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
        label = method if hfld_lambda == 0 or " " in method else f"{method} lambda={hfld_lambda:g}"
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


def write_report(
    run_dirs: list[Path],
    out: Path,
    *,
    name: str = "hfld-evaluation",
    sheet_strength: float | None = None,
    judges: bool = True,
    draws: int = DRAWS,
) -> Path:
    """Tables (Markdown and CSV), trade-off plots and a contact sheet for one or more runs.

    With `judges`, every source and edit is also scored by the held-out judges (their scores
    are cached by image digest under the exprlock home), and their view is reported beside the
    pipeline's: per-method metrics, reductions with intervals, and agreement on source labels.
    """
    from pipeline.images import encode_png, labelled_grid, write_atomic
    from pipeline.models.assets import exprlock_home

    out = Path(out)
    edits = load_edits([Path(d) for d in run_dirs])
    if judges:
        edits = attach_judges(edits, cache=exprlock_home() / "judges" / "scores.parquet")
    summary = summarise(edits)
    reduced = method_reductions(edits, draws=draws)
    confident = confident_sources(edits)
    reduced_confident = method_reductions(confident, draws=draws) if len(confident) else pd.DataFrame()
    out.mkdir(parents=True, exist_ok=True)
    long_table(summary, reduced).to_csv(out / f"{name}.csv", index=False)
    summary.to_csv(out / f"{name}-summary.csv", index=False)
    reduced.to_csv(out / f"{name}-reductions.csv", index=False)
    locks = lock_table(edits)
    pipeline_columns = [*GROUP, *METRICS]
    lines = [
        f"# {name}",
        "",
        f"Runs: {', '.join(str(d) for d in run_dirs)}; {edits[Col.SEED].nunique()} sources, {len(edits)} edits.",
        "Written by `exprlock evaluate`; see `pipeline/stages/evaluation.py` for the definitions.",
        "",
        "## Methods compared (in-pipeline scorers)",
        "",
        markdown_table(summary[pipeline_columns]),
        "",
    ]
    if judges:
        lines += [
            "## Methods compared (held-out judges)",
            "",
            "PyEmotion (emotion, on MTCNN's face) and dlib's 68 points (landmarks on dlib's HOG face, NME",
            "over the 51 inner points by the outer-eye-corner distance, raw and similarity-aligned) never",
            "enter a loss, a label or a choice. `*_judged_rate`: share of edits where the judge found both",
            "faces; its other metrics are over those, except `pyemotion_kept_rate`, which counts a lost",
            "face as not kept.",
            "",
            markdown_table(summary[[*GROUP, *(c for c in JUDGE_METRICS if c in summary)]]),
            "",
            "### Each emotion scorer against itself",
            "",
            "PyEmotion and the pipeline's ensemble on each source face and on its left-right mirror, which",
            "shows the same expression: what a scorer reports between the two is its own noise, a floor",
            "under the change it reports for any edit.",
            "",
            markdown_table(mirror_floor(edits, draws=draws)),
            "",
        ]
    lines += [
        "## Reduction in change against the editor without preservation terms, at equal attribute success",
        "",
        "Each row reads the method (an editor trained with HFLD or other preservation terms, refined or",
        "locked) at the attribute success the editor without them reached, along its success/change",
        "curve over the strengths.",
        f"`low`/`high`: bootstrap 95 % interval over {draws} resamplings of the sources.",
        "",
        markdown_table(reduced) if len(reduced) else "No base editor and preserving method to compare.",
        "",
        f"### The same on sources with a confident label (ensemble confidence at least {CONFIDENT:g}, models agreeing)",
        "",
        f"{confident[Col.SEED].nunique()} of {edits[Col.SEED].nunique()} sources.",
        "",
        markdown_table(reduced_confident) if len(reduced_confident) else "Too few sources to compare.",
        "",
    ]
    if len(locks):
        lines += [
            "## The per-edit lock",
            "",
            "`locked_share`: edits whose kept candidate changed the ensemble's emotion within the lock's budget.",
            "`pyemotion_unchanged*`: share of the edits PyEmotion judged (a face in both images) whose",
            "dominant emotion it sees unchanged; `_confident`: on sources with a confident label; `_locked`:",
            "of those, the edits the lock flagged as locked.",
            "",
            markdown_table(locks),
            "",
        ]
    costs = cost_table(edits)
    if len(costs):
        lines += [
            "## Cost per edit",
            "",
            "Wall seconds per edit as `generate` recorded them (`edit_seconds`): the edit, every lock",
            "candidate's render and scores, and scoring the kept face, on the machine and threads that made",
            "the runs; `relative_to_editor` is the multiple of the same attribute's editor without",
            "preservation terms. Methods of one run share its machine's load; across runs, load can move",
            "the figures more than the methods do. Training an editor is paid once per attribute and is",
            "not included.",
            "",
            markdown_table(costs),
            "",
        ]
    if judges:
        lines += [
            "## Agreement of the held-out emotion judge with the pipeline's source label",
            "",
            markdown_table(label_agreement(edits, draws=draws)),
            "",
        ]
    for attribute in sorted(edits[Col.ATTRIBUTE].unique()):
        plot = plot_tradeoff(summary, out / f"{name}-{attribute}.png", attribute=attribute)
        lines += [f"![{attribute}]({plot.name})", ""]
        strength = sheet_strength if sheet_strength is not None else float(edits[Col.STRENGTH].max())
        cells, labels = contact_sheet_cells(edits, attribute=attribute, strength=strength, sources=6)
        if cells:
            sheet = out / f"{name}-{attribute}-sheet.png"
            write_atomic(encode_png(labelled_grid(cells, labels)), sheet)
            lines += [f"![{attribute} edits at strength {strength:g}]({sheet.name})", ""]
    report = out / f"{name}.md"
    write_atomic("\n".join(lines).encode(), report)
    return report
