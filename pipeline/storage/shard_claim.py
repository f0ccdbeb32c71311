"""Shard ownership: which shards a worker takes, and an exclusive claim so each is written once.

Selection. A run's shards are numbered `0 .. n-1` (`pipeline.storage.layout.shard_seeds`). A worker is
given a spec such as ``"0-9"`` or ``"0-3,8"`` (`parse_shard_spec`); a parent that fans a run out
to N workers gives each a contiguous range (`split_shards`).

Claims. Two workers can still race for one shard (overlapping ranges, a retried flow run, a
worker restarted while its old process lives on). Before rendering, a worker creates a claim
file next to the shard on the shared filesystem, ``.shard-00003.parquet.claim``, with
``os.open(O_CREAT | O_EXCL)``: exactly one creator succeeds (atomic on local filesystems and on
NFSv3 and later). The claim records host, pid, start time and a random token; its owner
refreshes the file's mtime from a heartbeat thread and removes it when done. A claim is stale
when its owner ran on this host and its pid is gone or now belongs to a later process, when its
mtime is older than `stale_after` (an owner that died on another machine, or in a container
since replaced, stops its heartbeat), or when it is empty or unreadable for longer than
`EMPTY_CLAIM_GRACE` seconds (its owner died between creating and writing it). `stale_after` is
`$EXPRLOCK_CLAIM_TIMEOUT` seconds, default 120. A stale claim is broken by renaming it to a
unique name first: of two workers that both judge it stale only one rename succeeds, and the
winner checks that it moved the very claim it judged (else it puts the newer claim back).

After winning a claim a worker (`pipeline.stages.shards.generate_shard_once`) checks again that
the shard file does not exist (another worker may have committed it and released its claim in
between), so a shard's rows and images are produced by one worker. The claim file's name starts
with a dot, so manifest readers and dataset discovery never see it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipeline.errors import ConfigError

# A claim whose heartbeat stopped this long ago belongs to a dead owner on another machine.
CLAIM_TIMEOUT_VARIABLE = "EXPRLOCK_CLAIM_TIMEOUT"
DEFAULT_STALE_AFTER = 120.0
DEFAULT_HEARTBEAT = 10.0
# An empty or unreadable claim this old was left by an owner that died while creating it.
EMPTY_CLAIM_GRACE = 5.0

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_shard_spec(spec: str, total: int) -> list[int]:
    """Shard indices named by ``"3"``, ``"0-9"`` (inclusive) or ``"0-3,8"``, sorted, unique.

    >>> parse_shard_spec("0-2,5", 8)
    [0, 1, 2, 5]
    """
    indices: set[int] = set()
    for part in spec.split(","):
        match = _RANGE.match(part)
        if not match:
            raise ConfigError(f"shards: {spec!r} is not a shard range; expected e.g. '3', '0-9' or '0-3,8'")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if first > last or last >= total:
            raise ConfigError(
                f"shards: range {part.strip()!r} is outside this run's shards 0-{total - 1} "
                f"({total} shards); choose indices within it"
            )
        indices.update(range(first, last + 1))
    return sorted(indices)


def split_shards(total: int, parts: int) -> list[str]:
    """`parts` contiguous shard specs of near-equal size covering ``0 .. total-1``.

    >>> split_shards(10, 3)
    ['0-3', '4-6', '7-9']
    """
    if parts < 1:
        raise ConfigError(f"parts: expected at least 1, got {parts}")
    parts = min(parts, total)
    size, extra = divmod(total, parts)
    specs, start = [], 0
    for part in range(parts):
        stop = start + size + (part < extra)
        specs.append(f"{start}-{stop - 1}")
        start = stop
    return specs


@dataclass(frozen=True)
class ClaimOwner:
    """Who holds a claim, as recorded in the claim file."""

    host: str
    pid: int
    token: str
    started: float  # Unix time the claim was made

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"pid {self.pid} on {self.host} since {since}"


def stale_after_setting() -> float:
    """`$EXPRLOCK_CLAIM_TIMEOUT` (seconds without a heartbeat before a claim is stale), else 120."""
    raw = os.environ.get(CLAIM_TIMEOUT_VARIABLE)
    if raw is None:
        return DEFAULT_STALE_AFTER
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 3 * DEFAULT_HEARTBEAT or value == float("inf"):
        raise ConfigError(
            f"{CLAIM_TIMEOUT_VARIABLE}={raw!r}: expected seconds, more than three heartbeats "
            f"({3 * DEFAULT_HEARTBEAT:g}); unset it for the default {DEFAULT_STALE_AFTER:g}"
        )
    return value


def claim_path(target: Path) -> Path:
    """The claim file of `target` (a shard's Parquet path): a dot-file beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.claim")


class Claim:
    """A held claim: refreshed by a heartbeat thread until `release`."""

    def __init__(self, path: Path, owner: ClaimOwner, heartbeat: float) -> None:
        self.path = path
        self.owner = owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat,), daemon=True, name=f"claim {path.name}")
        self._thread.start()
        with _HELD_LOCK:
            _HELD.add(self)

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if _read_owner(self.path) != self.owner:
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the claim file if it is still ours (idempotent)."""
        self._stop.set()
        self._thread.join()
        if _read_owner(self.path) == self.owner:
            self.path.unlink(missing_ok=True)
        with _HELD_LOCK:
            _HELD.discard(self)


# Every claim this process holds or is creating, so that a process being stopped can release
# them even when the thread that made them is interrupted at an arbitrary point.
_HELD: set[Claim] = set()
_CREATING: dict[Path, bytes] = {}  # claim file -> the payload this process writes into it
_HELD_LOCK = threading.Lock()
_STOPPING = threading.Event()


def release_held_claims() -> None:
    """Release every claim this process holds or is creating, and take no new ones: for a
    process stopping while its work may not unwind (a thread interrupted at any point)."""
    _STOPPING.set()
    with _HELD_LOCK:
        held, creating = list(_HELD), dict(_CREATING)
    for claim in held:
        claim.release()
    for path, payload in creating.items():
        if _read_bytes(path) == payload:  # ours, written but not yet held
            path.unlink(missing_ok=True)


def try_claim(
    target: Path, *, stale_after: float | None = None, heartbeat: float = DEFAULT_HEARTBEAT
) -> Claim | ClaimOwner | None:
    """Claim `target`: a `Claim` when won, else the live owner (None when it cannot be read, or
    when this process is stopping)."""
    stale_after = stale_after_setting() if stale_after is None else stale_after
    path = claim_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = ClaimOwner(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex, started=time.time())
    payload = json.dumps({"host": me.host, "pid": me.pid, "token": me.token, "started": me.started}).encode()
    with _HELD_LOCK:
        if _STOPPING.is_set():
            return None
        _CREATING[path] = payload
    try:
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                observed = _read_bytes(path)
                if observed is None:
                    continue  # released between our attempt and the read: try again
                if not _is_stale(path, observed, stale_after):
                    return _parse_owner(observed)
                _break_stale(path, observed)
                continue
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            return Claim(path, me, heartbeat)
        return _read_owner(path)
    finally:
        with _HELD_LOCK:
            _CREATING.pop(path, None)


@contextmanager
def claim(
    target: Path, *, stale_after: float | None = None, heartbeat: float = DEFAULT_HEARTBEAT
) -> Iterator[Claim | ClaimOwner | None]:
    """`try_claim` as a context: a won claim is released on exit, also after an error."""
    held = try_claim(target, stale_after=stale_after, heartbeat=heartbeat)
    try:
        yield held
    finally:
        if isinstance(held, Claim):
            held.release()


def is_held(target: Path) -> bool:
    """Whether a live owner holds `target`'s claim (a stale claim counts as free)."""
    path = claim_path(target)
    observed = _read_bytes(path)
    return observed is not None and not _is_stale(path, observed, stale_after_setting())


def wait_while_held(targets: list[Path], poll: float = 2.0) -> None:
    """Until every target exists or no live owner holds its claim (its owner finished or died)."""
    while any(is_held(target) and not target.exists() for target in targets):
        time.sleep(poll)


def _is_stale(path: Path, observed: bytes, stale_after: float) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > stale_after:
        return True
    owner = _parse_owner(observed)
    if owner is None:
        return age > EMPTY_CLAIM_GRACE
    return owner.host == socket.gethostname() and not _pid_is_owner(owner)


def _break_stale(path: Path, observed: bytes) -> None:
    """Remove the stale claim `observed`, never a newer one that replaced it meanwhile."""
    grave = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return  # another worker broke it first
    try:
        if _read_bytes(grave) != observed:
            # We moved a fresh claim: put it back, unless an even newer one exists.
            with contextlib.suppress(FileExistsError):
                os.link(grave, path)
    finally:
        grave.unlink(missing_ok=True)


def _pid_is_owner(owner: ClaimOwner) -> bool:
    """Whether the claim's pid still runs the process that made it (not a later one reusing it)."""
    try:
        started = psutil.Process(owner.pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return started <= owner.started + 1.0


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _parse_owner(raw: bytes | None) -> ClaimOwner | None:
    try:
        record = json.loads(raw or b"")
        return ClaimOwner(
            host=str(record["host"]), pid=int(record["pid"]), token=str(record["token"]), started=float(record["started"])
        )
    except (ValueError, KeyError, TypeError):
        return None


def _read_owner(path: Path) -> ClaimOwner | None:
    return _parse_owner(_read_bytes(path))
