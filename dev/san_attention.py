"""A few eager launches of the decode attention kernels, for compute-sanitizer (racecheck is too slow for the
timing probe's graphs): both variants, batches 1 and 16, short and split caches, a padded mask; checks each output
against the reference so a launch that ran is also a launch that was right."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qtool_kernels import attention  # noqa: E402


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


if __name__ == "__main__":
    main()
