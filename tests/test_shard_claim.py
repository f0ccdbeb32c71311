"""Shard selection, exclusive claims, stale-claim recovery, and two processes racing for shards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pipeline.errors import ConfigError
from pipeline.storage.shard_claim import Claim, claim, claim_path, parse_shard_spec, split_shards, stale_after_setting, try_claim

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("3", [3]),  # one shard
        ("0-2", [0, 1, 2]),  # inclusive range
        ("4-5, 0-1 ,5", [0, 1, 4, 5]),  # several parts: sorted, duplicates merged, spaces allowed
        ("9-9", [9]),  # the last shard
    ],
)
def test_shard_specs_name_inclusive_ranges(spec: str, expected: list[int]) -> None:
    assert parse_shard_spec(spec, 10) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0-10", "outside this run's shards 0-9"),  # past the last shard
        ("5-2", "outside this run's shards 0-9"),  # reversed
        ("a-b", "is not a shard range"),
        ("", "is not a shard range"),
    ],
)
def test_bad_shard_specs_are_refused_by_name(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_shard_spec(spec, 10)


@pytest.mark.parametrize(("total", "parts"), [(10, 3), (4, 4), (3, 5), (1, 1), (17, 2)])
def test_split_covers_every_shard_once_in_near_equal_ranges(total: int, parts: int) -> None:
    specs = split_shards(total, parts)
    covered = [index for spec in specs for index in parse_shard_spec(spec, total)]
    assert covered == list(range(total))
    sizes = [len(parse_shard_spec(spec, total)) for spec in specs]
    assert len(specs) == min(parts, total) and max(sizes) - min(sizes) <= 1


def test_a_claim_excludes_others_until_released(tmp_path: Path) -> None:
    target = tmp_path / "shard-00000.parquet"
    first = try_claim(target)
    assert isinstance(first, Claim)
    second = try_claim(target)
    assert second == first.owner and second.host == socket.gethostname() and second.pid == os.getpid()
    assert second.describe().startswith(f"pid {os.getpid()} on {socket.gethostname()} since 20")
    first.release()
    assert not claim_path(target).exists()
    with claim(target) as third:
        assert isinstance(third, Claim)
    assert not claim_path(target).exists()


def _plant(target: Path, *, host: str, pid: int, age: float = 0.0, raw: bytes | None = None, started: float | None = None) -> None:
    path = claim_path(target)
    record = {"host": host, "pid": pid, "token": "old", "started": time.time() if started is None else started}
    path.write_bytes(raw if raw is not None else json.dumps(record).encode())
    if age:
        past = time.time() - age
        os.utime(path, (past, past))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


BEFORE_THIS_PROCESS = psutil.Process().create_time() - 100


@pytest.mark.parametrize(
    ("host", "pid", "age", "raw", "started", "taken"),
    [
        (socket.gethostname(), None, 0.0, None, None, True),  # owner on this host has exited
        (socket.gethostname(), os.getpid(), 0.0, None, None, False),  # owner on this host is alive
        (socket.gethostname(), os.getpid(), 0.0, None, BEFORE_THIS_PROCESS, True),  # its pid now runs a later process
        ("elsewhere", 1, 0.0, None, None, False),  # other host, heartbeat fresh: assume alive
        ("elsewhere", 1, 130.0, None, None, True),  # other host, heartbeat stopped: dead
        ("elsewhere", 1, 0.0, b"", None, False),  # empty but fresh (being written): wait
        ("elsewhere", 1, 6.0, b"", None, True),  # empty after the grace period: a crash between create and write
        ("elsewhere", 1, 6.0, b"{", None, True),  # unreadable after the grace period
    ],
)
def test_stale_claims_are_taken_over_and_live_ones_respected(
    tmp_path: Path, host: str, pid: int | None, age: float, raw: bytes | None, started: float | None, taken: bool
) -> None:
    target = tmp_path / "shard-00001.parquet"
    _plant(target, host=host, pid=pid if pid is not None else _dead_pid(), age=age, raw=raw, started=started)
    planted = claim_path(target).read_bytes()
    held = try_claim(target)  # the default timeout: 120 s
    assert isinstance(held, Claim) is taken
    if taken:
        assert json.loads(claim_path(target).read_text())["token"] == held.owner.token
        held.release()
    else:
        assert claim_path(target).read_bytes() == planted
    assert not list(tmp_path.glob("*.stale"))  # broken claims leave nothing behind


def test_the_claim_timeout_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert stale_after_setting() == 120.0
    monkeypatch.setenv("EXPRLOCK_CLAIM_TIMEOUT", "45")
    assert stale_after_setting() == 45.0
    for bad in ("soon", "10", "inf"):
        monkeypatch.setenv("EXPRLOCK_CLAIM_TIMEOUT", bad)
        with pytest.raises(ConfigError, match=rf"EXPRLOCK_CLAIM_TIMEOUT='{bad}': expected seconds, more than three heartbeats \(30\)"):
            stale_after_setting()


def test_heartbeat_keeps_a_long_claim_fresh(tmp_path: Path) -> None:
    target = tmp_path / "shard-00002.parquet"
    held = try_claim(target, heartbeat=0.05)
    assert isinstance(held, Claim)
    past = time.time() - 1000
    os.utime(claim_path(target), (past, past))
    time.sleep(0.3)
    assert time.time() - claim_path(target).stat().st_mtime < 5
    assert not isinstance(try_claim(target, stale_after=60.0), Claim)
    held.release()


def test_release_never_removes_a_claim_that_is_no_longer_ours(tmp_path: Path) -> None:
    target = tmp_path / "shard-00003.parquet"
    held = try_claim(target)
    assert isinstance(held, Claim)
    _plant(target, host="elsewhere", pid=1)  # taken over while we were presumed dead
    held.release()
    assert json.loads(claim_path(target).read_text())["host"] == "elsewhere"


_CLAIM_RACER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from pipeline.storage.shard_claim import Claim, claim
    root = Path(sys.argv[1])
    while not (root / "go").exists():
        time.sleep(0.001)
    won = 0
    for index in range(int(sys.argv[2])):
        target = root / f"shard-{index:05d}.parquet"
        if target.exists():
            continue
        with claim(target) as held:
            if isinstance(held, Claim) and not target.exists():
                with open(root / f"{target.name}.owners", "a") as log:
                    log.write(f"{os.getpid()}\\n")
                target.write_bytes(b"done")
                won += 1
    print(won)
    """
)


def test_two_processes_racing_for_many_claims_write_each_target_once(tmp_path: Path) -> None:
    count = 300
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIM_RACER, str(tmp_path), str(count)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    time.sleep(1.0)  # both are importing and polling for the start signal
    (tmp_path / "go").touch()
    wins = [int(racer.communicate(timeout=60)[0]) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    assert sum(wins) == count
    owners = [log.read_text().split() for log in tmp_path.glob("*.owners")]
    assert len(owners) == count and all(len(lines) == 1 for lines in owners)
    assert not list(tmp_path.glob(".*.claim"))


_SHARD_RACER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from pipeline.config import parse_config
    from pipeline.generators.factory import load_generator
    from pipeline.storage.layout import prepare_run
    from pipeline.stages.shards import generate_shard_once
    config = parse_config(json.loads(sys.argv[2]))
    run_dir = Path(sys.argv[1])
    prepare_run(config, run_dir)
    load_generator(config.generator_kind, None, 1.0, "cpu")  # warm, so both start rendering together
    (run_dir / f"ready-{os.getpid()}").touch()
    while not (run_dir / "go").exists():
        time.sleep(0.001)
    outcomes = [generate_shard_once(config, run_dir, index) for index in range(3)]
    print(json.dumps([[o.index, str(o.status)] for o in outcomes]))
    """
)


@pytest.mark.slow
def test_two_processes_racing_for_the_same_shards_write_each_once(tmp_path: Path) -> None:
    from data_schemas import Col
    from pipeline.storage.manifest import read_manifest

    config = {"sources": {"count": 24, "shard_size": 8}, "scoring": {"enabled": False}, "device": "cpu", "batch_size": 8}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _SHARD_RACER, str(tmp_path), json.dumps(config)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    deadline = time.time() + 90
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    reports = [json.loads(racer.communicate(timeout=120)[0]) for racer in racers]
    written = sorted(index for report in reports for index, status in report if status == "written")
    assert written == [0, 1, 2]  # every shard written, none twice
    for report in reports:
        assert {status for _, status in report} <= {"written", "busy", "done"}
    assert read_manifest(tmp_path).column(Col.SEED).to_pylist() == list(range(24))
    assert not list((tmp_path / "manifest").glob(".*"))  # no claims or temporary files left
