"""The fuzz harnesses of fuzz/ hold on their committed seed corpora.

scripts/fuzz explores from these seeds; here every seed runs once through its
harness's invariants, so a change that breaks an invariant on a known input fails
the ordinary test run at once, and the harnesses themselves cannot rot unnoticed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
NAMES = ("request", "target", "body", "response")


@pytest.mark.parametrize("name", NAMES)
def test_every_seed_keeps_the_fuzzers_invariants(name: str, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    """A seed that breaks an invariant is a finding the short CI fuzz run would also report."""
    monkeypatch.syspath_prepend(str(FUZZ))
    harness = importlib.import_module(f"fuzz_{name}")
    seeds = sorted((FUZZ / "corpus" / name).iterdir())
    assert len(seeds) >= 20, "a seed corpus this small explores little"
    for seed in seeds:
        harness.check(seed.read_bytes())
    sys.modules.pop(f"fuzz_{name}")


@pytest.mark.parametrize(("name", "data"), [
    ("request", b"\x00GET  / HTTP/1.1\r\nHost: d\r\n\r\n"),
    ("target", b"\x00/containers/%25252e%25252e/json"),
    ("body", b'{"HostConfig": {"Mounts": [{"Type": "volume", "VolumeOptions": {"DriverConfig":'
             b' {"Name": "local"}}}], "Mounts": [{"Type": "volume"}]}}'),
    ("response", b"\x00HTTP/1.1 200 OK\r\nContent-Len/th: 5\r\n\r\nhello"),
])
def test_the_harnesses_accept_what_was_fixed_after_a_finding(
        name: str, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inputs of past findings pass now (their regression tests live beside the code's)."""
    monkeypatch.syspath_prepend(str(FUZZ))
    harness = importlib.import_module(f"fuzz_{name}")
    harness.check(data)
    sys.modules.pop(f"fuzz_{name}")
