"""The manifest schema: one row per (source face, edit).

Version 1.0 holds the source columns. Version 1.1 adds, all nullable, the edit (attribute,
strength, editor, lambda, edited latent and image) and the scores of both faces: emotion
probabilities and label, flip flag, Jensen-Shannon divergence, identity cosine, landmark NME,
attribute scores, face detection, and the provenance of every model that produced a score. A
run without edits writes one row per source with the edit columns null. Versions 1.2 to 1.6 add
nullable columns (see the comments at their fields); 1.4 adds `split`, the seed's split. Shards of
1.3 and earlier have no `split`: readers that need it compute it from the seed with
`pipeline.storage.splits.assign_splits`, as the writer does. 1.5 adds `generator_class`, the class a
conditional generator rendered (null for unconditional generators and in older shards); 1.6
adds `edit_seconds`, what making the edit cost, so reports can price each method.

Every field carries a description (and unit where one applies) in its metadata; the schema
metadata carries the schema version and a creator record. Column names are the constants of
`Col`, so writers and loaders never spell them twice. Versioning: a new nullable column is a
minor bump (old files stay readable), anything else is a major bump with a reader for the old
version.
"""

from __future__ import annotations

import json

import pyarrow as pa

CURRENT_VERSION = "1.6"
SCHEMA_METADATA_KEY = b"exprlock"


class Col:
    """Manifest column names."""

    RUN_ID = "run_id"
    SHARD = "shard"
    SEED = "seed"
    LATENT = "latent"
    LATENT_SHAPE = "latent_shape"
    GENERATOR = "generator"
    GENERATOR_SHA256 = "generator_sha256"
    GENERATOR_CLASS = "generator_class"
    EDIT_SECONDS = "edit_seconds"
    IMAGE_SOURCE = "image_source"
    IMAGE_SOURCE_SHA256 = "image_source_sha256"
    SCHEMA_VERSION = "schema_version"
    CREATED_AT = "created_at"
    ATTRIBUTE = "attribute"
    STRENGTH = "strength"
    EDITOR = "editor"
    HFLD_LAMBDA = "hfld_lambda"
    LATENT_EDIT = "latent_edit"
    IMAGE_EDIT = "image_edit"
    IMAGE_EDIT_SHA256 = "image_edit_sha256"
    EMOTION_SOURCE = "emotion_source"
    EMOTION_EDIT = "emotion_edit"
    EMOTION_PROBS_SOURCE = "emotion_probs_source"
    EMOTION_PROBS_EDIT = "emotion_probs_edit"
    EMOTION_FLIPPED = "emotion_flipped"
    EMOTION_JS = "emotion_js"
    IDENTITY_COSINE = "identity_cosine"
    LANDMARK_NME = "landmark_nme"
    ATTRIBUTE_SCORE_SOURCE = "attribute_score_source"
    ATTRIBUTE_SCORE_EDIT = "attribute_score_edit"
    ATTRIBUTE_REACHED = "attribute_reached"
    ATTRIBUTES_SOURCE = "attributes_source"
    ATTRIBUTES_EDIT = "attributes_edit"
    FACE_DETECTED_SOURCE = "face_detected_source"
    FACE_DETECTED_EDIT = "face_detected_edit"
    FACE_SCORE_SOURCE = "face_score_source"
    FACE_SCORE_EDIT = "face_score_edit"
    MODELS = "models"
    EMOTION_PROBS_FER_SOURCE = "emotion_probs_fer_source"
    EMOTION_PROBS_FER_EDIT = "emotion_probs_fer_edit"
    EMOTION_PROBS_FACEAPI_SOURCE = "emotion_probs_faceapi_source"
    EMOTION_PROBS_FACEAPI_EDIT = "emotion_probs_faceapi_edit"
    EMOTION_CONFIDENCE_SOURCE = "emotion_confidence_source"
    EMOTION_CONFIDENCE_EDIT = "emotion_confidence_edit"
    EMOTION_AGREEMENT_SOURCE = "emotion_agreement_source"
    EMOTION_AGREEMENT_EDIT = "emotion_agreement_edit"
    SEED_ORIGINAL = "seed_original"
    EXPRESSION_TARGET = "expression_target"
    EXPRESSION_STEPS = "expression_steps"
    EXPRESSION_REJECTED = "expression_rejected"
    PRESERVATION = "preservation"
    LOCK_CANDIDATES = "lock_candidates"
    LOCK_CHOSEN = "lock_chosen"
    LOCK_STRENGTH = "lock_strength"
    EXPRESSION_LOCKED = "expression_locked"
    SPLIT = "split"


EMOTION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""FER2013 class order of every `emotion_probs_*` list."""

ATTRIBUTE_FIELDS = (
    ("p_female", "Probability of female by the gender model the row's `models` names (role gender), 0-1"),
    ("age", "Age in years by the model the row's `models` names (role age): face-api's estimate, or Adience's "
     "expected age over its 8 buckets"),
    ("yaw", "Head yaw from FaceMesh landmarks, degrees"),
    ("pitch", "Head pitch from FaceMesh landmarks, degrees"),
    ("roll", "Head roll from FaceMesh landmarks, degrees"),
    ("hair_lightness", "CIELAB L* of the hair region, 0-100"),
    ("hair_redness", "CIELAB a* of the hair region"),
    ("hair_yellowness", "CIELAB b* of the hair region"),
    ("skin_lightness", "CIELAB L* of the skin region, 0-100"),
)
"""The scalar attribute scores, in the order of the `attributes_*` struct fields."""


def _field(name: str, dtype: pa.DataType, description: str, *, nullable: bool = False) -> pa.Field:
    return pa.field(name, dtype, nullable=nullable, metadata={b"description": description.encode()})


_FIELDS_V1 = (
    _field(Col.RUN_ID, pa.string(), "Run identifier, derived from the run's config content"),
    _field(Col.SHARD, pa.int32(), "Index of the shard of seeds this row was produced in"),
    _field(Col.SEED, pa.int64(), "Integer seed the source latent was drawn from"),
    _field(Col.LATENT, pa.list_(pa.float32()), "Source latent, flattened in C order"),
    _field(Col.LATENT_SHAPE, pa.list_(pa.int32()), "Per-sample shape of the latent, e.g. [100] or [18, 512]"),
    _field(Col.GENERATOR, pa.string(), "Generator kind and weights name, e.g. dcgan:dcgan-digiface"),
    _field(Col.GENERATOR_SHA256, pa.string(), "SHA-256 of the generator weights file"),
    _field(Col.IMAGE_SOURCE, pa.string(), "PNG of the source face, relative to the run directory"),
    _field(Col.IMAGE_SOURCE_SHA256, pa.string(), "SHA-256 of the source PNG file bytes"),
    _field(Col.SCHEMA_VERSION, pa.string(), "Manifest schema version of this row"),
    _field(Col.CREATED_AT, pa.timestamp("us", tz="UTC"), "When the row's shard was written (UTC)"),
)

_ATTRIBUTES = pa.struct(
    [pa.field(name, pa.float32(), metadata={b"description": text.encode()}) for name, text in ATTRIBUTE_FIELDS]
)
_MODEL_RECORD = pa.struct(
    [
        pa.field("role", pa.string()),
        pa.field("name", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("licence", pa.string()),
    ]
)
_PROBS = pa.list_(pa.float32(), len(EMOTION_LABELS))

_FIELDS_V1_1 = _FIELDS_V1 + (
    _field(Col.ATTRIBUTE, pa.string(), "Edited attribute, e.g. age; null for a source-only row", nullable=True),
    _field(Col.STRENGTH, pa.float32(), "Edit strength along the attribute (latent units)", nullable=True),
    _field(Col.EDITOR, pa.string(), "Edit method: linear, linear_projected, editor, editor_hfld, refined", nullable=True),
    _field(Col.HFLD_LAMBDA, pa.float32(), "Weight of the HFLD landmark loss the edit was made with", nullable=True),
    _field(Col.LATENT_EDIT, pa.list_(pa.float32()), "Edited latent, flattened in C order", nullable=True),
    _field(Col.IMAGE_EDIT, pa.string(), "PNG of the edited face, relative to the run directory", nullable=True),
    _field(Col.IMAGE_EDIT_SHA256, pa.string(), "SHA-256 of the edited PNG file bytes", nullable=True),
    _field(Col.EMOTION_SOURCE, pa.string(), "Top FER2013 emotion of the source face", nullable=True),
    _field(Col.EMOTION_EDIT, pa.string(), "Top FER2013 emotion of the edited face", nullable=True),
    _field(Col.EMOTION_PROBS_SOURCE, _PROBS, "Emotion probabilities of the source, EMOTION_LABELS order", nullable=True),
    _field(Col.EMOTION_PROBS_EDIT, _PROBS, "Emotion probabilities of the edit, EMOTION_LABELS order", nullable=True),
    _field(Col.EMOTION_FLIPPED, pa.bool_(), "Top emotion of the edit differs from the source's", nullable=True),
    _field(Col.EMOTION_JS, pa.float32(), "Jensen-Shannon divergence of the two emotion distributions, bits, 0-1", nullable=True),
    _field(Col.IDENTITY_COSINE, pa.float32(), "Cosine similarity of the SFace embeddings of source and edit", nullable=True),
    _field(Col.LANDMARK_NME, pa.float32(), "Mean FaceMesh landmark distance / inter-ocular distance", nullable=True),
    _field(Col.ATTRIBUTE_SCORE_SOURCE, pa.float32(), "Score of the edited attribute on the source", nullable=True),
    _field(Col.ATTRIBUTE_SCORE_EDIT, pa.float32(), "Score of the edited attribute on the edit", nullable=True),
    _field(
        Col.ATTRIBUTE_REACHED,
        pa.bool_(),
        "The edit crossed the attribute's success threshold in the direction it set out to",
        nullable=True,
    ),
    _field(Col.ATTRIBUTES_SOURCE, _ATTRIBUTES, "All attribute scores of the source face", nullable=True),
    _field(Col.ATTRIBUTES_EDIT, _ATTRIBUTES, "All attribute scores of the edited face", nullable=True),
    _field(Col.FACE_DETECTED_SOURCE, pa.bool_(), "YuNet found a face in the source", nullable=True),
    _field(Col.FACE_DETECTED_EDIT, pa.bool_(), "YuNet found a face in the edit", nullable=True),
    _field(Col.FACE_SCORE_SOURCE, pa.float32(), "YuNet confidence of the best source face, 0 when none", nullable=True),
    _field(Col.FACE_SCORE_EDIT, pa.float32(), "YuNet confidence of the best edited face, 0 when none", nullable=True),
    _field(Col.MODELS, pa.list_(_MODEL_RECORD), "Models behind the scores: role, asset name, SHA-256, licence", nullable=True),
)

# 1.2: the emotion columns of 1.1 now describe the ensemble; the members' outputs are added.
_ENSEMBLE_MEANING = {
    Col.EMOTION_SOURCE: "Top emotion of the source face by the emotion ensemble",
    Col.EMOTION_EDIT: "Top emotion of the edited face by the emotion ensemble",
    Col.EMOTION_PROBS_SOURCE: "Ensemble emotion probabilities of the source (mean of the models), EMOTION_LABELS order",
    Col.EMOTION_PROBS_EDIT: "Ensemble emotion probabilities of the edit (mean of the models), EMOTION_LABELS order",
    Col.EMOTION_FLIPPED: "The ensemble's top emotion of the edit differs from the source's",
    Col.EMOTION_JS: "Jensen-Shannon divergence of the two ensemble distributions, bits, 0-1",
}
_FIELDS_V1_2 = tuple(
    _field(f.name, f.type, _ENSEMBLE_MEANING[f.name], nullable=f.nullable) if f.name in _ENSEMBLE_MEANING else f
    for f in _FIELDS_V1_1
) + (
    _field(Col.EMOTION_PROBS_FER_SOURCE, _PROBS, "FER2013 model's emotion probabilities of the source", nullable=True),
    _field(Col.EMOTION_PROBS_FER_EDIT, _PROBS, "FER2013 model's emotion probabilities of the edit", nullable=True),
    _field(Col.EMOTION_PROBS_FACEAPI_SOURCE, _PROBS, "face-api.js expression probabilities of the source, EMOTION_LABELS order", nullable=True),
    _field(Col.EMOTION_PROBS_FACEAPI_EDIT, _PROBS, "face-api.js expression probabilities of the edit, EMOTION_LABELS order", nullable=True),
    _field(Col.EMOTION_CONFIDENCE_SOURCE, pa.float32(), "The ensemble's top probability for the source, 0-1", nullable=True),
    _field(Col.EMOTION_CONFIDENCE_EDIT, pa.float32(), "The ensemble's top probability for the edit, 0-1", nullable=True),
    _field(Col.EMOTION_AGREEMENT_SOURCE, pa.bool_(), "Every ensemble model names the same top emotion for the source", nullable=True),
    _field(Col.EMOTION_AGREEMENT_EDIT, pa.bool_(), "Every ensemble model names the same top emotion for the edit", nullable=True),
    _field(Col.SEED_ORIGINAL, pa.int64(), "With target expressions: the source slot's own seed, replaced by `seed` when rejected", nullable=True),
    _field(Col.EXPRESSION_TARGET, pa.string(), "With target expressions: the expression the source was steered to", nullable=True),
    _field(Col.EXPRESSION_STEPS, pa.int32(), "With target expressions: steps along the target's direction (0: shown already)", nullable=True),
    _field(Col.EXPRESSION_REJECTED, pa.int32(), "With target expressions: candidate seeds rejected before this one", nullable=True),
)

# 1.3: the weights of the editor's preservation terms, and the per-edit lock.
_PRESERVATION = pa.struct(
    [
        pa.field("landmarks", pa.float32(), metadata={b"description": b"HFLD lambda (FaceMesh landmark shift)"}),
        pa.field("emotion", pa.float32(), metadata={b"description": b"Weight of KL(source || edit) of the emotion ensemble"}),
        pa.field("identity", pa.float32(), metadata={b"description": b"Weight of 1 - SFace cosine of source and edit"}),
        pa.field("expression", pa.float32(), metadata={b"description": b"Weight of the squared change of 3DDFA_V2's expression coefficients"}),
    ]
)
_FIELDS_V1_3 = _FIELDS_V1_2 + (
    _field(Col.PRESERVATION, _PRESERVATION, "Weights of the preservation terms the edit's editor was trained with", nullable=True),
    _field(Col.LOCK_CANDIDATES, pa.int32(), "With the lock: candidates rendered for this edit", nullable=True),
    _field(Col.LOCK_CHOSEN, pa.int32(), "With the lock: index of the kept candidate, weakest first", nullable=True),
    _field(Col.LOCK_STRENGTH, pa.float32(), "With the lock: strength of the kept candidate (latent units)", nullable=True),
    _field(Col.EXPRESSION_LOCKED, pa.bool_(), "With the lock: the kept edit's emotion JS is within edits.lock.max_change", nullable=True),
)

# 1.4: the seed's split, so every engine reading the Parquet sees the same split.
_FIELDS_V1_4 = _FIELDS_V1_3 + (
    _field(
        Col.SPLIT,
        pa.string(),
        "train, validation or test: the split of the row's seed (pipeline.storage.splits, default fractions and salt)",
        nullable=True,
    ),
)

# 1.5: the class a conditional generator rendered the row's faces in.
_FIELDS_V1_5 = _FIELDS_V1_4 + (
    _field(
        Col.GENERATOR_CLASS,
        pa.int32(),
        "Class index (one-hot c) of a conditional generator, from generator.class_index; null when unconditional",
        nullable=True,
    ),
)

# 1.6: the wall time an edit cost, so a report can price each method.
_FIELDS_V1_6 = _FIELDS_V1_5 + (
    _field(
        Col.EDIT_SECONDS,
        pa.float32(),
        "Wall seconds to make this edit: the edit itself, every lock candidate's render and scores, and the kept"
        " image's scores; a batch's time shared equally by its rows",
        nullable=True,
    ),
)

_SCHEMAS = {
    "1.0": _FIELDS_V1,
    "1.1": _FIELDS_V1_1,
    "1.2": _FIELDS_V1_2,
    "1.3": _FIELDS_V1_3,
    "1.4": _FIELDS_V1_4,
    "1.5": _FIELDS_V1_5,
    "1.6": _FIELDS_V1_6,
}
COLUMNS = tuple(field.name for field in _SCHEMAS[CURRENT_VERSION])


def schema_for_version(version: str) -> pa.Schema:
    """The bare schema (fields only) of a known version; KeyError for unknown ones."""
    return pa.schema(_SCHEMAS[version])


PROBABILITY_COLUMNS = (
    Col.EMOTION_PROBS_SOURCE, Col.EMOTION_PROBS_EDIT, Col.EMOTION_PROBS_FER_SOURCE, Col.EMOTION_PROBS_FER_EDIT,
    Col.EMOTION_PROBS_FACEAPI_SOURCE, Col.EMOTION_PROBS_FACEAPI_EDIT,
)  # fmt: skip
LABEL_COLUMNS = (Col.EMOTION_SOURCE, Col.EMOTION_EDIT, Col.EXPRESSION_TARGET)


def manifest_schema(*, run_id: str, creator_version: str) -> pa.Schema:
    """The current schema with its metadata: version, creator, and what the numbers mean.

    The record names the class order of every probability column and the vocabulary of every
    label column, so a shard read on its own says what its seven numbers are; the `pandas`
    entry (`pandas_metadata`) keeps nullable integers and booleans so in pandas.
    """
    record = {
        "schema_version": CURRENT_VERSION,
        "creator": f"exprlock {creator_version}",
        "run_id": run_id,
        "class_order": dict.fromkeys(PROBABILITY_COLUMNS, list(EMOTION_LABELS)),
        "label_vocabulary": dict.fromkeys(LABEL_COLUMNS, list(EMOTION_LABELS)),
    }
    schema = schema_for_version(CURRENT_VERSION)
    return schema.with_metadata({SCHEMA_METADATA_KEY: json.dumps(record).encode(), **pandas_metadata(schema)})


def pandas_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """pandas' own schema entry for the nullable integer and boolean columns, naming its nullable
    dtypes (`Int32`, `boolean`), so `pandas.read_parquet` keeps them integer and boolean where a
    null would otherwise turn them into floats and objects. Readers other than pandas ignore it."""
    names = {pa.int8(): "Int8", pa.int16(): "Int16", pa.int32(): "Int32", pa.int64(): "Int64", pa.bool_(): "boolean"}
    columns = [
        {"name": f.name, "field_name": f.name, "pandas_type": "boolean" if f.type == pa.bool_() else str(f.type),
         "numpy_type": names[f.type], "metadata": None}
        for f in schema if f.nullable and f.type in names
    ]  # fmt: skip
    return {b"pandas": json.dumps({"index_columns": [], "column_indexes": [], "columns": columns}).encode()}
