"""A few eager launches of the decode attention kernels, for compute-sanitizer (racecheck is too slow for the
timing probe's graphs): both variants, batches 1 and 16, short and split caches, a padded mask; checks each output
against the reference so a launch that ran is also a launch that was right. Then the rotary-and-write mode
(rope_decode_attention, session 49) with the new row first, inside and last."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qtool_kernels import attention, reference  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    worst = 0.0
    for batch in (1, 16):
        for length in (33, 161, 600):
            k = torch.randn(batch, 8, length, 128, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            q = torch.randn(batch, 32, 128, device="cuda", dtype=torch.bfloat16)
            mask = (torch.arange(length, device="cuda") < length - 3)[None, :].expand(batch, length).contiguous()
            ref = attention.reference(q, k, v, mask, 128**-0.5).float()
            for variant in (1, 2):
                for splits in (0, 1, 4):
                    out = attention.decode_attention(q, k, v, mask, 128**-0.5, splits=splits, variant=variant)
                    worst = max(worst, (out.float() - ref).abs().max().item())
    torch.cuda.synchronize()
    print(f"launches done; max abs error against the reference {worst:.2e}", flush=True)
    print(f"rotary-and-write launches done; max abs error against the reference {rope_launches():.2e}", flush=True)


def rope_launches() -> float:
    """The rotary-and-write kernel at batches 1 and 16, caches of 33-600 rows, the new row first / inside / last: the
    largest output or cache error against the reference (float32 on the same bf16 inputs)."""
    worst = 0.0
    for batch in (1, 16):
        for length in (33, 161, 600):
            for slot in (0, length // 2, length - 1):
                qkv = torch.randn(batch, (32 + 16) * 128, device="cuda", dtype=torch.bfloat16)
                angle = torch.rand(batch, 64, device="cuda") * 6
                cos = torch.cat((angle, angle), -1).cos().to(torch.bfloat16)
                sin = torch.cat((angle, angle), -1).sin().to(torch.bfloat16)
                k = torch.randn(batch, 8, length, 128, device="cuda", dtype=torch.bfloat16)
                v = torch.randn_like(k)
                mask = (torch.arange(length, device="cuda") <= slot)[None, :].expand(batch, length).contiguous()
                ref = [t.float() for t in (qkv, cos, sin, k, v)]
                index = torch.tensor([slot], device="cuda")
                out = attention.rope_decode_attention(qkv, cos, sin, k, v, index, mask, 128**-0.5, 32)
                expected = reference.rope_decode_attention(*ref, index, mask, 128**-0.5, 32)
                for got, want in ((out, expected), (k, ref[3]), (v, ref[4])):
                    worst = max(worst, (got.float() - want).abs().max().item())
    torch.cuda.synchronize()
    return worst


if __name__ == "__main__":
    main()
