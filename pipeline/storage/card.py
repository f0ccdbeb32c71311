"""The dataset card: the run's README, which says what the data is and how Hugging Face loads it.

Its YAML front matter is Hugging Face's dataset-card metadata (licence, task, size, and the
`configs:` that make `datasets.load_dataset(RUN_DIR)` return the rows with images, class labels
and splits; see `pipeline.storage.huggingface`), written with `huggingface_hub`'s own card classes. The
body follows the spirit of "Datasheets for Datasets" (Gebru et al., 2021) and Hugging Face dataset
cards, in the few sections a user of a generated face dataset needs before training on it: the
config that made it, every model with its file hash and licence (looked up in the asset
registry by digest, so a user-supplied file is never mistaken for a registered one), counts,
score summaries and plots, and known limitations, including the licence terms that restrict
use. Everything is derived from the run directory (config record, manifest, contact sheet), so
writing the card again after more shards finish gives the up-to-date card.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

import pipeline
from data_schemas import Col
from pipeline.storage.huggingface import LICENCE_FILE, VIEW_FILES, configs, licence_fields, size_category, write_views
from pipeline.images import write_atomic
from pipeline.storage.splits import Split
from pipeline.storage.summary import CATEGORIES, NOT_SCORED, RunManifest, summarize, write_plots
from pipeline.models.assets import REGISTRY, Asset
from pipeline.storage.layout import CARD_FILE, CONFIG_FILE, CONTACT_SHEET, GENERATOR_FILE

# Where cards were written before the card became the run's README; replaced when rewritten.
_OLD_CARD_FILE = "dataset_card.md"

_RESTRICTIVE = ("non-commercial", "research use", "research only")
# Image columns carry a digest too, but of a PNG, not of a model.
_NOT_MODELS = {Col.IMAGE_SOURCE, Col.IMAGE_EDIT}


def write_card(run_dir: Path) -> Path:
    """Write (or rewrite) the run's README card, its split views and the plots it shows.

    The views are written first and the README last, so a README always names views that exist.
    """
    run_dir = Path(run_dir)
    manifest = RunManifest.read(run_dir)
    summary = summarize(manifest)
    plots = write_plots(manifest)
    models = model_provenance(manifest)
    record = _config_record(run_dir)
    split_rows = write_views(run_dir, manifest.dataset)
    sections = [
        _header(summary, record),
        _config_section(record),
        _generator_section(run_dir),
        _models_section(models, record),
        _counts_section(summary),
        _expressions_section(summary, record),
        _lock_section(summary, record),
        _metrics_section(summary),
        _plots_section(run_dir, plots),
        _limitations_section(summary, models, record),
        _loading_section(),
    ]
    fields, terms = licence_terms(summary["run_id"], models, record)
    data = card_data(summary, split_rows, fields)
    write_atomic(terms.encode(), run_dir / LICENCE_FILE)
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    path = run_dir / CARD_FILE
    write_atomic(str(card).encode(), path)
    (run_dir / _OLD_CARD_FILE).unlink(missing_ok=True)
    return path


def card_data(summary: dict[str, Any], split_rows: dict[Split, int], licence: dict[str, Any]) -> DatasetCardData:
    """The card's Hugging Face metadata (`licence`: the fields of `licence_terms`)."""
    tags = ["synthetic", "faces", "facial-expression-recognition", "exprlock"]
    if summary[Col.ATTRIBUTE] != NOT_SCORED:
        tags.append("face-editing")
    return DatasetCardData(
        **licence,
        pretty_name=f"exprlock {summary['run_id']}",
        task_categories=["image-classification"],
        annotations_creators=["machine-generated"],
        size_categories=[size_category(summary["images"]["images"])],
        tags=tags,
        configs=configs(split_rows),
    )


def model_provenance(manifest: RunManifest) -> list[dict[str, Any]]:
    """Each distinct model named in the manifest: role, name, SHA-256, licence, registry record.

    Models come from the `models` column (one record per scorer) and from any column `X` with a
    companion `X_sha256` (the generator), image columns excepted. The registry record is found
    by digest; the licence is the manifest's when it recorded one, else the registry's.
    """
    dataset = manifest.dataset
    names = set(dataset.schema.names)
    found: dict[tuple[str, str, str], str | None] = {}
    for role in sorted(n for n in names if f"{n}_sha256" in names and n not in _NOT_MODELS):
        table = dataset.to_table(columns=[role, f"{role}_sha256"])
        for row in table.group_by([role, f"{role}_sha256"]).aggregate([]).to_pylist():
            found[(role, row[role], row[f"{role}_sha256"])] = None
    if Col.MODELS in names:
        records = pc.list_flatten(dataset.to_table(columns=[Col.MODELS]).column(Col.MODELS))
        fields = pa.table(records.flatten(), names=[f.name for f in records.type])
        for record in fields.group_by(fields.column_names).aggregate([]).to_pylist():
            found[(record["role"], record["name"], record["sha256"])] = record["licence"]
    by_digest = {asset.sha256: asset for asset in REGISTRY.values()}
    models = []
    for (role, name, digest), licence in sorted(found.items()):
        asset = by_digest.get(digest)
        licence = licence or (asset.licence if asset else None)
        models.append({"role": role, "name": name, "sha256": digest, "licence": licence, "asset": asset})
    return models


def _restricting_losses(record: dict[str, Any]) -> list[Asset]:
    """Models that shaped the edits through a training or refinement loss without scoring them:
    3DDFA_V2, whose coefficients are the Basel Face Model's, when a preserving editor used them."""
    edits = record.get("config", {}).get("edits", {})
    preserving = {"editor_preserve", "refined_preserve"} & set(edits.get("methods", []))
    if edits.get("attributes") and preserving and any(entry.get("expression", 0) > 0 for entry in edits.get("preserve", [])):
        return [REGISTRY["tddfa-mobilenet"]]
    return []


def licence_terms(run_id: str, models: list[dict[str, Any]], record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The licence front matter of a run (or of an export of it) and its LICENSE.md text."""
    losses = _restricting_losses(record)
    return licence_fields(models, also_restricted=[asset.name for asset in losses]), _licence_text(run_id, models, losses)


def run_licence_terms(run_dir: Path) -> tuple[dict[str, Any], str]:
    """`licence_terms` of the run in `run_dir`, from its manifest and config record."""
    manifest = RunManifest.read(run_dir)
    run_id = manifest.scalars.column(Col.RUN_ID)[0].as_py() if manifest.scalars.num_rows else "unknown"
    return licence_terms(run_id, model_provenance(manifest), _config_record(Path(run_dir)))


def _licence_text(run_id: str, models: list[dict[str, Any]], losses: list[Asset]) -> str:
    """The run's LICENSE.md: the terms of every model behind its images and scores."""
    rows = [(m["role"], m["name"], m["licence"] or "not recorded: check the terms of the file's source",
             m["asset"].page if m["asset"] else "user-supplied file") for m in models]  # fmt: skip
    rows += [("edit loss (3DMM expression)", asset.name, asset.licence, asset.page) for asset in losses]
    return "\n".join(
        [
            f"# Terms of use: {run_id}",
            "",
            "The images and scores of this run were made with the models below; each model's terms bind what "
            "may be done with the data. Where any of them restricts use (non-commercial or research only), "
            "the data is restricted in the same way.",
            "",
            "| role | model | terms | published at |",
            "|---|---|---|---|",
            *(f"| {role} | `{name}` | {terms} | {page} |" for role, name, terms, page in rows),
            "",
        ]
    )


def _header(summary: dict[str, Any], record: dict[str, Any]) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"# Dataset card: {summary['run_id']}",
            "",
            f"Synthetic face images with an expression-preserving edit pipeline, produced by exprlock "
            f"{record.get('exprlock', pipeline.__version__)}. Card written {now} by exprlock {pipeline.__version__}.",
            "",
            "| images | source faces | edits | manifest rows (pairs) | shards | seeds | manifest schema |",
            "|---|---|---|---|---|---|---|",
            f"| {summary['images']['images']} | {summary['images']['sources']} | {summary['images']['edits']} "
            f"| {summary['rows']} | {summary['shards']} | {summary['seeds']['min']}..{summary['seeds']['max']} "
            f"| {summary['schema_version']} |",
        ]
    )


def _config_section(record: dict[str, Any]) -> str:
    config = yaml.safe_dump(record.get("config", {}), sort_keys=False).rstrip()
    return (
        "## Config\n\nThe run id is a digest of this config (device and batch size excluded); running it "
        f"again resumes the run.\n\n```yaml\n{config}\n```"
    )


def _generator_section(run_dir: Path) -> str:
    """The generator's family, file format, architecture, latent space, truncation and W average."""
    path = run_dir / GENERATOR_FILE
    if not path.is_file():
        return "## Generator\n\nNot recorded: the shards were made before exprlock recorded it; see the models table."
    record = json.loads(path.read_text())
    lines = ["## Generator", "", f"- **{record.get('family', 'unknown')}** `{record.get('name')}` (SHA-256 `{record.get('sha256')}`)"]
    labels = (("format", "file format"), ("latent", "latent space"), ("resolution", "resolution (px)"),
              ("truncation_psi", "truncation psi"), ("truncation_cutoff", "truncation cutoff (W+ rows)"),
              ("noise_mode", "noise"), ("classes", "classes (conditional generator)"),
              ("class_index", "class rendered (one-hot c)"), ("w_avg", "W average (the truncation centre)"))  # fmt: skip
    lines += [f"- {label}: {record[key]}" for key, label in labels if key in record and record[key] is not None]
    if "config" in record:
        config = yaml.safe_dump(record["config"], sort_keys=False).rstrip()
        lines += ["", "Architecture:", "", f"```yaml\n{config}\n```"]
    return "\n".join(lines)


def _models_section(models: list[dict[str, Any]], record: dict[str, Any]) -> str:
    rows = ["## Models", "", "| role | model | SHA-256 | source | licence |", "|---|---|---|---|---|"]
    for model in models:
        asset: Asset | None = model["asset"]
        source = f"`{asset.requirement}` `{asset.member}`" if asset else "user-supplied file"
        licence = model["licence"] or "not recorded: check the terms of the file's source"
        rows.append(f"| {model['role']} | `{model['name']}` | `{model['sha256']}` | {source} | {licence} |")
    if not models:
        rows.append("| - | no model provenance columns in this manifest | | | |")
    precision = record.get("config", {}).get("scoring", {}).get("precision", "float32")
    if precision != "float32":
        rows += ["", f"The torch classifiers (emotion, identity, gender and age) ran in {precision} "
                 "(`scoring.precision`), so their scores may differ from float32 ones by the tolerances in "
                 "`tests/test_score_reference.py`; FaceMesh landmarks and face detection ran in float32."]
    return "\n".join(rows)


def _counts_section(summary: dict[str, Any]) -> str:
    images = summary["images"]
    lines = [
        "## Counts",
        "",
        "Counted in faces: each source face once and each edit once, as the image views, the loaders "
        "and `exprlock export` give them (the manifest has one row per source and edit pair).",
        "",
        f"- **images**: {images['images']} ({images['sources']} source faces, {images['edits']} edits)",
    ]
    shown = ", ".join(f"{split}: {c['faces']} source faces, {c['images']} images" for split, c in images["by_split"].items())
    lines.append(f"- **split** (by source face, the `split` column): {shown}")
    labels = images["labels"]
    lines.append(f"- **label** (images per dominant emotion): {NOT_SCORED if labels == NOT_SCORED else ', '.join(f'{k}: {v}' for k, v in labels.items())}")
    for name in CATEGORIES:
        value = summary[name]
        shown = NOT_SCORED if value == NOT_SCORED else ", ".join(f"{k}: {v}" for k, v in value.items())
        lines.append(f"- **{name}** ({'source faces' if name == Col.EMOTION_SOURCE else 'edits'}): {shown}")
    flip = summary["flip_rate"]
    lines.append(f"- **dominant-emotion flip rate**: {flip if flip == NOT_SCORED else f'{flip:.4f}'}")
    failures = summary["failures"]
    shown = NOT_SCORED if failures == NOT_SCORED else ", ".join(f"{k}: {v}" for k, v in failures.items())
    lines.append(f"- **failures**: {shown}")
    return "\n".join(lines)


def _expressions_section(summary: dict[str, Any], record: dict[str, Any]) -> str:
    """Per target expression: what was asked for, what was written, at what acceptance rate."""
    yields = summary["expressions"]
    if yields == NOT_SCORED:
        return "## Target expressions\n\nNone requested: faces show the expressions the generator sampled."
    sources = record.get("config", {}).get("sources", {})
    rows = [
        "## Target expressions",
        "",
        f"Each source was steered to its target and kept only when the emotion ensemble named the target "
        f"with its models agreeing and confidence at least {sources.get('min_confidence', 'n/a')}; rejected "
        "candidates were replaced by the slot's next seed.",
        "",
        "| expression | share asked | faces | candidates tried | acceptance rate | mean steps |",
        "|---|---|---|---|---|---|",
    ]
    shares = sources.get("expressions", {})
    total = sum(shares.values()) or 1.0
    for label, y in yields.items():
        share = f"{shares[label] / total:.3f}" if label in shares else "n/a"
        rows.append(
            f"| {label} | {share} | {y['faces']} | {y['candidates']} | {y['acceptance_rate']:.3f} | {y['mean_steps']:.2f} |"
        )
    return "\n".join(rows)


def _lock_section(summary: dict[str, Any], record: dict[str, Any]) -> str:
    """Per attribute, the share of edits the per-edit lock kept within its emotion budget."""
    shares = summary["locked_share_by_attribute"]
    if shares == NOT_SCORED:
        return "## Expression lock\n\nOff: each edit is the editor's output at the configured strength."
    lock = record.get("config", {}).get("edits", {}).get("lock", {})
    rows = [
        "## Expression lock",
        "",
        f"Each edit is the candidate, of {lock.get('candidates', 'n/a')} along the editor's path, that reached the "
        "attribute with the least change of the emotion ensemble's distribution. An edit is locked when that "
        f"change is at most {lock.get('max_change', 'n/a')} bits (JS); edits that are not are kept and flagged "
        "(`expression_locked` false).",
        "",
        "| attribute | locked share |",
        "|---|---|",
        *(f"| {attribute} | {share:.3f} |" for attribute, share in shares.items()),
    ]
    return "\n".join(rows)


def _metrics_section(summary: dict[str, Any]) -> str:
    metrics = summary["metrics"]
    if metrics == NOT_SCORED:
        return f"## Metrics\n\nNo score columns in this manifest ({NOT_SCORED})."
    rows = ["## Metrics", "", "| column | n | missing | mean | std | p05 | median | p95 |", "|---|---|---|---|---|---|---|---|"]
    for name, s in metrics.items():
        rows.append(
            f"| {name} | {s['count']} | {s['missing']} | {s['mean']:.4f} | {s['std']:.4f} | "
            f"{s['p05']:.4f} | {s['median']:.4f} | {s['p95']:.4f} |"
        )
    return "\n".join(rows)


def _plots_section(run_dir: Path, plots: list[Path]) -> str:
    lines = ["## Plots", ""]
    if (run_dir / CONTACT_SHEET).is_file():
        lines.append(f"![source faces]({CONTACT_SHEET})")
    for path in plots:
        lines.append(f"![{path.stem}]({path.relative_to(run_dir).as_posix()})")
    if len(lines) == 2:
        lines.append("None yet.")
    return "\n".join(lines)


def _limitations_section(summary: dict[str, Any], models: list[dict[str, Any]], record: dict[str, Any]) -> str:
    profile = record.get("config", {}).get("profile")
    items = [
        "Every face is a sample of a pretrained generator: it inherits the demographics, artefacts and "
        "resolution of the generator's training data, and is not a photograph of a person.",
        "Labels and scores come from pretrained models, not from human annotators, and share those "
        "models' errors and biases.",
        "Split by source seed (as `pipeline.storage.splits` does): rows of one seed show the same face, so "
        "splitting rows at random leaks faces across train and test.",
    ]
    if profile == "demo":
        items.append(
            "The demo profile's generator makes 64x64 faces learned from DigiFace-1M, a synthetic face "
            "set; its faces are small and stylised, meant for testing pipelines, not for training "
            "models that will see real photographs."
        )
    restricted = sorted({f"`{m['name']}`: {m['licence']}" for m in models if m["licence"] and _is_restrictive(m["licence"])})
    if restricted:
        items.append("Use is restricted by the terms of: " + "; ".join(restricted) + ".")
    for asset in _restricting_losses(record):
        items.append(f"Edits were trained or refined against 3DDFA_V2's expression coefficients; its terms: {asset.licence}.")
    unknown = sorted({m["name"] for m in models if m["licence"] is None})
    if unknown:
        items.append(
            "Models from user-supplied files carry their own terms, not recorded here: "
            + ", ".join(f"`{n}`" for n in unknown)
            + " (NVIDIA's StyleGAN2 FFHQ weights, for one, are for non-commercial use only)."
        )
    if summary[Col.EDITOR] == NOT_SCORED and summary["metrics"] != NOT_SCORED:
        items.append(
            "This run holds source faces only, without edits: emotion flips, identity similarity and "
            "landmark drift are measured between a source and its edit, so they are not in it."
        )
    if summary["metrics"] == NOT_SCORED:
        items.append(
            f"This manifest (schema {summary['schema_version']}) carries no expression, identity or "
            "landmark scores; filter on them only after a scored run."
        )
    return "## Known limitations\n\n" + "\n".join(f"- {item}" for item in items)


def _loading_section() -> str:
    views = ", ".join(f"`{name}`" for name in VIEW_FILES.values())
    return (
        "## Loading\n\nFrom this directory, offline (`HF_DATASETS_OFFLINE=1`):\n\n```python\n"
        "from datasets import load_dataset\ndata = load_dataset(\".\")  # train, validation, test; images decoded\n\n"
        "import pandas as pd\nframe = pd.read_parquet(\"manifest\")  # every column, latents included\n\n"
        "from pipeline.storage.dataset import ManifestDataset\ntrain = ManifestDataset(\".\", split=\"train\")\n```\n\n"
        f"The manifest (`manifest/`) is the record; {views} are per-split views of it for Hugging Face "
        "`datasets` (image paths as `*_file_name`, emotions as class indices, no latents), rewritten with this card."
    )


def _is_restrictive(licence: str) -> bool:
    lowered = licence.lower()
    return any(term in lowered for term in _RESTRICTIVE)


def _config_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else {}

