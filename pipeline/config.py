"""Run configuration: one YAML or TOML file, validated, every field defaulted.

The run id is a digest of the fields that decide what a run produces (not of where or how fast
it runs: device and batch size are left out), so running the same config again resumes it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

# Fields that change neither images nor scores; excluded from the run id.
_EXECUTION_FIELDS = {"device", "batch_size", "base_dir"}
# Settings of target expressions; left out of the run id of a run without targets, so runs
# made before they existed keep their id. Likewise the preserving editors' weights without a
# method that uses them, the lock when it is off or there is nothing to edit, layer
# restrictions when there are none, the classifiers' precision when it is float32, and the
# gender and age scorer when it is Adience (which every config meant before there was a choice)
# or nothing is scored for attributes.
_EXPRESSION_FIELDS = ("expressions", "min_confidence", "expression_steps", "expression_step", "max_candidates")
_PRESERVE_METHODS = {"editor_preserve", "refined_preserve"}

Precision = Literal["float32", "bfloat16", "float16"]
AgeGenderModel = Literal["faceapi", "adience"]
# The registry asset behind the gender and the age scores of each `scoring.age_gender` choice.
GENDER_AGE_ASSETS: dict[str, dict[str, str]] = {
    "faceapi": {"gender": "face-api-age-gender", "age": "face-api-age-gender"},
    "adience": {"gender": "adience-gender-net", "age": "adience-age-net"},
}
AUTO_BATCH_SIZE = {"cpu": 32, "cuda": 128}  # images per model call under `batch_size: auto`
EmotionLabel = Literal["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SourcesConfig(_Strict):
    """Which seeds to sample and how to split them into shards."""

    count: StrictInt = Field(64, ge=1, le=10_000_000, description="number of source faces")
    first_seed: StrictInt = Field(0, ge=0, lt=2**62, description="seed of the first face; seeds are consecutive")
    shard_size: StrictInt = Field(64, ge=1, le=100_000, description="seeds per shard (one Parquet file each)")
    expressions: dict[EmotionLabel, float] = Field(
        default_factory=dict,
        description="target expressions and their shares, e.g. {happy: 0.5, neutral: 0.5}; empty: faces as sampled",
    )
    min_confidence: float = Field(0.6, ge=0.0, le=1.0, description="ensemble confidence a target face needs")
    expression_steps: StrictInt = Field(8, ge=0, le=1000, description="steps along the target's direction per candidate")
    expression_step: float = Field(0.5, gt=0.0, le=100.0, description="latent units per step")
    max_candidates: StrictInt = Field(50, ge=1, le=100_000, description="seeds tried per source before its shard fails")

    @model_validator(mode="after")
    def _shares_positive(self) -> SourcesConfig:
        bad = {label: share for label, share in self.expressions.items() if not 0 < share < float("inf")}
        if bad:
            raise ValueError(f"sources.expressions: shares must be positive numbers, got {bad}")
        return self


STYLEGAN_KINDS = ("stylegan2", "stylegan3")


class GeneratorConfig(_Strict):
    """The face generator. `kind: null` takes the profile's default."""

    kind: Literal["dcgan", "stylegan2", "stylegan3"] | None = None
    checkpoint: str | None = Field(None, description="weights file; null uses the profile's asset")
    truncation_psi: float = Field(1.0, ge=0.0, le=1.0, description="StyleGAN truncation towards the mean w")
    class_index: int | None = Field(
        None, ge=0, description="class a conditional StyleGAN generator renders (one-hot c); null for unconditional ones"
    )


class ScoringConfig(_Strict):
    """Which scores each face gets; see `pipeline.scoring`."""

    enabled: bool = Field(True, description="score faces (emotion, identity, landmarks, detection, attributes)")
    attributes: bool = Field(True, description="also score gender and age (with the `age_gender` model)")
    age_gender: AgeGenderModel = Field(
        "faceapi",
        description="gender and age scorer: faceapi (face-api.js's network; gender ROC AUC 0.998, young-vs-not 0.85 on "
        "human-labelled photos, docs/attributes.md) or adience (the Adience nets that runs before it used)",
    )
    emotion: Literal["native", "deepface"] | None = Field(
        None, description="emotion model; null: native mini-Xception on demo, deepface on ffhq"
    )
    identity: Literal["native", "insightface"] | None = Field(
        None, description="identity model; null: native SFace on demo, insightface ArcFace on ffhq"
    )
    precision: Precision = Field(
        "float32",
        description="number format of the torch classifiers (emotion, identity, Adience); FaceMesh landmarks and "
        "detection stay float32. bfloat16: CPUs with AVX512-BF16 or AMX, and GPUs; float16: GPUs only",
    )


EditMethod = Literal["linear", "linear_projected", "editor", "editor_hfld", "refined", "editor_preserve", "refined_preserve"]
EditableAttribute = Literal["gender", "age", "hair_lightness", "hair_redness", "skin_lightness", "yaw"]
EDITABLE_ATTRIBUTES: tuple[str, ...] = get_args(EditableAttribute)


@dataclass(frozen=True)
class PreservationWeights:
    """The weights of one editor's preservation terms for one attribute; 0 turns a term off."""

    landmarks: float = 0.0
    emotion: float = 0.0
    identity: float = 0.0
    expression: float = 0.0

    @property
    def landmarks_only(self) -> bool:
        """Whether this is the plain HFLD objective (lambda 0: the base editor)."""
        return self.emotion == 0 and self.identity == 0 and self.expression == 0

    @property
    def slug(self) -> str:
        """A file-name-safe name, e.g. `l1000-e10-i2-x5`; terms with weight 0 are left out."""
        weights = (("l", self.landmarks), ("e", self.emotion), ("i", self.identity), ("x", self.expression))
        return "-".join(f"{key}{value:g}" for key, value in weights if value) or "l0"


class PreserveConfig(_Strict):
    """One preserving editor (methods editor_preserve, refined_preserve): the terms it trains with.

    The defaults are every term of docs/expression-lock.md together, the editor that with the
    lock changed the ensemble's emotion least at equal attribute success and kept identity best.
    """

    landmarks: float = Field(1000.0, ge=0.0, description="HFLD lambda, on FaceMesh landmarks as `training` sets them")
    emotion: float = Field(
        30.0, ge=0.0, description="weight of KL(source || edit) of the emotion ensemble's distributions, nats"
    )
    identity: float = Field(
        10.0, ge=0.0, description="weight of 1 - SFace cosine of source and edit (on for identity_attributes)"
    )
    expression: float = Field(
        100.0, ge=0.0, description="weight of the mean squared change of 3DDFA_V2's 10 expression coefficients"
    )
    identity_attributes: list[EditableAttribute] = Field(
        default_factory=lambda: [a for a in EDITABLE_ATTRIBUTES if a != "gender"],
        description="attributes whose edits keep the person (the identity term is off for the others)",
    )

    def weights(self, attribute: str) -> PreservationWeights:
        """The weights for one attribute's editor."""
        identity = self.identity if attribute in self.identity_attributes else 0.0
        return PreservationWeights(self.landmarks, self.emotion, identity, self.expression)


class LockConfig(_Strict):
    """The per-edit lock: several candidates per edit, the one that changes the expression least."""

    candidates: StrictInt = Field(
        5, ge=1, le=64, description="candidates per edit; 1 turns the lock off (docs/expression-lock.md: 5)"
    )
    scales: tuple[float, float] = Field(
        (0.5, 1.5), description="candidate strengths span these multiples of the edit's strength"
    )
    max_change: float = Field(
        0.05, ge=0.0, le=1.0, description="emotion JS (bits) up to which an edit counts as expression-locked"
    )

    @model_validator(mode="after")
    def _scales_ordered(self) -> LockConfig:
        low, high = self.scales
        if not 0 < low <= 1 <= high:
            raise ValueError(f"edits.lock.scales: expected 0 < low <= 1 <= high, got {list(self.scales)}")
        return self


class DiscoveryConfig(_Strict):
    """Direction discovery: scored samples, one linear direction per attribute (InterFaceGAN)."""

    samples: StrictInt = Field(20_000, ge=100, le=10_000_000, description="latents sampled and scored")
    first_seed: StrictInt = Field(10_000_000, ge=0, lt=2**62, description="seeds kept apart from the sources'")
    shard_size: StrictInt = Field(1_000, ge=1, description="samples per resumable shard")
    confident_fraction: float = Field(0.3, gt=0, le=0.5, description="top and bottom share used to fit each direction")
    project_out: list[EmotionLabel] = Field(
        default_factory=lambda: ["happy", "surprise"],
        description="emotion directions removed by conditional projection (linear_projected)",
    )


class TrainingConfig(_Strict):
    """Latent editor training (Latent Transformer loss plus lambda * HFLD)."""

    steps: StrictInt = Field(300, ge=1, le=1_000_000)
    batch_size: StrictInt = Field(32, ge=2, le=4096)
    hfld_fraction: float = Field(0.25, gt=0, le=1, description="share of each batch rendered for HFLD")
    landmarks: Literal["all", "expression"] = Field("expression", description="HFLD points: all 468, or lips+eyes+brows")
    align: bool = Field(True, description="similarity-align edited landmarks to the source before HFLD")
    classifier_epochs: StrictInt = Field(30, ge=1, le=1000)


class EditsConfig(_Strict):
    """Which edits every source gets, and where directions and editors live."""

    directory: str = Field("models/demo", description="discover and train-editor write here; generate reads")
    attributes: list[EditableAttribute] = Field(default_factory=list, description="attributes to edit")
    strengths: list[float] = Field(default_factory=lambda: [3.0, 6.0], description="edit strengths (latent units)")
    methods: list[EditMethod] = Field(
        default_factory=lambda: ["editor_preserve"],
        description="editor_preserve with the lock: the least emotion change at equal success in docs/expression-lock.md",
    )
    hfld_lambdas: list[float] = Field(
        default_factory=lambda: [1000.0],
        description="lambdas of the editor_hfld and refined methods, one edit each; 1000 was the best "
        "trade-off of the gender sweep in docs/lambda-sweep.md",
    )
    refine_steps: StrictInt = Field(20, ge=1, le=10_000, description="optimiser steps of HFLD refinement")
    preserve: list[PreserveConfig] = Field(
        default_factory=lambda: [PreserveConfig()],
        description="editors of the editor_preserve and refined_preserve methods, one edit each",
    )
    lock: LockConfig = LockConfig()
    layers: dict[EditableAttribute, list[int]] = Field(
        default_factory=dict,
        description="W+ layers an attribute's edits may move, e.g. {hair_lightness: [8, 9, 10]}; others move all",
    )
    direction_files: dict[str, str] = Field(
        default_factory=dict,
        description="user-supplied directions by name (InterFaceGAN .npy boundaries or exprlock .safetensors), "
        "used instead of the discovered ones",
    )

    @model_validator(mode="after")
    def _lambdas_positive(self) -> EditsConfig:
        if any(value <= 0 for value in self.hfld_lambdas):
            raise ValueError("edits.hfld_lambdas: expected positive values (lambda 0 is the `editor` method)")
        if any(value <= 0 for value in self.strengths):
            raise ValueError("edits.strengths: expected positive values; the edit's sign follows each source")
        empty = [name for name in ("strengths", "methods") if self.attributes and not getattr(self, name)]
        if empty:
            raise ValueError(f"edits.{empty[0]}: is empty, but edits.attributes are set; give at least one or drop the attributes")
        if _PRESERVE_METHODS & set(self.methods) and not self.preserve:
            raise ValueError("edits.preserve: the editor_preserve and refined_preserve methods need at least one entry")
        if any(entry.landmarks == entry.emotion == entry.identity == entry.expression == 0 for entry in self.preserve):
            raise ValueError("edits.preserve: an entry with every weight 0 is the base editor; use the `editor` method")
        return self


class RunConfig(_Strict):
    """Everything a `generate` run needs."""

    profile: Literal["demo", "ffhq"] = "demo"
    sources: SourcesConfig = SourcesConfig()
    generator: GeneratorConfig = GeneratorConfig()
    scoring: ScoringConfig = ScoringConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    training: TrainingConfig = TrainingConfig()
    edits: EditsConfig = EditsConfig()
    batch_size: int | Literal["auto"] = Field(
        "auto",
        description="images per model call; auto: 32 on the CPU, 128 on a GPU. A batch that runs a GPU out of "
        "memory is halved until it fits",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    base_dir: str | None = Field(
        None,
        description="folder that relative paths (generator.checkpoint, edits.directory, edits.direction_files) "
        "resolve against; set from the config file's folder when loaded from a file, else the working directory",
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size_in_range(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and 1 <= value <= 4096):
            return value
        raise ValueError(f"batch_size: expected a whole number from 1 to 4096, or 'auto' (got {value!r})")

    @model_validator(mode="after")
    def _generator_fits_profile(self) -> RunConfig:
        kind = self.generator_kind
        if kind in STYLEGAN_KINDS and not self.generator.checkpoint:
            raise ValueError("generator.checkpoint: a StyleGAN generator needs a checkpoint path (.pt, .pkl or .safetensors)")
        if self.profile == "ffhq" and kind not in STYLEGAN_KINDS:
            raise ValueError("generator.kind: the ffhq profile uses a StyleGAN2 or StyleGAN3 generator")
        if kind not in STYLEGAN_KINDS and self.generator.class_index is not None:
            raise ValueError("generator.class_index: only conditional StyleGAN generators take a class; remove it")
        if self.edits.attributes and not self.scoring.enabled:
            raise ValueError("scoring.enabled: edits need scores (each edit's direction follows its source's score)")
        if self.scoring.precision == "float16" and self.device == "cpu":
            raise ValueError("scoring.precision: float16 runs only on CUDA; use bfloat16 or float32 on the CPU")
        if self.sources.expressions and not self.scoring.enabled:
            raise ValueError("scoring.enabled: target expressions need the emotion ensemble's scores")
        return self

    def resolve(self, path: str) -> Path:
        """A path of the config as the run uses it: relative ones start at `base_dir`."""
        return Path(self.base_dir or "") / Path(path).expanduser()

    @property
    def models_dir(self) -> Path:
        """`edits.directory`, resolved."""
        return self.resolve(self.edits.directory)

    @property
    def checkpoint_path(self) -> Path | None:
        """`generator.checkpoint`, resolved; None for the profile's asset."""
        return self.resolve(self.generator.checkpoint) if self.generator.checkpoint else None

    @property
    def generator_kind(self) -> str:
        return self.generator.kind or ("stylegan2" if self.profile == "ffhq" else "dcgan")

    @property
    def emotion_backend(self) -> str:
        return self.scoring.emotion or ("deepface" if self.profile == "ffhq" else "native")

    @property
    def identity_backend(self) -> str:
        return self.scoring.identity or ("insightface" if self.profile == "ffhq" else "native")

    def scorer_settings(self, device: str) -> tuple[str, bool, str, str, str, str]:
        """The arguments of `pipeline.scoring.load_scorer` for this run on `device`."""
        scoring = self.scoring
        return device, scoring.attributes, self.emotion_backend, self.identity_backend, scoring.precision, scoring.age_gender

    @property
    def run_id(self) -> str:
        identity = self.model_dump(mode="json", exclude=_EXECUTION_FIELDS)
        if not self.sources.expressions:
            for name in _EXPRESSION_FIELDS:
                del identity["sources"][name]
        if not self.edits.attributes or not _PRESERVE_METHODS & set(self.edits.methods):
            del identity["edits"]["preserve"]
        if not self.edits.attributes or self.edits.lock.candidates == 1:
            del identity["edits"]["lock"]
        if not self.edits.layers:
            del identity["edits"]["layers"]
        if self.scoring.precision == "float32":
            del identity["scoring"]["precision"]
        if self.scoring.age_gender == "adience" or not self.scoring.attributes:
            del identity["scoring"]["age_gender"]
        identity["generator"]["kind"] = self.generator_kind
        identity["scoring"].update(emotion=self.emotion_backend, identity=self.identity_backend)
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"{self.profile}-{digest[:12]}"

    def batch_size_on(self, device_type: str) -> int:
        """`batch_size` for a device type ("cpu" or "cuda"), "auto" resolved: two CPU cores gain
        nothing from batches above 32, and a GPU needs larger ones to be kept busy."""
        if self.batch_size != "auto":
            return self.batch_size
        return AUTO_BATCH_SIZE["cuda" if device_type == "cuda" else "cpu"]

    @property
    def seeds(self) -> range:
        return range(self.sources.first_seed, self.sources.first_seed + self.sources.count)


def parse_config(data: Any, *, source: str = "config") -> RunConfig:
    """Validate a mapping; errors become one `ConfigError` line naming each bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error)}") from None


def with_device(config: RunConfig, device: str | None) -> RunConfig:
    """The config with its device replaced (validated again); the run id stays the same."""
    if device is None:
        return config
    return parse_config({**config.model_dump(mode="json"), "device": device}, source="device parameter")


SMALLEST_CONFIG = "{profile: demo, sources: {count: 8}}"


class _ConfigLoader(yaml.SafeLoader):
    """YAML without aliases (an alias bomb is refused at its first `*`) or repeated keys."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"YAML aliases (*name) are not allowed in a config (line {mark.line + 1})")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path) -> RunConfig:
    """Read and validate a YAML (.yaml, .yml) or TOML (.toml) run config: UTF-8, not empty,
    without repeated keys or YAML aliases. Relative paths in it start at the file's folder, so
    the config means the same from any working directory."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save the config as UTF-8") from None
    kind = "TOML" if path.suffix == ".toml" else "YAML"
    try:
        data = tomllib.loads(text) if kind == "TOML" else yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (safe loader)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: not valid {kind} ({_one_line(error)})") from None
    if not data:
        raise ConfigError(f"{path}: the config is empty; the smallest valid config is `{SMALLEST_CONFIG}`")
    if isinstance(data, dict) and "base_dir" in data:
        raise ConfigError(f"{path}: base_dir: set from the config file's folder, not in the file; remove it")
    if isinstance(data, dict):
        data = {**data, "base_dir": str(path.absolute().parent)}
    return parse_config(data, source=str(path))


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown key{_suggestion(item['loc'])}")
        elif item["type"] == "value_error":
            parts.append(str(item["ctx"]["error"]))
        else:
            parts.append(f"{where}: {item['msg'].lower()} (got {item['input']!r})")
    return "; ".join(parts)


def _suggestion(location: tuple[str | int, ...]) -> str:
    """'; did you mean X?' for an unknown key that is a near miss of a field beside it."""
    model: Any = RunConfig
    for part in location[:-1]:
        if isinstance(part, int):  # an item of a list of models
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return ""
        model = _model_in(field.annotation)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    close = difflib.get_close_matches(str(location[-1]), [n for n in model.model_fields if n != "base_dir"], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _model_in(annotation: Any) -> Any:
    """The config model an annotation holds: itself, or the item of a list or tuple of models."""
    if isinstance(annotation, type):
        return annotation
    models = [arg for arg in get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)]
    return models[0] if models else None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
