"""The Parquet manifest schema: declared once, versioned, validated on write and read."""

from data_schemas.manifest import (
    ATTRIBUTE_FIELDS,
    COLUMNS,
    CURRENT_VERSION,
    SCHEMA_METADATA_KEY,
    EMOTION_LABELS,
    LABEL_COLUMNS,
    PROBABILITY_COLUMNS,
    Col,
    manifest_schema,
    pandas_metadata,
    schema_for_version,
)

__all__ = [
    "ATTRIBUTE_FIELDS",
    "COLUMNS",
    "CURRENT_VERSION",
    "SCHEMA_METADATA_KEY",
    "Col",
    "EMOTION_LABELS",
    "LABEL_COLUMNS",
    "PROBABILITY_COLUMNS",
    "manifest_schema",
    "pandas_metadata",
    "schema_for_version",
]
