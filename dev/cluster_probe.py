"""Where the Hopper mixed GEMM's clusters of two row tiles (variant 2) launch: session 12's GPU tests found
"CUTLASS run failed" at n = 640 / 768 with k = 576 / 2048, while the sweeps ran them at 4096-wide shapes.

  python3 dev/cluster_probe.py

Prints one line per (bits, k, n) with the (m, token tile, split) cells that failed.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_mixed_gpu import random_weight  # noqa: E402

from qtool_kernels import mixed_mm  # noqa: E402


def main() -> None:
    for bits, k, n in itertools.product((4,), (576, 2048, 4096), (256, 640, 768, 1024, 2048, 4096)):
        p = random_weight(n, k, 128, True, seed=1, bits=bits)
        failed, ran = [], 0
        for m, tt, split in itertools.product((5, 64, 100, 300, 1024), (0, 64, 128), (0, 1, -1)):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            try:
                mixed_mm.mixed_linear(F.pad(x, (0, p.k_padded - k)), p.mixed, split=split, ktile=64, variant=2,
                                      token_tile=tt)
                torch.cuda.synchronize()
                ran += 1
            except RuntimeError as err:
                failed.append(f"m{m}/t{tt}/s{split}" + ("" if "run failed" in str(err) else f"({err})"))
        print(f"w{bits} k={k} n={n}: ran {ran}, failed {len(failed)}: {' '.join(failed[:12])}")


if __name__ == "__main__":
    main()
