"""One exception family for everything exprlock refuses.

Each error is a one-line message naming the thing that is wrong (file, field, asset, column),
what was expected, what was found and how to fix it. The CLI prints the message without a
traceback and exits with the error's `exit_code`: 2 for bad input (config, files, assets), 1 for
a run that failed while working; tests catch the exception types.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ExprlockError(Exception):
    """Base of every error exprlock raises on bad input or a missing resource."""

    exit_code = 2  # the command line's status: bad input the user can correct


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


class RunError(ExprlockError):
    """Work failed while running (a flow run it waited for did not complete): not bad input."""

    exit_code = 1


# What the user can do about the operating-system errors a run meets while it writes.
_OS_REMEDIES = {
    errno.ENOSPC: "no space left on the device; free space there or choose another --out",
    errno.EDQUOT: "disk quota exceeded; free space there or choose another --out",
    errno.EROFS: "read-only file system; choose another --out on a writable one",
    errno.EACCES: "permission denied; make it writable or choose another --out",
    errno.EPERM: "operation not permitted; make it writable or choose another --out",
}


def os_error_line(error: OSError) -> str:
    """One line naming the path and what to do, for an operating-system error during a run."""
    where = error.filename or "a file of the run"
    remedy = _OS_REMEDIES.get(error.errno) if error.errno is not None else None
    return f"{where}: {remedy}" if remedy else f"{where}: {error.strerror or error}"


def is_deterministic(error: BaseException | None) -> bool:
    """Whether running the same work again would fail the same way (so retrying is pointless)."""
    if isinstance(error, ExprlockError):
        return True
    return isinstance(error, OSError) and error.errno in _OS_REMEDIES


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an operating-system error raised while writing `path` that path, when it has none
    (a full disk reports `write()` failures without a file name)."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
