"""One exception family for everything exprlock refuses.

Each error is a one-line message naming the thing that is wrong (file, field, asset, column),
what was expected, what was found and how to fix it. The CLI prints the message and exits
non-zero without a traceback; tests catch the exception types.
"""

from __future__ import annotations


class ExprlockError(Exception):
    """Base of every error exprlock raises on bad input or a missing resource."""


class ConfigError(ExprlockError):
    """A run configuration is malformed: unknown key, wrong type, value out of range."""


class AssetError(ExprlockError):
    """A model asset is unknown, missing from the cache, or fails its digest check."""


class CheckpointError(ExprlockError):
    """A generator checkpoint cannot be read safely or does not match the architecture."""


class ManifestError(ExprlockError):
    """A Parquet manifest does not match the schema its reader expects."""


class ImageError(ExprlockError):
    """An input image has the wrong shape, dtype or value range."""
