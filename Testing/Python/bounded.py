"""Run a piece of hostile-input handling in a child process and measure it: wall time and peak
resident memory (``ru_maxrss`` of that child alone, from ``os.wait4``).

The child's address space is capped (:data:`ADDRESS_SPACE_LIMIT`), so a regression that tries to
allocate gigabytes fails in the child instead of exhausting the machine, and it is killed after
``timeout`` seconds (a hang is reported as such)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Address space of the child: torch alone maps about 1-2 GB of virtual memory.
ADDRESS_SPACE_LIMIT = 6 << 30
#: What every hostile case must stay under (issue 23).
MAX_SECONDS = 10.0
MAX_RSS_BYTES = 1 << 30


#: A child prints this line (followed by seconds) to report the time of the case itself, without
#: the interpreter's start and its imports (torch alone takes 2-6 s on a loaded 2-core machine).
CASE_SECONDS = "case seconds:"


@dataclass
class Measured:
    output: str  # without the CASE_SECONDS line
    seconds: float  # wall time of the whole child
    peak_rss_bytes: int
    returncode: int | None  # None: killed at the timeout
    case_seconds: float | None = None


def run_bounded(code: str, *args, timeout: float = 30.0, address_space: int = ADDRESS_SPACE_LIMIT) -> Measured:
    """Run ``python -c code args...`` from the repository root; stdout+stderr, time, peak RSS."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
        status = usage = None
        while time.perf_counter() - started < timeout:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.02)
        else:
            os.kill(child.pid, signal.SIGKILL)
            _, status, usage = os.wait4(child.pid, 0)
            status = None
        seconds = time.perf_counter() - started
        child.returncode = -1  # reaped here; keep Popen from waiting again
        log.seek(0)
        output = log.read().decode(errors="replace")
    code = None if status is None else os.waitstatus_to_exitcode(status)
    lines = output.splitlines(keepends=True)
    case = [float(line.split(":", 1)[1]) for line in lines if line.startswith(CASE_SECONDS)]
    output = "".join(line for line in lines if not line.startswith(CASE_SECONDS))
    return Measured(output, seconds, usage.ru_maxrss * 1024, code, case[0] if case else None)
