"""Every benchmark starts as the documentation runs it, `python benchmarks/NAME.py`: its folder,
first on sys.path, holds a `pipeline.py` that would otherwise hide the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.name for path in (REPO / "benchmarks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_benchmark_script_starts(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.splitlines()[-1:]
    assert result.stdout.startswith("usage:")
