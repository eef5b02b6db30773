"""Decode attention on the 8B shape (32 query heads, 8 KV heads, head size 128, bf16): qtool's kernel against SDPA.

Times, per (batch, cache length), in one process: SDPA on the packed query (quantize/attention.py's "sdpa" backend:
cuDNN's flash kernel on Hopper), SDPA over KV heads repeated to every query head (transformers' path, the bf16
baseline's), and qtool's kernels (online softmax, two passes) at the default and at fixed numbers of cache pieces. Each call reads its own copy of
the cache (copies rotated past the L2, as a layer's cache is in a decode step), CUDA-graph replay, microseconds.

    python3 dev/attn_probe.py [--batches 1,16] [--lengths 161,512,2048,8192] [--json out.json]
    python3 dev/attn_probe.py --rope --splits 0 --variants 2   # + the rotary-and-write mode (session 49)

--rope also times the kernel's rotary-and-write mode (`rope_kernel_attention`: q rotated as staged, the new key
rotated and both new rows written) and the same work as an Inductor-compiled `rotate_and_write` before the kernel,
on the same caches, against the plain kernel: what the mode adds to the attention.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, graph_ms  # noqa: E402

from qtool_kernels import attention, build  # noqa: E402

HEADS, KV_HEADS, DIM = 32, 8, 128


def caches(batch: int, length: int) -> tuple[Rotation, int]:
    """Copies of (k, v, mask) whose total passes 150 MB, and how many."""
    nbytes = 2 * batch * KV_HEADS * length * DIM * 2
    count = max(8, min(400, -(-150_000_000 // nbytes)))
    items = []
    for i in range(count):
        k = torch.randn(batch, KV_HEADS, length, DIM, device="cuda", dtype=torch.bfloat16)
        mask = (torch.arange(length, device="cuda") < length - 1 - i % 3)[None, :].expand(batch, length)
        items.append((k, torch.randn_like(k), mask))
    return Rotation(items), count


def rope_calls(batch: int, length: int, rot: Rotation, scale: float) -> dict:
    """The rotary-and-write kernel and compiled PyTorch ops + the kernel, over the rotating caches (row length - 2)."""
    qkv = torch.randn(batch, (HEADS + 2 * KV_HEADS) * DIM, device="cuda", dtype=torch.bfloat16)
    angle = torch.rand(batch, DIM // 2, device="cuda") * 6
    cos = torch.cat((angle, angle), -1).cos().to(torch.bfloat16)
    sin = torch.cat((angle, angle), -1).sin().to(torch.bfloat16)
    slot = torch.tensor([length - 2], device="cuda")
    write = torch.compile(attention.rotate_and_write)

    def kernel():
        k, v, mask = rot()
        return attention.rope_kernel_attention(qkv, cos, sin, k, v, slot, mask, scale, HEADS)

    def ops():
        k, v, mask = rot()
        return attention.decode_attention(write(qkv, cos, sin, k, v, slot, HEADS), k, v, mask, scale)

    if kernel() is None:
        raise SystemExit("the rotary-and-write kernel does not take the probe's tensors (rope_supported)")
    return {"rope_kernel": kernel, "rope_ops_then_kernel": ops}


def time_case(batch: int, length: int, splits: list[int], variants: list[int], rope: bool = False) -> dict:
    rot, count = caches(batch, length)
    q = torch.randn(batch, HEADS, DIM, device="cuda", dtype=torch.bfloat16)
    scale = DIM**-0.5
    groups = HEADS // KV_HEADS

    def packed():
        k, v, mask = rot()
        return F.scaled_dot_product_attention(q.view(batch, KV_HEADS, groups, DIM), k, v,
                                              attn_mask=mask[:, None, None, :], scale=scale)

    def repeated():
        k, v, mask = rot()
        kk = k[:, :, None].expand(batch, KV_HEADS, groups, length, DIM).reshape(batch, HEADS, length, DIM)
        vv = v[:, :, None].expand(batch, KV_HEADS, groups, length, DIM).reshape(batch, HEADS, length, DIM)
        return F.scaled_dot_product_attention(q[:, :, None, :], kk, vv, attn_mask=mask[:, None, None, :], scale=scale)

    calls = {"sdpa_packed": packed, "sdpa_repeat_kv": repeated}
    for var in variants:
        for s in splits:
            calls[f"qtool_v{var}_s{s}"] = lambda s=s, var=var: attention.decode_attention(q, *rot(), scale, splits=s,
                                                                                          variant=var)
    if rope:
        calls.update(rope_calls(batch, length, rot, scale))
    us = {}
    for _ in range(2):  # alternate, so that drift shows as spread
        for name, call in calls.items():
            t = graph_ms(call, reps=count)
            us.setdefault(name, []).append(None if t is None else round(t * 1e3, 2))
    k, v, mask = rot.items[0]
    ref = attention.reference(q, k, v, mask, scale).float()
    err = max((attention.decode_attention(q, k, v, mask, scale, variant=var).float() - ref).abs().max().item()
              for var in variants)
    row = {"batch": batch, "length": length, "copies": count, "us": us, "max_abs_err": err}
    print(f"B={batch} L={length}: " + ", ".join(f"{n} {min(t for t in ts if t is not None) if any(ts) else '-'}"
                                                for n, ts in us.items()) + f" (err {err:.2e})", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--lengths", default="161,512,2048,8192")
    parser.add_argument("--splits", default="0,1,2,4,8,16")
    parser.add_argument("--variants", default="1,2", help="the kernels: 1 online softmax, 2 two passes")
    parser.add_argument("--rope", action="store_true", help="also the rotary-and-write mode (docstring)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    build.load_extension()
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        for length in (int(x) for x in args.lengths.split(",")):
            rows.append(time_case(b, length, [int(s) for s in args.splits.split(",")],
                                  [int(v) for v in args.variants.split(",")], args.rope))
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
