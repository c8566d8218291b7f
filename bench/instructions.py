"""Instructions per request of dockgate's plain path: a count that does not drift.

    python bench/instructions.py                    # /_ping, the build on sys.path
    python bench/instructions.py --answer chunked   # a dockerd-like chunked answer
    PYTHONPATH=/tmp/compiled python bench/instructions.py   # another build

Runs bench/inprocess.py under valgrind's callgrind twice, for ``--requests`` and
for three times as many, and divides the difference of the instruction totals by
the difference of the request counts: start-up and imports cancel out. Wall-clock
and CPU timings on a shared virtual machine vary by 30% from run to run; this
count varies by up to 5% (the audit line's time stamp is formatted again when the
millisecond changes, which depends on how fast the run goes), so it compares two
builds, or a change, where timings cannot. It counts instructions, not cycles: cache misses
and system calls (the kernel is not counted at all) are not in it, so it is a
companion to bench/run.py, never a replacement. It includes what the harness does
per request, the same for every build: about 1,500 instructions in its Python
transports and 3,100 counting the audit lines at the end.
Needs valgrind (Debian's package); about a minute per answer.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

INPROCESS = Path(__file__).resolve().parent / "inprocess.py"
COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(answer: str, requests: int, out: Path) -> int:
    """Total instructions of one bench/inprocess.py run under callgrind."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         sys.executable, str(INPROCESS), "--answer", answer, "--requests", str(requests),
         "--repeat", "1"],
        capture_output=True, text=True, check=False)
    found = COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"bench/inprocess.py under callgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answer", choices=("chunked", "ping"), default="ping",
                        help="the request and answer (as bench/inprocess.py)")
    parser.add_argument("--requests", type=int, default=1000,
                        help="requests of the shorter run (the longer has three times as many)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the callgrind files there (for callgrind_annotate)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")
    with tempfile.TemporaryDirectory() as scratch:
        where = args.keep or Path(scratch)
        where.mkdir(parents=True, exist_ok=True)
        short = instructions(args.answer, args.requests, where / "callgrind.short.out")
        long = instructions(args.answer, 3 * args.requests, where / "callgrind.long.out")
    per_request = (long - short) / (2 * args.requests)
    print(f"{args.answer}: {per_request:,.0f} instructions per request "
          f"({3 * args.requests:,} requests minus {args.requests:,}, under callgrind)")


if __name__ == "__main__":
    main()
