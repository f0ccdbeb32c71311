"""A `generate` run: seeds split into shards, each rendered and committed on its own.

Every function takes plain values (config, run directory, shard index), so the Prefect tasks
that wrap them stay thin and everything here runs without Prefect. A shard whose Parquet file
exists is finished and skipped; its images are renamed into place before the Parquet file, so
the Parquet rename is the commit. The ledger record (`pipeline.storage.ledger`) follows the commit.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from data_schemas import CURRENT_VERSION, Col
from pipeline.batching import fitting_batch_size, halve_batch_size
from pipeline.config import RunConfig
from pipeline.images import ImageWriter, contact_sheet, encode_png, labelled_grid, read_png, write_atomic
from pipeline.storage.layout import CONTACT_SHEET, edit_image, record_generator, shard_path, shard_seeds, source_image
from pipeline.storage.ledger import record_shard, with_shard_metadata
from pipeline.storage.manifest import read_manifest, to_table, write_shard
from pipeline.generators.factory import load_run_generator, resolve_device
from pipeline.generators.base import FaceGenerator, to_uint8
from pipeline.editing.files import emotion_name
from pipeline.editing.directions import Direction
from pipeline.editing.plan import EditSpec, plan_edits, preserving_method
from pipeline.edits import Editing, attribute_reached, edit_directions
from pipeline.expressions import SteeredSources, plan_targets, steer_sources
from pipeline.lock import lock_edit
from pipeline.metrics import js_divergence
from pipeline.scoring import (
    ATTRIBUTE_NAMES,
    FaceScorer,
    FaceScores,
    compare,
    edit_score_columns,
    load_scorer,
    source_score_columns,
)
from pipeline.threads import configure_threads


@dataclass(frozen=True)
class ShardResult:
    index: int
    path: Path
    rows: int
    skipped: bool


def generate_shard(config: RunConfig, run_dir: Path, index: int) -> ShardResult:
    """Render, edit and score one shard's seeds, save the PNGs, then commit its Parquet file.

    Without edits there is one row per source; with edits one row per (source, edit). With
    `edits.lock`, each edit is the lock's choice among its candidates (`pipeline.lock`).
    """
    path = shard_path(run_dir, index)
    if path.exists():
        return ShardResult(index, path, 0, skipped=True)
    seeds = shard_seeds(config, index)
    configure_threads()
    device = resolve_device(config.device)
    generator, generator_name, generator_sha = load_run_generator(config, str(device))
    record_generator(run_dir, {"name": generator_name, "sha256": generator_sha, **generator.describe()})
    scorer = load_scorer(*config.scorer_settings(str(device))) if config.scoring.enabled else None
    specs = plan_edits(config)
    targets = plan_targets(config)
    editing = Editing(config, generator) if specs or targets else None
    if editing is not None:
        editing.require_generator(generator_sha)
    columns: dict[str, list] = defaultdict(list)
    with ImageWriter(run_dir) as writer:
        start = 0
        while start < len(seeds):
            batch = seeds[start : start + fitting_batch_size(device, config.batch_size_on(device.type))]
            try:
                rows = _batch_rows(config, index, batch, generator, scorer, editing, specs, targets, writer)
            except torch.OutOfMemoryError as error:
                halve_batch_size(device, len(batch), error)
                continue  # the same seeds again, in smaller batches; their PNGs are rewritten unchanged
            _extend(columns, rows)
            start += len(batch)
        writer.flush()  # every PNG durable before the Parquet that names them is committed
    for name in (Col.IMAGE_SOURCE_SHA256, Col.IMAGE_EDIT_SHA256):
        if name in columns:
            columns[name] = [digest.result() for digest in columns[name]]
    count = len(columns[Col.SEED])
    created = datetime.now(timezone.utc)
    columns.update(
        {
            Col.RUN_ID: [config.run_id] * count,
            Col.SHARD: [index] * count,
            Col.LATENT_SHAPE: [list(generator.latent_shape)] * count,
            Col.GENERATOR: [generator_name] * count,
            Col.GENERATOR_SHA256: [generator_sha] * count,
            Col.GENERATOR_CLASS: [config.generator.class_index] * count,
            Col.SCHEMA_VERSION: [CURRENT_VERSION] * count,
            Col.CREATED_AT: [created] * count,
        }
    )
    table = to_table(columns, run_id=config.run_id)
    if specs:
        # Rows of one attribute and method sit together, so readers filtering on them skip
        # whole row groups by their statistics.
        table = table.sort_by([(Col.ATTRIBUTE, "ascending"), (Col.EDITOR, "ascending"), (Col.SEED, "ascending")])
    table = with_shard_metadata(table)
    write_shard(table, path)
    record_shard(run_dir, index, path, table)
    return ShardResult(index, path, count, skipped=False)


def _batch_rows(
    config: RunConfig,
    index: int,
    batch: range,
    generator: FaceGenerator,
    scorer: FaceScorer | None,
    editing: Editing | None,
    specs: list[EditSpec],
    targets: list[str],
    writer: ImageWriter,
) -> dict[str, list]:
    """The manifest rows of one batch of seeds, with their PNGs queued on `writer`."""
    rows: dict[str, list] = defaultdict(list)
    if targets:
        slots = [seed - config.sources.first_seed for seed in batch]
        steered = steer_sources(
            config, generator, scorer.expressions, _target_directions(editing, targets), slots, [targets[i] for i in slots]
        )
        latents, names, origin = steered.latents, steered.seeds, _steering_columns(batch, steered)
    else:
        latents, names, origin = generator.sample_latents(batch), list(batch), {}
    with torch.no_grad():
        floats = generator.synthesize(latents)
    source = {
        Col.SEED: names,
        **origin,
        Col.LATENT: list(latents.detach().float().cpu().reshape(len(batch), -1).numpy()),
        **_save_images(writer, [source_image(index, seed) for seed in names], floats, Col.IMAGE_SOURCE, Col.IMAGE_SOURCE_SHA256),
    }
    scores = scorer.score(floats, identity=bool(specs)) if scorer is not None else None
    if scores is not None:
        source.update(source_score_columns(scores, scorer.provenance()))
    if not specs:
        _extend(rows, source)
        return rows
    for spec in specs:
        threshold = editing.threshold(spec.attribute)
        before = scores.attribute(editing.score_name(spec.attribute))
        signs = edit_directions(before, threshold)
        started = time.perf_counter()
        made = make_edit(config, editing, generator, scorer, spec, latents, scores, signs)
        seconds = (time.perf_counter() - started) / len(batch)
        after = made.scores.attribute(editing.score_name(spec.attribute))
        edit = {
            Col.ATTRIBUTE: [spec.attribute] * len(batch),
            Col.STRENGTH: [spec.strength] * len(batch),
            Col.EDITOR: [spec.method] * len(batch),
            Col.HFLD_LAMBDA: [spec.hfld_lambda] * len(batch),
            Col.PRESERVATION: [asdict(spec.weights)] * len(batch),
            **made.lock_columns,
            Col.EDIT_SECONDS: [seconds] * len(batch),
            Col.LATENT_EDIT: list(made.latents.detach().float().cpu().reshape(len(batch), -1).numpy()),
            **_save_images(
                writer, [edit_image(index, seed, spec.slug) for seed in names], made.images, Col.IMAGE_EDIT, Col.IMAGE_EDIT_SHA256
            ),
            **edit_score_columns(made.scores, compare(scores, made.scores)),
            Col.ATTRIBUTE_SCORE_SOURCE: before.tolist(),
            Col.ATTRIBUTE_SCORE_EDIT: after.tolist(),
            Col.ATTRIBUTE_REACHED: attribute_reached(signs, after, threshold).tolist(),
        }
        _extend(rows, {**source, **edit})
    return rows


@dataclass(frozen=True)
class MadeEdit:
    """One edit spec applied to a batch: latents, images, scores, and the lock's columns."""

    latents: torch.Tensor
    images: torch.Tensor
    scores: FaceScores
    lock_columns: dict[str, list]


def make_edit(
    config: RunConfig,
    editing: Editing,
    generator: FaceGenerator,
    scorer: FaceScorer,
    spec: EditSpec,
    latents: torch.Tensor,
    source_scores: FaceScores,
    signs: torch.Tensor,
) -> MadeEdit:
    """The edits of one spec for a batch of sources, rendered and scored; with `edits.lock` on,
    each is the lock's choice among its candidates (`pipeline.lock`)."""
    lock = config.edits.lock
    if lock.candidates == 1:
        edited = editing.apply(spec, latents, signs)
        with torch.no_grad():
            images = generator.synthesize(edited)
        return MadeEdit(edited, images, scorer.score(images), {})
    threshold = editing.threshold(spec.attribute)
    score = editing.score_name(spec.attribute)
    column = ATTRIBUTE_NAMES.index(score)

    def measure(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        probs, attributes = scorer.describe(images, attributes=[score])  # the Adience nets only for gender and age
        return js_divergence(source_scores.emotion_probs, probs), attribute_reached(signs, attributes[:, column], threshold)

    locked = lock_edit(lambda scale: editing.apply(spec, latents, signs * scale), generator.synthesize, measure, lock)
    count = len(latents)
    columns = {
        Col.LOCK_CANDIDATES: [lock.candidates] * count,
        Col.LOCK_CHOSEN: locked.chosen.tolist(),
        Col.LOCK_STRENGTH: (locked.scales * spec.strength).tolist(),
        Col.EXPRESSION_LOCKED: locked.locked.tolist(),
    }
    return MadeEdit(locked.latents, locked.images, scorer.score(locked.images), columns)


def _target_directions(editing: Editing, targets: list[str]) -> dict[str, Direction]:
    return {label: editing.direction(emotion_name(label)) for label in set(targets)}


def _steering_columns(batch: range, steered: SteeredSources) -> dict[str, list]:
    return {
        Col.SEED_ORIGINAL: list(batch),
        Col.EXPRESSION_TARGET: steered.targets,
        Col.EXPRESSION_STEPS: steered.steps,
        Col.EXPRESSION_REJECTED: steered.rejected,
    }


def _save_images(
    writer: ImageWriter, relative_paths: list[Path], floats: torch.Tensor, path_column: str, hash_column: str
) -> dict[str, list]:
    """Queue a batch of PNGs; the path column and the futures of the digest column."""
    futures = writer.submit(relative_paths, to_uint8(floats).numpy())
    return {path_column: [p.as_posix() for p in relative_paths], hash_column: futures}


def _extend(columns: dict[str, list], values: dict[str, list]) -> None:
    for name, column in values.items():
        columns[name].extend(column)


def write_contact_sheet(run_dir: Path, *, limit: int = 64, edited_sources: int = 8) -> Path:
    """The run's contact sheet: without edits, a grid of the first `limit` source faces; with
    edits, the first `edited_sources` sources each beside its edits, every tile captioned with
    the ensemble's dominant emotion and, under an edit, whether it kept the source's."""
    columns = [Col.SEED, Col.IMAGE_SOURCE, Col.ATTRIBUTE, Col.STRENGTH, Col.EDITOR, Col.HFLD_LAMBDA, Col.PRESERVATION,
               Col.IMAGE_EDIT, Col.EMOTION_SOURCE, Col.EMOTION_EDIT, Col.EMOTION_FLIPPED]
    frame = read_manifest(run_dir).select(columns).to_pandas()
    path = Path(run_dir) / CONTACT_SHEET
    edits = frame[frame[Col.ATTRIBUTE].notna()]
    if edits.empty:
        images = np.stack([read_png(Path(run_dir) / p) for p in frame[Col.IMAGE_SOURCE][:limit]])
        write_atomic(encode_png(contact_sheet(images)), path)
        return path
    edits = edits.assign(**{_METHOD: [_method_name(row) for row in edits.to_dict("records")]})
    key = [Col.ATTRIBUTE, Col.STRENGTH, _METHOD]
    kinds = edits[key].drop_duplicates().sort_values(key)
    one_method = kinds[_METHOD].nunique() == 1
    labels = ["source"] + [f"{a} {s:g}" if one_method else f"{a} {m} {s:g}" for a, s, m in kinds.itertuples(index=False)]
    cells, captions = [], []
    for seed in sorted(edits[Col.SEED].unique())[:edited_sources]:
        rows = edits[edits[Col.SEED] == seed].set_index(key)
        first = rows.iloc[0]
        cells.append([read_png(Path(run_dir) / first[Col.IMAGE_SOURCE])])
        captions.append([first[Col.EMOTION_SOURCE] or ""])
        for kind in kinds.itertuples(index=False):
            row = rows.loc[tuple(kind)]
            cells[-1].append(read_png(Path(run_dir) / row[Col.IMAGE_EDIT]))
            flipped = row[Col.EMOTION_FLIPPED]
            mark = "" if flipped is None else (" changed" if flipped else " kept")
            captions[-1].append(f"{row[Col.EMOTION_EDIT] or ''}{mark}")
    write_atomic(encode_png(labelled_grid(cells, labels, captions=captions)), path)
    return path


_METHOD = "method"


def _method_name(row: dict) -> str:
    """A contact-sheet column's method: HFLD methods with their lambda, preserving editors with
    their terms, so two editors of one run never share a column."""
    editor = row[Col.EDITOR]
    if editor in ("editor_hfld", "refined"):
        return f"{editor} l{row[Col.HFLD_LAMBDA]:g}"
    return preserving_method(editor, row[Col.PRESERVATION])
