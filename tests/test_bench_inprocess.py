"""bench/inprocess.py keeps working: it drives the real plain path (no timing is checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "inprocess.py"


@pytest.mark.parametrize("answer", ["ping", "chunked"])
def test_the_in_process_benchmark_relays_every_answer_and_audits_every_request(
        answer: str) -> None:
    """A harness that stopped reaching the client would report a meaningless figure."""
    done = subprocess.run([sys.executable, str(BENCH), "--answer", answer, "--requests", "300",
                           "--repeat", "2"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert f"{answer}: " in done.stdout
    # 1,000 warm-up rounds and 2 x 300 measured, one audit line each.
    assert "1,600 audit lines written" in done.stdout
