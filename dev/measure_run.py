"""Run one command and record what it cost: wall time, peak host RSS, peak GPU memory, and, for
`qtool quantize`, the time of each block (from the writer's progress.json in the partial output).

    python dev/measure_run.py --name gptq-8b --json $OUT/gptq-8b.json --timeout 240 \
        --partial models/.gptq-8b.partial -- qtool quantize ...

Peak RSS covers the command's process tree (polled from /proc every 0.2 s, plus getrusage of the
children at the end); GPU memory is polled with nvidia-smi (device total, CUDA context included).
The JSON is written even when the command fails or runs out of time (then rc is 124).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path


def _tree_rss_kb(pid: int) -> int:
    """Resident KB of `pid` and its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            stack.extend(int(c) for c in children)
        except (OSError, StopIteration, ValueError):
            continue
    return total


def _gpu_used_mib() -> int | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
        return max(int(x) for x in out.split())
    except (subprocess.SubprocessError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--partial", type=Path, default=None, help="partial output directory to watch")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    record: dict = {"name": args.name, "command": command, "rss_peak_gb": 0.0, "gpu_peak_mib": None,
                    "gpu_baseline_mib": _gpu_used_mib(), "block_done_at_s": []}
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    stop = threading.Event()

    def poll() -> None:
        last_gpu = 0.0
        while not stop.is_set():
            record["rss_peak_gb"] = max(record["rss_peak_gb"], _tree_rss_kb(proc.pid) / 2**20)
            now = time.perf_counter() - start
            if now - last_gpu >= 1.0:
                used, last_gpu = _gpu_used_mib(), now
                if used is not None:
                    record["gpu_peak_mib"] = max(record["gpu_peak_mib"] or 0, used)
            if args.partial is not None:
                try:
                    done = json.loads((args.partial / "progress.json").read_text())["done"]
                    while len(record["block_done_at_s"]) < done:
                        record["block_done_at_s"].append(round(now, 2))
                except (OSError, ValueError, KeyError):
                    pass
            stop.wait(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        record["rc"] = proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        record["rc"] = 124
    stop.set()
    poller.join()
    import resource

    record["wall_s"] = round(time.perf_counter() - start, 2)
    record["rss_peak_gb"] = round(max(record["rss_peak_gb"],
                                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20), 3)
    done = record["block_done_at_s"]
    record["block_s"] = [round(b - a, 2) for a, b in itertools.pairwise(done)]
    if record["block_s"]:
        steady = sorted(record["block_s"])[len(record["block_s"]) // 2]
        record["median_block_s"] = steady
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k not in ("command", "block_done_at_s")}))
    raise SystemExit(0 if record["rc"] == 0 else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
