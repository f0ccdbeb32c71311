"""The labels report: can exprlock's expression labels be trusted, by a judge it never uses?

`write_label_report` makes everything from one run config (`configs/labels.yaml`), each step
resumable:
1. discovery on the config's edits directory, where not done yet (emotion directions);
2. reachability: for each of the seven expressions, `PROBE_SLOTS` probe sources steered with at
   most `PROBE_CANDIDATES` candidate seeds each; the share that got an accepted face;
3. two runs of `sources.count` sources: free expressions (the config without targets, on seeds
   after every seed the targeted run may try) and target expressions (the config as it is);
4. PyEmotion, the held-out emotion judge, scores every source face (through
   `pipeline.stages.evaluation`, the only module that uses the judges); its agreement with the
   pipeline's label, overall and per label, with bootstrap intervals: on free sources, on the
   free sources whose label is confident, and on accepted target-expression sources;
5. per-class acceptance rates of the targeted run, and a contact sheet per target class.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas import EMOTION_LABELS, Col
from pipeline.storage.card import write_card
from pipeline.config import RunConfig
from pipeline.stages.discovery import collect_samples_on_disk, discover, ensure_sample_shard, sample_shard_plan
from pipeline.editing.files import direction_path, emotion_name
from pipeline.editing.directions import load_direction
from pipeline.stages.evaluation import confident_sources, judge_confusion, judged_sources, label_agreement, markdown_table
from pipeline.expressions import steer_sources
from pipeline.images import contact_sheet, encode_png, read_png, write_atomic
from pipeline.generators.factory import load_run_generator
from pipeline.generators.base import FaceGenerator
from pipeline.storage.layout import prepare_run, shard_count
from pipeline.stages.generate import generate_shard, write_contact_sheet
from pipeline.scoring import FaceScorer, load_scorer
from pipeline.storage.summary import RunManifest, summarize

PROBE_SLOTS = 20
PROBE_CANDIDATES = 5
SHEET_FACES = 16


def free_config(config: RunConfig) -> RunConfig:
    """The config without targets, on seeds the targeted run never tries."""
    sources = config.sources
    first = sources.first_seed + sources.count * sources.max_candidates
    return config.model_copy(update={"sources": sources.model_copy(update={"expressions": {}, "first_seed": first})})


def probe_config(config: RunConfig, label: str, *, slots: int = PROBE_SLOTS, candidates: int = PROBE_CANDIDATES) -> RunConfig:
    """`slots` sources all aiming at `label`, on seeds of neither run."""
    sources = config.sources
    first = sources.first_seed + 2 * sources.count * sources.max_candidates + EMOTION_LABELS.index(label) * slots * candidates
    probe = sources.model_copy(update={"count": slots, "first_seed": first, "expressions": {label: 1.0}, "max_candidates": candidates})
    return config.model_copy(update={"sources": probe})


def ensure_discovery(config: RunConfig, generator: FaceGenerator, scorer: FaceScorer) -> None:
    """Discovery on the config's edits directory, unless its emotion directions exist."""
    if all(direction_path(config.models_dir, emotion_name(label)).is_file() for label in EMOTION_LABELS):
        return
    for index in range(len(sample_shard_plan(config))):
        ensure_sample_shard(config, index, generator, scorer)
    discover(config, collect_samples_on_disk(config), provenance={"generator": config.generator_kind})


def reachability(
    config: RunConfig, generator: FaceGenerator, scorer: FaceScorer, *, slots: int = PROBE_SLOTS, candidates: int = PROBE_CANDIDATES
) -> pd.DataFrame:
    """Per expression: probe sources that reached it, and the steps and candidates it took."""
    records = []
    for label in EMOTION_LABELS:
        probe = probe_config(config, label, slots=slots, candidates=candidates)
        direction = load_direction(
            direction_path(config.models_dir, emotion_name(label)),
            latent_shape=generator.latent_shape,
        )
        steered = steer_sources(probe, generator, scorer.expressions, {label: direction}, range(slots), [label] * slots, strict=False)
        reached = len(steered.slots)
        records.append({
            "expression": label,
            "probe_sources": slots,
            "reached": reached,
            "reached_rate": reached / slots,
            "mean_steps": float(np.mean(steered.steps)) if reached else float("nan"),
            "mean_rejected": float(np.mean(steered.rejected)) if reached else float("nan"),
        })
    return pd.DataFrame.from_records(records)


def make_run(config: RunConfig, run_dir: Path, *, say: Callable[[str], None] = lambda _: None) -> Path:
    """Every shard of a run (finished ones kept), its contact sheet and card."""
    prepare_run(config, run_dir)
    total = shard_count(config)
    for index in range(total):
        result = generate_shard(config, run_dir, index)
        say(f"{run_dir}: shard {index + 1}/{total} {'kept' if result.skipped else 'written'}")
    write_contact_sheet(run_dir)
    write_card(run_dir)
    return run_dir


def class_sheets(run_dir: Path, sources: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """A contact sheet of accepted faces per target class."""
    sheets = []
    for label, part in sources.groupby(Col.EXPRESSION_TARGET):
        images = np.stack([read_png(Path(run_dir) / p) for p in part[Col.IMAGE_SOURCE].head(SHEET_FACES)])
        path = out / f"{name}-{label}.png"
        write_atomic(encode_png(contact_sheet(images, columns=8)), path)
        sheets.append(path)
    return sheets


def write_label_report(
    config: RunConfig,
    out: Path,
    *,
    runs: Path,
    name: str = "labels",
    device: str = "cpu",
    cache: Path | None = None,
    probe_slots: int = PROBE_SLOTS,
    probe_candidates: int = PROBE_CANDIDATES,
    say: Callable[[str], None] = lambda _: None,
) -> Path:
    """Make the runs behind the report, judge them and write `out/<name>.md` (and CSVs).

    `say` receives one line per finished step, for progress.
    """
    generator, _, _ = load_run_generator(config, device)
    scorer = load_scorer(*config.scorer_settings(device))
    ensure_discovery(config, generator, scorer)
    say(f"discovery: {config.models_dir}")
    reach = reachability(config, generator, scorer, slots=probe_slots, candidates=probe_candidates)
    say("reachability: " + ", ".join(f"{r.expression} {r.reached}/{r.probe_sources}" for r in reach.itertuples()))
    free_dir = make_run(free_config(config), runs / f"{name}-free", say=say)
    target_dir = make_run(config, runs / f"{name}-targets", say=say)
    say("judging the source faces")
    free = judged_sources(free_dir, cache=cache)
    targets = judged_sources(target_dir, cache=cache)
    out.mkdir(parents=True, exist_ok=True)
    parts = {
        "free sources, all": free,
        "free sources, confident label": confident_sources(free, config.sources.min_confidence),
        "target-expression sources (accepted)": targets,
    }
    agreement = pd.concat(
        [label_agreement(frame).assign(sources_set=title) for title, frame in parts.items()], ignore_index=True
    )
    yields = summarize(RunManifest.read(target_dir))["expressions"]
    acceptance = pd.DataFrame.from_records([{"expression": label, **y} for label, y in yields.items()])
    reach.to_csv(out / f"{name}-reachability.csv", index=False)
    agreement.to_csv(out / f"{name}-agreement.csv", index=False)
    sheets = class_sheets(target_dir, targets, out, name)
    reached = [label for label in EMOTION_LABELS if label in config.sources.expressions]
    lines = [
        f"# {name}: expression labels against a held-out judge",
        "",
        f"Written by `exprlock label-report`; config with {config.sources.count} sources per run, "
        f"target expressions {reached} in equal shares, minimum ensemble confidence "
        f"{config.sources.min_confidence:g}. Definitions: `pipeline/stages/label_report.py`.",
        "The label is exprlock's: the emotion ensemble's top class. The judge is PyEmotion (FER2013 CNN,",
        "held out: no loss, label, selection or default ever uses it); it sees its authors' grey 48x48 crop",
        "of the face MTCNN finds, and faces MTCNN finds none in are left out (`sources` counts the rest).",
        "Intervals: bootstrap 95 % over the sources.",
        "",
        "## Which expressions the generator can be steered to",
        "",
        f"{probe_slots} probe sources per expression, each with up to {probe_candidates} candidate seeds and "
        f"{config.sources.expression_steps} steps of {config.sources.expression_step:g} along the expression's "
        "discovered direction; `reached`: probe sources that got a face the ensemble accepts.",
        "",
        markdown_table(reach),
        "",
        "## Agreement of the held-out judge with exprlock's label",
        "",
        markdown_table(agreement[["sources_set", "pipeline_label", "sources", "judge", "agreement", "low", "high"]]),
        "",
        "## What the judge says instead",
        "",
        "Share of each exprlock label that PyEmotion gives each class, on accepted target-expression sources.",
        "",
        markdown_table(judge_confusion(targets)),
        "",
        "## Acceptance of target expressions",
        "",
        markdown_table(acceptance) if len(acceptance) else "No targets in the config.",
        "",
        "## Accepted faces per target",
        "",
        *[f"![{path.stem}]({path.name})\n" for path in sheets],
        f"Runs: `{free_dir}` (free), `{target_dir}` (targets).",
        "",
    ]
    report = out / f"{name}.md"
    write_atomic("\n".join(lines).encode(), report)
    return report
