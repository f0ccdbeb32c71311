"""The Parquet manifest schema: declared once, versioned, validated on write and read."""

from data_schemas.manifest import (
    COLUMNS,
    CURRENT_VERSION,
    SCHEMA_METADATA_KEY,
    Col,
    manifest_schema,
    schema_for_version,
)

__all__ = [
    "COLUMNS",
    "CURRENT_VERSION",
    "SCHEMA_METADATA_KEY",
    "Col",
    "manifest_schema",
    "schema_for_version",
]
