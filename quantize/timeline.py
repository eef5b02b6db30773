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
from collections.abc import Iterator
from contextlib import contextmanager

import torch


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


TOTALS: dict[str, float] = {}


@contextmanager
def phase(label: str, device: torch.device | None = None) -> Iterator[None]:
    """With QTOOL_TIMELINE=1, add the time spent inside to TOTALS[label], waiting for `device` (a GPU)
    at both ends so that queued work is charged where it was queued; a no-op otherwise (no waiting)."""
    if not os.environ.get("QTOOL_TIMELINE"):
        yield
        return
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda *_: None)
    sync(device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        sync(device)
        TOTALS[label] = TOTALS.get(label, 0.0) + time.perf_counter() - t0


def print_totals() -> None:
    """The phase totals so far, to stderr (QTOOL_TIMELINE=1 only)."""
    if os.environ.get("QTOOL_TIMELINE") and TOTALS:
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(TOTALS.items(), key=lambda kv: -kv[1]))
        print(f"[timeline rank {os.environ.get('RANK', '0')}] phases: {parts}", file=sys.stderr, flush=True)
