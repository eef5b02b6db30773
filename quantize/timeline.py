"""Where a run's time goes: named marks in seconds since the process started.

`qtool quantize` marks its phases (process group, calibration data, model skeleton, block inputs,
blocks, checkpoint); they are stored in `layer_errors.json` ("timeline") and, with QTOOL_TIMELINE=1
in the environment, printed to stderr as they happen, with the process's rank. Time since the process
started, not since qtool's first line, so that imports and a torchrun relaunch are counted.
"""

from __future__ import annotations

import os
import sys
import time


def _process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere, i.e. since this module's import)."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


START = time.time() - _process_age()
MARKS: dict[str, float] = {}


def mark(label: str) -> None:
    """Record `label` at the current time (the last mark of a label wins)."""
    MARKS[label] = round(time.time() - START, 3)
    if os.environ.get("QTOOL_TIMELINE"):
        print(f"[timeline rank {os.environ.get('RANK', '0')}] {MARKS[label]:8.2f} s  {label}", file=sys.stderr,
              flush=True)
