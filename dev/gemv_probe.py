"""w8_gemv with and without each candidate change, in one build: QTOOL_W8_GEMV (the switches are listed in
csrc/w8_gemv.cu) is read once per process, so each setting runs in its own child process. Timing as bench_w8a8.py
(rotating copies, CUDA-graph replay), speedup against bf16 F.linear measured in the same process; the six
protocol shapes and the fused 8B q/k/v and gate/up.

    python3 dev/gemv_probe.py [--switches 0,2,4,8,12] [--tokens 1,8,16] [--json out.json] [--env QTOOL_PDL]

Session 13 ran it at commit 1a61939 with --switches 0,1,3 (then 1 = no L2 prefetch, 2 = no 16-warp blocks);
session 14 with --switches 0,2,4,8,12 (4 and 8 are gone since: 8 became the default, 4 was withdrawn).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()


FUSED_8B = [(4096, 6144), (4096, 28672)]  # q/k/v and gate/up of Llama-3-8B as qtool bench fuses them


def child(tokens: list[int]) -> list[dict]:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
    from bench_kernels import Rotation, graph_ms
    from bench_w8a8 import SHAPES, copies

    from qtool_kernels import build

    build.load_extension()
    rows = []
    for k, n in SHAPES + FUSED_8B:
        dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies(2 * n * k))])
        codes = {"fp8": Rotation([(torch.randn(n, k, device="cuda") * 32).to(torch.float8_e4m3fn)
                                  for _ in range(copies(n * k))])}
        codes["int8"] = Rotation([q.view(torch.int8) for q in codes["fp8"].items])  # any bytes are int8 codes
        ch_scale = torch.rand(n, device="cuda") / 100
        bl_scale = torch.rand(-(-n // 128), -(-k // 128), device="cuda") / 100
        for m in tokens:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16 = graph_ms(lambda x=x, dense=dense: F.linear(x, dense()))
            for kind, wq in (("fp8", codes["fp8"]), ("int8", codes["int8"]), ("fp8-block", codes["fp8"])):
                s, b = (bl_scale, 128) if kind == "fp8-block" else (ch_scale, 0)
                t = graph_ms(lambda x=x, wq=wq, s=s, b=b: torch.ops.qtool_cuda.w8_gemv(x, wq(), s, None, b, b))
                rows.append({"kind": kind, "K": k, "N": n, "M": m, "speedup": bf16 / t, "TBps": n * k / t / 1e9})
        del dense, codes
        torch.cuda.empty_cache()
    return rows


def run_settings(script: Path, env_name: str, settings: str, child_args: list[str]) -> dict[str, list]:
    """{setting: the rows `script --child child_args` printed as JSON} with `env_name` set to each of the
    comma-separated `settings`, one child process each (the kernels read their switches once per process)."""
    results = {}
    for value in settings.split(","):
        out = subprocess.run([sys.executable, str(script), "--child", *child_args], capture_output=True, text=True,
                             env={**os.environ, env_name: value})
        if out.returncode:
            print(f"{env_name}={value} failed:\n{out.stderr[-2000:]}")
            continue
        results[value] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", default="0,16")
    parser.add_argument("--env", default="QTOOL_W8_GEMV", help="the variable the settings go to (e.g. QTOOL_PDL)")
    parser.add_argument("--tokens", default="1,8,16")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    if args.child:
        print(json.dumps(child(tokens)))
        return
    results = run_settings(HERE, args.env, args.switches, ["--tokens", args.tokens])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    keys = sorted({(r["kind"], r["K"], r["N"], r["M"]) for rows in results.values() for r in rows})
    print("kind K x N M: " + " | ".join(f"{args.env}={sw}" for sw in results))
    for key in keys:
        cells = []
        for rows in results.values():
            r = next((r for r in rows if (r["kind"], r["K"], r["N"], r["M"]) == key), None)
            cells.append(f"{r['speedup']:.2f}x {r['TBps']:.1f} TB/s" if r else "-")
        print(f"{key[0]} {key[1]}x{key[2]} M={key[3]}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
