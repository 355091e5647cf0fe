"""Run a piece of hostile-input handling in a child process and measure it: wall time and peak
resident memory of the child's own program (``VmHWM`` of its address space, printed by the child
as it exits).

Not ``ru_maxrss`` from ``os.wait4``: Linux carries a forked child's resident size at the fork
(the parent's, the whole pytest process, often beyond 1 GB late in a run) into the child's
``ru_maxrss`` across ``exec``; that only stands in when the child could not report (killed).

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
#: The child's last line: the peak resident size (KiB) of its own address space.
PEAK_KIB = "bounded peak rss kib:"
#: Runs the case's code (argv[1]) as ``python -c`` would, reporting VmHWM at exit.
_WRAPPER = (
    "import atexit, sys\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as status:\n"
    "        kib = [line.split()[1] for line in status if line.startswith('VmHWM:')]\n"
    f"    print({PEAK_KIB!r}, kib[0] if kib else '', file=sys.stderr, flush=True)\n"
    "atexit.register(_peak)\n"
    "_code = sys.argv.pop(1)\n"
    "exec(compile(_code, '<string>', 'exec'), {'__name__': '__main__'})\n")


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
        child = subprocess.Popen([sys.executable, "-c", _WRAPPER, code, *map(str, args)], cwd=REPO, env=env,
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
    peak = [line.split(":", 1)[1].strip() for line in lines if line.startswith(PEAK_KIB)]
    output = "".join(line for line in lines if not line.startswith((CASE_SECONDS, PEAK_KIB)))
    rss = int(peak[0]) * 1024 if peak and peak[0].isdigit() else usage.ru_maxrss * 1024
    return Measured(output, seconds, rss, code, case[0] if case else None)
