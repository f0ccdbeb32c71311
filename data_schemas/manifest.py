"""Manifest schema v1: one row per generated source face.

Every field carries a description (and unit where one applies) in its metadata; the schema
metadata carries the schema version and a creator record. Column names are the constants of
`Col`, so writers and loaders never spell them twice. Versioning: a new nullable column is a
minor bump (old files stay readable), anything else is a major bump with a reader for the old
version.
"""

from __future__ import annotations

import json

import pyarrow as pa

CURRENT_VERSION = "1.0"
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
    IMAGE_SOURCE = "image_source"
    IMAGE_SOURCE_SHA256 = "image_source_sha256"
    SCHEMA_VERSION = "schema_version"
    CREATED_AT = "created_at"


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

_SCHEMAS = {"1.0": _FIELDS_V1}
COLUMNS = tuple(field.name for field in _FIELDS_V1)


def schema_for_version(version: str) -> pa.Schema:
    """The bare schema (fields only) of a known version; KeyError for unknown ones."""
    return pa.schema(_SCHEMAS[version])


def manifest_schema(*, run_id: str, creator_version: str) -> pa.Schema:
    """The current schema with its metadata: version and the creator record."""
    record = {"schema_version": CURRENT_VERSION, "creator": f"exprlock {creator_version}", "run_id": run_id}
    return schema_for_version(CURRENT_VERSION).with_metadata({SCHEMA_METADATA_KEY: json.dumps(record).encode()})
