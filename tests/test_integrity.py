"""A finished run verified against its ledger; damaged shards and images found, quarantined and
made again until the run equals a clean one."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_schemas import Col
from flows.cli import app
from pipeline.config import load_config, parse_config
from pipeline.stages.shards import ShardStatus, generate_shard_once, repair_run
from pipeline.storage.integrity import check_shard, verify_run
from pipeline.storage.layout import CARD_FILE, CONTACT_SHEET, finished_summary, prepare_run, shard_count, shard_path, shard_seeds
from pipeline.storage.ledger import LEDGER_DIR, SHARD_METADATA_KEY, shard_record
from pipeline.storage.manifest import read_manifest, write_shard
from pipeline.stages.generate import generate_shard
from pipeline.storage.shard_claim import claim_path

CONFIG = {"profile": "demo", "sources": {"count": 8, "shard_size": 4}, "scoring": {"enabled": False}}
runner = CliRunner()


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of 2 shards, never touched after it was made."""
    run_dir = tmp_path_factory.mktemp("clean")
    config = parse_config(CONFIG)
    prepare_run(config, run_dir)
    for index in range(shard_count(config)):
        generate_shard(config, run_dir, index)
    return run_dir


@pytest.fixture
def run(clean: Path, tmp_path: Path) -> Path:
    """A copy of the clean run to damage."""
    return Path(shutil.copytree(clean, tmp_path / "run"))


def same_run(left: Path, right: Path) -> None:
    """Equal rows (all but the commit time) and equal image digests."""
    a, b = (read_manifest(d).drop_columns([Col.CREATED_AT]).to_pylist() for d in (left, right))
    assert a == b
    for row in a:
        assert (left / row[Col.IMAGE_SOURCE]).read_bytes() == (right / row[Col.IMAGE_SOURCE]).read_bytes()


def damage_a_data_page(path: Path) -> None:
    """64 bytes overwritten in the middle of the largest column chunk's pages (not the footer)."""
    group = pq.read_metadata(path).row_group(0)
    chunk = max((group.column(i) for i in range(group.num_columns)), key=lambda c: c.total_compressed_size)
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))


def test_a_clean_run_verifies_and_its_ledger_matches_its_files(clean: Path) -> None:
    report = verify_run(clean)
    assert report.problems == [] and (report.shards, report.images, report.unrecorded) == (2, 8, [])
    for index in range(2):
        record = shard_record(clean, index)
        table = pq.read_table(shard_path(clean, index))
        own = json.loads(table.schema.metadata[SHARD_METADATA_KEY])
        assert record.rows == own["rows"] == 4 and record.images == own["images"]
        assert sorted(record.images) == sorted(table.column(Col.IMAGE_SOURCE).to_pylist())
        assert record.size == shard_path(clean, index).stat().st_size


def test_a_damaged_data_page_is_reported_and_repaired(run: Path, clean: Path) -> None:
    shard = shard_path(run, 1)
    damaged = shard.read_bytes()
    damage_a_data_page(shard)
    before = pq.read_metadata(shard)  # the footer still reads: only the pages are damaged
    assert before.num_rows == 4
    report = verify_run(run)
    assert [str(p).split(":")[0] for p in report.problems] == [str(shard)]
    assert "the ledger recorded" in str(report.problems[0])

    inspected = runner.invoke(app, ["inspect", str(run), "--no-plots"])
    assert inspected.exit_code == 1
    assert inspected.output.splitlines()[-1].startswith("1 problems: the run is damaged;")

    assert repair_run(run, report) == [1]
    assert verify_run(run).problems == []
    same_run(run, clean)
    kept = list((run / "quarantine").rglob("shard-00001.parquet"))
    assert len(kept) == 1 and kept[0].read_bytes() != damaged  # the damaged file is kept, not deleted
    assert len(list((run / "quarantine").rglob("*.png"))) == 4


def test_without_a_ledger_record_a_damaged_page_is_found_by_decoding(run: Path) -> None:
    shutil.rmtree(run / LEDGER_DIR / "shard-00001")
    damage_a_data_page(shard_path(run, 1))
    problems, _, recorded = check_shard(parse_config(CONFIG), run, 1)
    assert not recorded
    assert len(problems) == 1 and "does not decode" in str(problems[0])


def test_a_deleted_image_is_reported_and_repaired(run: Path, clean: Path) -> None:
    image = run / "images" / "shard-00000" / "seed-000000002.png"
    image.unlink()
    report = verify_run(run)
    assert [str(p) for p in report.problems] == [f"{image}: missing; `exprlock verify RUN --repair` makes it again"]
    verified = runner.invoke(app, ["verify", str(run)])
    assert verified.exit_code == 1 and verified.output.splitlines()[0] == str(report.problems[0])
    inspected = runner.invoke(app, ["inspect", str(run), "--no-plots"])
    assert inspected.exit_code == 1 and inspected.output.splitlines()[0] == str(report.problems[0])
    repaired = runner.invoke(app, ["verify", str(run), "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert repaired.output.splitlines()[-1] == f"{run}: 2 shards and 8 images checked, 0 problems"
    same_run(run, clean)


def test_generate_makes_a_damaged_shard_again(run: Path, clean: Path) -> None:
    damage_a_data_page(shard_path(run, 0))
    config = parse_config(CONFIG)
    outcome = generate_shard_once(config, run, 0)
    assert outcome.status == ShardStatus.REMADE and "the ledger recorded" in outcome.note
    assert generate_shard_once(config, run, 1).status == ShardStatus.DONE
    assert verify_run(run).problems == []
    same_run(run, clean)


def test_generate_makes_a_shard_with_a_deleted_image_again(run: Path, clean: Path) -> None:
    image = run / "images" / "shard-00001" / "seed-000000005.png"
    image.unlink()
    outcome = generate_shard_once(parse_config(CONFIG), run, 1)
    assert outcome.status == ShardStatus.REMADE and outcome.note == f"{image}: missing"
    same_run(run, clean)


def test_a_damaged_run_is_never_summarised_as_finished(run: Path) -> None:
    """The command line's no-server summary checks every shard against its record first."""
    (run / CONTACT_SHEET).write_bytes(b"")
    (run / CARD_FILE).write_bytes(b"")
    config = parse_config(CONFIG)
    assert finished_summary(config, run, [0, 1]) is not None
    damage_a_data_page(shard_path(run, 1))
    assert finished_summary(config, run, [0, 1]) is None
    assert finished_summary(config, run, [0]) is not None


def test_a_shard_with_repeated_or_missing_seeds_is_reported(run: Path) -> None:
    shard = shard_path(run, 1)
    table = pq.read_table(shard)
    wrong = table.take([0, 0, 1, 2])  # seed 4 twice, seed 7 missing
    shard.unlink()
    shutil.rmtree(run / LEDGER_DIR / "shard-00001")
    write_shard(wrong, shard)
    report = verify_run(run)
    assert [p.message for p in report.problems] == [
        "seeds 7 have fewer than 1 rows and 4 are unplanned or repeated; `exprlock verify RUN --repair` makes it again"
    ]


def test_a_missing_shard_is_reported_and_made(run: Path, clean: Path) -> None:
    shard_path(run, 1).unlink()
    report = verify_run(run)
    assert report.problems[0].missing and "seeds 4-7 are not committed" in str(report.problems[0])
    assert repair_run(run, report) == [1]
    same_run(run, clean)


def test_legacy_shards_gain_a_record_when_generate_finds_them_sound(run: Path) -> None:
    shutil.rmtree(run / LEDGER_DIR)
    assert verify_run(run).unrecorded == [0, 1]
    assert generate_shard_once(parse_config(CONFIG), run, 0).status == ShardStatus.DONE
    assert shard_record(run, 0) is not None and verify_run(run).unrecorded == [1]


def test_planning_one_shard_costs_the_same_in_a_run_of_ten_million_seeds() -> None:
    """Counted in executed lines, not timed."""

    def lines_to_plan(count: int, index: int) -> tuple[int, range]:
        config = parse_config({"sources": {"count": count, "shard_size": 1}})
        executed = 0

        def trace(frame, event, arg):  # noqa: ANN001, ANN202
            nonlocal executed
            if event == "line":
                executed += 1
            return trace

        sys.settrace(trace)
        try:
            seeds = shard_seeds(config, index)
        finally:
            sys.settrace(None)
        return executed, seeds

    small, first = lines_to_plan(8, 7)
    large, last = lines_to_plan(10_000_000, 9_999_999)
    assert (first, last) == (range(7, 8), range(9_999_999, 10_000_000))
    assert large == small


@pytest.mark.slow
def test_a_run_with_a_shard_held_by_a_live_owner_exits_1_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("profile: demo\nsources: {count: 8, shard_size: 4}\nscoring: {enabled: false}\n")
    out = tmp_path / "run"
    prepare_run(load_config(config), out)
    shard_path(out, 1).parent.mkdir()
    started = time.time()
    claim_path(shard_path(out, 1)).write_text(json.dumps({"host": "gpu-7", "pid": 4242, "token": "t", "started": started}))
    result = runner.invoke(app, ["generate", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 1, result.output
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    assert result.output.splitlines()[0].endswith("4 rows written, 0 of 2 shards already done, 1 held by other workers")
    assert f"shard 1 is held by pid 4242 on gpu-7 since {since}" in result.output.splitlines()
    assert shard_path(out, 0).exists() and not shard_path(out, 1).exists()
    assert socket.gethostname() != "gpu-7" and os.getpid() != 4242
