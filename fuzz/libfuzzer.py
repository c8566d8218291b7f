"""What every fuzzer here runs as a script: libFuzzer (atheris) driving its ``check``."""

from __future__ import annotations

import sys
from collections.abc import Callable


def fuzz(check: Callable[[bytes], None]) -> None:
    """Instrument what is imported, then let libFuzzer call ``check`` (flags from argv)."""
    import atheris  # noqa: PLC0415 - only the fuzzing run needs it, not the tests

    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
