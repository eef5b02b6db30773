"""Which kernel and which schedule serve a batch of m tokens on Hopper: measured, as data.

The Hopper GEMMs have many schedules. The mixed-input one (mixed_mm.py, W4A16 / W8A16): k per pipeline stage
(64 or 128), tokens per tile (16-256, at most the batch's own tile), 128-row tiles, 256-row tiles or clusters
of two 128-row tiles, and no split, split-K or stream-K. The W8A8 one (libqtool_sm90, scaled_mm.py): skinny
(64 x 128 ping-pong), narrow (64 x 64 ping-pong), split (128 x 128, split-K) or large (2-CTA clusters). Which
is fastest depends on the batch and on how many tiles the weight gives the 132 SMs, in ways the rules of
thumb got wrong (session 10 ran 256 tokens of a 4096 x 4096 W4 layer in 128 x 256 tiles split 4 ways: 0.57x
bf16, where 128-token tiles split 2 ways run 0.81x; W8A8 took 256 tokens to the large tiles, 0.93x, where the
skinny ones run 1.25x). So `dev/mixed_sweep.py` and `dev/w8a8_sweep.py` timed every schedule at each measured
shape and batch on the H200, and the tables below hold the winners.

Another card takes the H200's routes, except where it has cells of its own (MIXED_H100, W8A8_H100: swept on that
card, cell over cell; `card` says which card applies). A weight of another shape takes the routes of the measured
shape nearest in log(K) and log(N); a batch between measured ones takes the route of the next larger one measured
(a token tile that holds the batch); past the largest, the mixed GEMM takes the route of the largest, and W8A8
(also below the smallest) its built-in rules.
"""

from __future__ import annotations

import math
import os

import torch

from .mixed_mm import check_schedule, takes_ktile

# Mixed-input routes, (bits, K, N) -> {M: route}: "wo_gemm" (qtool's mma.sync GEMM), "dequant" (dequant_int +
# cuBLAS), or a schedule "k<ktile> t<token tile> v<variant> s<split>" (mixed_mm.mixed_linear's arguments).
# H200, session 11 (the fused 8B shapes 4096 x 6144 and 4096 x 28672: session 12), dev/mixed_sweep.py
# (BENCHMARKS.md); a tuned schedule is kept only where it beat the plain
# one (the batch's own token tile, 128-row tiles, default split) by more than run-to-run noise (mixed_sweep.margin).
# 9-64 tokens re-swept in session 44 under the ordered split adds, split-K by 8 tried (never the fastest). W4 at 9-32
# tokens re-swept in session 47 with the GEMM under PDL (mixed_mm.PDL_MAX_M): the GEMM took 4096 x 4096 and
# 14336 x 4096 at 9-16 tokens from wo_gemm (4096 x 4096 at 16 tokens 1.32x -> 1.44x, 14336 x 4096 1.63x -> 1.81x).
# Session 49 put W4's four fused 8B layers (q/k/v, o, gate/up, down) back on their session-46 routes at 9-16 tokens:
# the 8B batch-16 step ran 5% slower on the swept ones (H100: 4398-4424 -> 4614-4639 tok/s; each of the four lines
# reverted alone gained 25-106). The sweep times one layer back to back, so under PDL each GEMM's prologue overlaps
# the previous GEMM's tail; in the model the kernel before it is a norm, attention or another shape. The 32-token
# routes stayed (33da1e9's lost 1-2% at batch 32).
MIXED: dict[tuple[int, int, int], dict[int, str]] = {
    (4, 4096, 4096): {8: "wo_gemm", 9: "wo_gemm", 16: "wo_gemm", 17: "wo_gemm", 32: "k64 t32 v0 s0", 64: "k128 t64 v0 s0", 128: "k128 t64 v0 s0", 256: "k64 t128 v2 s2", 512: "k64 t128 v2 s1", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v0 s0"},
    (4, 4096, 14336): {8: "k128 t16 v0 s1", 9: "k128 t16 v1 s2", 16: "k128 t16 v1 s2", 17: "k128 t32 v0 s0", 32: "k128 t32 v1 s0", 64: "k128 t64 v0 s0", 128: "k128 t128 v0 s0", 256: "k64 t256 v0 s0", 512: "k64 t256 v0 s0", 1024: "k64 t256 v2 s-1", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v0 s0"},
    (4, 8192, 8192): {8: "k128 t16 v1 s0", 9: "k128 t16 v1 s4", 16: "k128 t16 v1 s0", 17: "k128 t32 v0 s0", 32: "k128 t32 v1 s4", 64: "k128 t64 v0 s0", 128: "k128 t128 v0 s0", 256: "k64 t128 v0 s1", 512: "k64 t256 v0 s0", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v0 s0"},
    (4, 8192, 28672): {8: "k128 t16 v1 s1", 9: "k128 t16 v1 s0", 16: "k128 t16 v1 s1", 17: "k128 t32 v1 s0", 32: "k128 t32 v1 s0", 64: "k128 t64 v1 s0", 128: "k128 t128 v0 s0", 256: "k64 t256 v2 s-1", 512: "k64 t256 v2 s-1", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v2 s-1"},
    (4, 14336, 4096): {8: "k128 t16 v0 s0", 9: "wo_gemm", 16: "wo_gemm", 17: "k128 t32 v0 s0", 32: "k128 t32 v0 s0", 64: "k128 t64 v0 s0", 128: "k128 t128 v0 s0", 256: "k64 t128 v0 s2", 512: "k64 t256 v0 s0", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v2 s1"},
    (4, 28672, 8192): {8: "k128 t16 v1 s4", 9: "k128 t16 v1 s4", 16: "k128 t16 v1 s4", 32: "k128 t32 v1 s0", 64: "k128 t64 v1 s4", 128: "k128 t128 v0 s0", 256: "k64 t256 v0 s0", 512: "k64 t256 v0 s0", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v2 s0"},
    (8, 4096, 4096): {8: "wo_gemm", 9: "k128 t16 v0 s0", 16: "k128 t16 v0 s0", 17: "wo_gemm", 32: "k64 t32 v0 s0", 64: "k64 t64 v0 s0", 128: "k64 t64 v0 s2", 256: "k64 t128 v0 s2", 512: "k64 t128 v0 s0", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v0 s0"},
    (8, 4096, 14336): {8: "k128 t16 v0 s0", 9: "k128 t16 v0 s0", 16: "k128 t16 v0 s0", 32: "k128 t32 v0 s0", 64: "k128 t64 v0 s0", 128: "k128 t128 v0 s0", 256: "k64 t256 v0 s0", 512: "k64 t256 v0 s0", 1024: "k64 t256 v2 s-1", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v0 s0"},
    (8, 8192, 8192): {8: "k128 t16 v0 s0", 9: "k128 t16 v0 s0", 16: "k128 t16 v0 s0", 32: "k128 t32 v0 s0", 64: "k128 t64 v0 s0", 128: "k128 t128 v0 s0", 256: "k64 t256 v0 s0", 512: "k64 t256 v0 s0", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v2 s-1"},
    (8, 8192, 28672): {8: "k128 t16 v1 s1", 9: "k128 t16 v1 s1", 16: "k128 t16 v1 s1", 32: "k128 t32 v1 s1", 64: "k128 t64 v1 s1", 128: "k128 t128 v0 s0", 256: "k64 t256 v0 s0", 512: "k64 t256 v2 s-1", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v2 s-1"},
    (8, 14336, 4096): {8: "k128 t16 v0 s0", 9: "k128 t16 v0 s0", 16: "k128 t16 v0 s0", 32: "k128 t32 v0 s0", 64: "k128 t64 v0 s0", 128: "k128 t128 v0 s0", 256: "k64 t256 v0 s0", 512: "k64 t256 v0 s0", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v0 s0"},
    (8, 28672, 8192): {8: "k128 t16 v1 s4", 9: "k128 t16 v0 s0", 16: "k128 t16 v0 s0", 32: "k128 t32 v1 s0", 64: "k128 t64 v1 s4", 128: "k128 t128 v0 s0", 256: "k64 t256 v2 s2", 512: "k64 t256 v0 s0", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v0 s0"},
    (4, 4096, 6144): {8: "wo_gemm", 9: "wo_gemm", 16: "wo_gemm", 17: "wo_gemm", 32: "k128 t32 v1 s4", 64: "k128 t64 v0 s0", 128: "k128 t128 v0 s0", 256: "k64 t128 v0 s0", 512: "k64 t256 v0 s0", 1024: "k64 t256 v2 s-1", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v0 s0"},
    (4, 4096, 28672): {8: "k128 t16 v1 s1", 9: "k128 t16 v1 s0", 16: "k128 t16 v1 s0", 32: "k128 t32 v1 s1", 64: "k128 t64 v1 s0", 128: "k128 t128 v0 s0", 256: "k64 t256 v0 s0", 512: "k64 t256 v0 s-1", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v2 s-1"},
    (8, 4096, 6144): {8: "wo_gemm", 9: "k128 t16 v0 s0", 16: "k128 t16 v0 s0", 17: "k64 t32 v0 s0", 32: "k128 t32 v0 s0", 64: "k64 t64 v0 s0", 128: "k64 t128 v0 s0", 256: "k64 t128 v0 s1", 512: "k64 t256 v0 s0", 1024: "k64 t256 v2 s-1", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v0 s0"},
    (8, 4096, 28672): {8: "k128 t16 v1 s0", 9: "k128 t16 v1 s0", 16: "k128 t16 v1 s0", 32: "k128 t32 v1 s0", 64: "k128 t64 v1 s1", 128: "k128 t128 v0 s0", 256: "k64 t256 v0 s0", 512: "k64 t256 v0 s-1", 1024: "k64 t256 v0 s0", 2048: "k64 t256 v0 s0", 4096: "k64 t256 v0 s0"},
}

# W8A8 routes, (codes, K, N) -> {M: route}: "gemv" (w8_gemv on the 16-bit activations, no activation
# quantization), a libqtool_sm90 configuration ("skinny", "narrow", "split", "large", "pingpong") after the fused
# activation quantization, or "cublas" (torch._scaled_mm row-wise, FP8 only; F.scaled_mm block-wise for
# "fp8-block", whose own configurations are block_mm.CONFIGS: "block-skinny", "block-split", "block-large",
# "block-swap", "block-narrow").
# H200, dev/w8a8_sweep.py (BENCHMARKS.md): session 11; fp8-block and the fused 8B shapes session 12; 1-16 tokens
# (w8_gemv without conversion instructions) and every fp8-block cell (with "block-swap") session 13; fp8-block at
# 16-512 tokens on 4096 x 4096, 4096 x 6144 (a row of those batches only: the others take the nearest shape measured
# there, `_nearest_shape`), 4096 x 14336 and 14336 x 4096 with "block-narrow" session 21; fp8 and int8 at 256-8192
# tokens with "pingpong" session 22; the 17-token points session 23. One cell set from whole layers rather than the
# sweep's sum of separately timed kernels: fp8-block 4096 x 4096 at 32 tokens, "gemv" (session 23's table measured
# the block-narrow layer at 0.95x bf16, where the sweep put block-narrow + act_quant at 1.12x and w8_gemv, which has
# no other kernel, at 1.04x). fp8-block at 1-32 tokens re-swept in session 28 with w8_gemv's block scales folded into
# its FP8 decode (1-8 tokens +6-48%): "gemv" now takes 1-8 tokens on every shape but 28672 x 8192 (from 4 tokens).
# fp8-block at 16 tokens re-swept in session 29 with the folded w8_gemv in 64 registers at 9-16 tokens: "gemv" on
# 8192 x 8192 (1.26x against block-narrow's 1.24x); it stays the route on 4096 x 4096, 4096 x 6144 and 14336 x 4096;
# on 4096 x 14336 to 12 tokens (raw w8_gemv 1.32x / 1.31x at 9 / 12, where the layer on cuBLAS ran 1.05x at 9).
# 4096 tokens re-swept in session 47 with the tile orders (session 43 swept them at 2048 and 8192 only).
W8A8: dict[tuple[str, int, int], dict[int, str]] = {
    ('fp8', 4096, 4096): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "gemv", 32: "narrow", 64: "narrow", 128: "narrow", 256: "skinny", 512: "cublas", 1024: "pingpong", 2048: "pingpong-n8", 4096: "pingpong", 8192: "pingpong-n8"},
    ('fp8', 4096, 14336): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "skinny", 32: "skinny", 64: "skinny", 128: "cublas", 256: "large", 512: "skinny", 1024: "pingpong", 2048: "pingpong-s8", 4096: "pingpong", 8192: "pingpong-s8"},
    ('fp8', 8192, 8192): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "narrow", 32: "narrow", 64: "narrow", 128: "skinny-pair", 256: "cublas", 512: "large", 1024: "pingpong", 2048: "pingpong-n8", 4096: "pingpong-s8", 8192: "pingpong-s8"},
    ('fp8', 8192, 28672): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "skinny", 17: "skinny", 32: "skinny", 64: "narrow", 128: "cublas", 256: "skinny", 512: "pingpong", 1024: "pingpong", 2048: "pingpong-s8", 4096: "large", 8192: "large-n8"},
    ('fp8', 14336, 4096): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "narrow", 32: "narrow", 64: "narrow", 128: "narrow", 256: "skinny", 512: "split", 1024: "large", 2048: "large", 4096: "pingpong-s8", 8192: "large"},
    ('fp8', 28672, 8192): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 32: "skinny", 64: "skinny", 128: "skinny", 256: "pingpong", 512: "pingpong", 1024: "pingpong", 2048: "large", 4096: "large-n8", 8192: "large-n8"},
    ('int8', 4096, 4096): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "gemv", 32: "gemv", 64: "narrow", 128: "narrow", 256: "skinny", 512: "large", 1024: "pingpong", 2048: "pingpong-n8", 4096: "pingpong-n8", 8192: "pingpong"},
    ('int8', 4096, 14336): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "skinny", 32: "skinny", 64: "narrow", 128: "skinny-pair", 256: "pingpong", 512: "skinny", 1024: "pingpong", 2048: "pingpong-n8", 4096: "pingpong", 8192: "pingpong-s8"},
    ('int8', 8192, 8192): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "narrow", 32: "skinny", 64: "narrow", 128: "skinny-pair", 256: "pingpong", 512: "pingpong", 1024: "pingpong", 2048: "pingpong-n8", 4096: "pingpong-s8", 8192: "pingpong-s8"},
    ('int8', 8192, 28672): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "skinny", 17: "skinny", 32: "skinny", 64: "skinny", 128: "split", 256: "skinny", 512: "pingpong", 1024: "pingpong", 2048: "pingpong", 4096: "pingpong-n8", 8192: "pingpong-n8"},
    ('int8', 14336, 4096): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "gemv", 32: "narrow", 64: "narrow", 128: "narrow", 256: "skinny", 512: "large", 1024: "pingpong", 2048: "pingpong", 4096: "pingpong-n8", 8192: "pingpong-s8"},
    ('int8', 28672, 8192): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 32: "skinny", 64: "skinny", 128: "skinny", 256: "pingpong", 512: "large", 1024: "pingpong", 2048: "pingpong", 4096: "pingpong-s8", 8192: "pingpong-n8"},
    ('fp8-block', 4096, 4096): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "gemv", 32: "gemv", 64: "block-narrow-overlap", 128: "block-narrow-overlap", 256: "block-skinny-overlap", 512: "cublas", 1024: "block-large-overlap", 2048: "block-large-overlap", 4096: "block-large-overlap", 8192: "block-large-overlap"},
    ('fp8-block', 4096, 14336): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 12: "gemv", 16: "block-skinny-overlap", 17: "block-swap", 32: "block-skinny-overlap", 64: "block-skinny-overlap", 128: "cublas", 256: "block-large-overlap", 512: "block-large-overlap", 1024: "block-large-overlap", 2048: "block-large-overlap", 4096: "block-large-overlap", 8192: "block-large-overlap-s8"},
    ('fp8-block', 8192, 8192): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "block-skinny", 32: "block-narrow-overlap", 64: "block-narrow-overlap", 128: "block-skinny-overlap", 256: "block-split-overlap", 512: "block-split-overlap", 1024: "block-split-overlap", 2048: "block-split-overlap", 4096: "cublas", 8192: "cublas"},
    ('fp8-block', 8192, 28672): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "block-skinny-overlap", 17: "block-swap", 32: "block-skinny-overlap", 64: "block-skinny-overlap", 128: "cublas", 256: "block-split-overlap", 512: "block-split-overlap", 1024: "block-split", 2048: "block-split-overlap", 4096: "block-split-overlap-s8", 8192: "block-large-overlap-s8"},
    ('fp8-block', 14336, 4096): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "gemv", 32: "block-swap-overlap", 64: "block-narrow-overlap", 128: "block-narrow-overlap", 256: "block-skinny-overlap", 512: "block-split-overlap", 1024: "block-split-overlap", 2048: "block-split-overlap", 4096: "cublas", 8192: "cublas"},
    ('fp8-block', 28672, 8192): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "block-swap-overlap", 17: "block-swap", 32: "block-swap", 64: "block-narrow-overlap", 128: "block-skinny-overlap", 256: "block-split-overlap", 512: "block-split-overlap", 1024: "cublas", 2048: "cublas", 4096: "block-split-overlap-s8", 8192: "block-large-overlap-n8"},
    ('fp8', 4096, 6144): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "gemv", 32: "skinny", 64: "narrow", 128: "skinny-pair", 256: "cublas", 512: "skinny", 1024: "cublas", 2048: "large", 4096: "large", 8192: "large"},
    ('fp8', 4096, 28672): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "skinny", 32: "skinny", 64: "skinny", 128: "cublas", 256: "skinny", 512: "cublas", 1024: "cublas", 2048: "large", 4096: "large", 8192: "large"},
    ('int8', 4096, 6144): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "gemv", 32: "skinny", 64: "narrow", 128: "skinny", 256: "large", 512: "skinny", 1024: "large", 2048: "large", 4096: "large", 8192: "large"},
    ('int8', 4096, 28672): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 32: "skinny", 64: "narrow", 128: "skinny", 256: "skinny", 512: "skinny", 1024: "large", 2048: "split", 4096: "split", 8192: "large"},
    ('fp8-block', 4096, 6144): {1: "gemv", 2: "gemv", 4: "gemv", 8: "gemv", 16: "gemv", 17: "gemv", 32: "block-narrow", 64: "block-narrow", 128: "block-skinny", 256: "cublas", 512: "cublas"},
}


# Cells measured on another card, over the tables above (the H200's): a row holds that card's winners at the batches
# swept there; its other batches, and the shapes it has no row for, keep the H200's. The sweeps' --merge writes
# here when they run on that card (dev/mixed_sweep.py, dev/w8a8_sweep.py). The H100 shares the H200's 132 SMs and
# sm_90 but copies at 3.0 TB/s against 4.3 (measured) and slows its clocks under compute-bound GEMMs (session 55).
# Session 56's H100 cells: the sweeps' winners by their margin over the layer as dispatched, the mixed-input ones
# kept only where dev/card_ab.py timed them >= 4% faster than the H200's route under the protocol (identical routes
# read up to 3-5% apart there; the sweep behind a norm and the protocol disagreed on W8 4096 x 4096 at 128 tokens).
# Session 57: fp8-block's GEMV at 1-8 tokens on 8192-row layers runs four blocks per SM (w8_gemv.cu,
# fold_blocks_per_sm; raw 1.77-1.94x bf16 where it ran 1.51-1.56x), so those layers' block-GEMM cells at 1-8 tokens
# went back to it (the H200's route, or "gemv" where the H200's is block-swap).
# Session 67: the wgmma kernel (warpgroup_mm.py, activations by TMA) where it beat the route by >= 4% in three runs
# of dev/wgmma_ab.py (4096 x 4096 at 32 tokens 1.50-1.52x bf16 against 1.43-1.44x, at 128 1.12-1.15x against
# 1.06-1.08x) or one (4096 x 6144 at 32 tokens 1.80x against 1.63x); at 16 tokens these layers take the split GEMV
# ahead of any table (weight_only.route), and elsewhere the routes lead it (BENCHMARKS.md "session 67").
# Session 70: the tall tile ("... tall", 128 rows a warpgroup) at 9-16 tokens, where it led the split GEMV by 6-15%
# (4096 x 4096, 4096 x 6144; 3072 x 3072 the 64-row tile) and CUTLASS by 10% (4096 x 14336 at 16); a wgmma cell now
# displaces the split GEMV (weight_only._wgmma_cell). Symmetric weights only: warpgroup_mm.for_weight.
# Session 73: the post-scale form on 8192 x 8192 at 9-16 tokens (2.30-2.34x bf16 against CUTLASS's 2.15-2.21x), and
# routes for weights with zero points after " | " (measured_route): there the form ran 1.88-1.92x, CUTLASS's default
# schedule 2.06x and the H200 table's 2.23x (session 71's issue-19 table, 16 tokens), which those weights keep.
MIXED_H100: dict[tuple[int, int, int], dict[int, str]] = {
    (4, 4096, 4096): {9: "wgmma w1 s8 tall", 16: "wgmma w1 s8 tall", 32: "wgmma w2 s7", 128: "wgmma w1 s2"},
    (4, 4096, 6144): {9: "wgmma w1 s6 tall", 12: "wgmma w1 s6 tall", 16: "wgmma w1 s6 tall", 32: "wgmma w1 s4 tall"},
    (4, 8192, 28672): {128: "k128 t128 v0 s-1"},
    (8, 8192, 28672): {128: "k128 t128 v0 s-1", 256: "k64 t256 v2 s-1"},
    (8, 4096, 4096): {128: "k64 t128 v2 s0"},
    (8, 4096, 6144): {128: "k128 t128 v0 s0"},
    (8, 8192, 8192): {128: "k64 t128 v2 s-1"},
    (8, 14336, 4096): {128: "k64 t128 v0 s0"},
    (4, 4096, 14336): {16: "wgmma w1 s3 tall"},
    (4, 3072, 3072): {9: "wgmma w1 s8", 16: "wgmma w1 s8"},
    (4, 8192, 8192): {9: "wgmma w2 s2 post | k128 t16 v1 s4", 16: "wgmma w2 s2 post | k128 t16 v1 s0"},
    (4, 14336, 4096): {16: "wo_gemm | k64 t0 v0 s0"},
}
W8A8_H100: dict[tuple[str, int, int], dict[int, str]] = {
    ('fp8', 4096, 4096): {1024: "large"},
    ('fp8', 4096, 14336): {8192: "large-s8"},
    ('fp8', 8192, 8192): {4096: "pingpong-n8"},
    ('fp8', 14336, 4096): {8192: "pingpong"},
    ('fp8-block', 4096, 4096): {1024: "cublas"},
    ('fp8-block', 4096, 14336): {16: "gemv", 1024: "block-split-overlap", 8192: "block-large-overlap"},
    ('fp8-block', 8192, 8192): {4096: "block-large-overlap", 8192: "block-split-overlap-n8"},
    ('fp8-block', 8192, 28672): {4: "block-skinny-overlap", 8: "block-skinny-overlap", 1024: "block-split-overlap", 4096: "block-large-overlap", 8192: "cublas"},
    ('fp8-block', 14336, 4096): {4096: "block-split-overlap-s8", 8192: "block-large-overlap"},
    ('fp8-block', 28672, 8192): {4: "gemv", 8: "gemv", 16: "block-narrow-overlap", 1024: "block-split-overlap", 4096: "block-large-overlap", 8192: "cublas"},
    ('int8', 4096, 4096): {1024: "split"},
    ('int8', 8192, 8192): {1024: "split", 4096: "pingpong-n8"},
    ('int8', 8192, 28672): {4096: "split-n8", 8192: "split-n8"},
    ('int8', 14336, 4096): {1024: "split"},
    ('int8', 28672, 8192): {4096: "split-n8", 8192: "split-s8"},
}
CARD_TABLES = {"H100": {"mixed": "MIXED_H100", "w8a8": "W8A8_H100"}}  # card -> table -> its cells' module name
CARDS = ("H200", *CARD_TABLES)
_card: list[str] = []  # the card chosen, once per process


def card() -> str:
    """The card whose cells apply: QTOOL_TUNING_CARD where set ("H200": the H200's tables alone), else the first
    of CARD_TABLES that the GPU's name holds, else "H200"."""
    if not _card:
        chosen = os.environ.get("QTOOL_TUNING_CARD")
        if chosen is None:
            name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
            chosen = next((c for c in CARD_TABLES if c in name), "H200")
        if chosen not in CARDS:
            raise ValueError(f"QTOOL_TUNING_CARD must be one of {', '.join(CARDS)}; got {chosen!r}")
        _card.append(chosen)
    return _card[0]


def _table(name: str) -> dict:
    """The table "mixed" or "w8a8" for this card: the H200's with the card's cells over it. Read at call time
    (from the memoizing callers), so tests can replace a table."""
    base = MIXED if name == "mixed" else W8A8
    cells = globals()[CARD_TABLES[card()][name]] if card() in CARD_TABLES else {}
    if not cells:
        return base
    return {shape: {**base.get(shape, {}), **cells.get(shape, {})} for shape in {**base, **cells}}


@torch.compiler.assume_constant_result  # like _ranked_shapes: traced once, kept as a constant
def _row(table: str, shape: tuple) -> tuple:
    """((batch, route), ...) of one measured shape, by batch."""
    key = (table, shape)
    if key not in _rows:
        _rows[key] = tuple(sorted(_table(table)[shape].items()))
    return _rows[key]


_nearest: dict[tuple, tuple] = {}  # (kind, k, n, table) -> ((shape, first, last batch), ...)
_rows: dict[tuple, tuple] = {}  # (table, shape) -> _row's answer
_looked_up: dict[tuple, str | None] = {}  # lookup's arguments -> its answer
_schedules: dict[tuple, dict | str] = {}  # (bits, k_padded, n, m, group, zero) -> mixed_schedule's answer
SCHEDULES_MAX = 4096  # answers kept per memo (a distinct batch size per shape each; an eager prefill of many
# lengths adds): past it the memo starts over


@torch.compiler.assume_constant_result  # torch.compile calls it once while tracing and keeps the answer
def _ranked_shapes(kind: int | str, k: int, n: int, table: str) -> tuple:
    """The measured shapes of `kind`, nearest K x N first (log distance), each with its first and last batch."""
    key = (kind, k, n, table)
    if key not in _nearest:
        rows = _table(table)
        shapes = sorted((s for s in rows if s[0] == kind),
                        key=lambda s: abs(math.log(s[1] / k)) + abs(math.log(s[2] / n)))
        _nearest[key] = tuple((s, min(rows[s]), max(rows[s])) for s in shapes)
    return _nearest[key]


def _nearest_shape(kind: int | str, k: int, n: int, m: int, table: str) -> tuple | None:
    """The measured shape nearest K x N among those whose rows come closest to m tokens (the rows covering m, if
    any): a row measured at some batches only (a shape swept at 16-512 tokens, say) serves those, and its
    neighbours the rest; where no row covers m, the nearest of those reaching furthest toward it."""
    best, best_gap = None, None
    for shape, first, last in _ranked_shapes(kind, k, n, table):  # nearest first: a later one must come closer
        gap = max(first - m, m - last, 0)
        if gap == 0:  # covers m: with full rows the nearest does, and one step is all a call pays
            return shape
        if best_gap is None or gap < best_gap:
            best, best_gap = shape, gap
    return best


def clear_cache() -> None:
    """Forget the nearest shapes, rows and schedules found so far (after a table is replaced; the card stays)."""
    _nearest.clear()
    _rows.clear()
    _looked_up.clear()
    _schedules.clear()


def lookup(table: str, kind: int | str, k: int, n: int, m: int, within: bool = False) -> str | None:
    """The measured route of `table` ("mixed" or "w8a8") for m tokens of a `kind` (bits, or "fp8" / "int8")
    K x N weight; None where nothing was measured, or, when `within`, for m outside the measured batches. Kept
    per argument tuple like mixed_schedule's answers (an eager W8A8 call paid ~3.5 us for the walk)."""
    key = (table, kind, k, n, m, within)
    if torch.compiler.is_compiling():
        return _lookup(*key)
    if key not in _looked_up:
        if len(_looked_up) >= SCHEDULES_MAX:
            _looked_up.clear()
        _looked_up[key] = _lookup(*key)
    return _looked_up[key]


def _lookup(table: str, kind: int | str, k: int, n: int, m: int, within: bool) -> str | None:
    shape = _nearest_shape(kind, k, n, m, table)
    if shape is None:
        return None
    cells = _row(table, shape)
    if within and not cells[0][0] <= m <= cells[-1][0]:
        return None
    return next((route for cm, route in cells if cm >= m), cells[-1][1])


def parse(route: str) -> dict | str:
    """A mixed route: "k128 t64 v0 s-1" -> mixed_linear's keyword arguments; "wo_gemm", "dequant" and the wgmma
    kernel's "wgmma" (its plan) or "wgmma w1 s6" (warpgroups, split: warpgroup_mm.route_plan) as they are. One
    route: a cell's two (ZERO_ROUTE) are chosen between first (measured_route)."""
    if ZERO_ROUTE in route:
        raise ValueError(f"two routes, for weights without and with zero points: choose one first; got {route!r}")
    if route in ("wo_gemm", "dequant") or route.split()[0] == "wgmma":
        return route
    parts = {p[0]: int(p[1:]) for p in route.split()}
    return {"ktile": parts["k"], "token_tile": parts["t"], "variant": parts["v"], "split": parts["s"]}


ZERO_ROUTE = " | "  # a mixed cell "A | B": A for symmetric weights, B for weights with zero points, measured apart


def route_for(cell: str, zero: bool) -> str:
    """A mixed cell's route for a weight without (`zero` False) or with zero points: "A | B" -> A or B; "A" -> A."""
    symmetric, _, asymmetric = cell.partition(ZERO_ROUTE)
    return asymmetric if zero and asymmetric else symmetric


def measured_route(bits: int, k: int, n: int, m: int, zero: bool = False) -> dict | str | None:
    """The mixed route for m tokens of a bits-wide K x N weight (`zero`: with zero points), parsed; None where
    nothing was measured. A cell's route after ZERO_ROUTE serves weights with zero points: session 73 (H100) timed
    the post-scale form's cell on 8192 x 8192 at 9-16 tokens 2.30x bf16 on symmetric weights and 1.88-1.92x with
    zero points, where a CUTLASS schedule ran 2.06x."""
    route = lookup("mixed", bits, k, n, m)
    return None if route is None else parse(route_for(route, zero))


def plain_schedule(m: int, group: int, k_padded: int) -> dict:
    """The schedule every tuned one was measured against: the batch's own token tile, 128-row tiles, 128-k stages
    where the batch and groups take them (else 64), split-K only where the tiles leave SMs idle. For weights no
    table covers."""
    ktile = 128 if takes_ktile(128, m, group, k_padded) else 64
    return {"ktile": ktile, "token_tile": 0, "variant": 0, "split": 0}


def fit(schedule: dict, m: int, group: int, k_padded: int) -> dict:
    """A measured schedule made valid for this weight: 64-k stages where its groups do not take 128, and the
    tiles those stages build (token tiles of 32 or more, 128-row tiles). The result passes `check_schedule`."""
    try:
        check_schedule(m, group, k_padded, 0, **{key: schedule[key] for key in ("ktile", "variant", "token_tile")})
        return schedule
    except ValueError:
        return {"ktile": 64, "token_tile": max(32, schedule["token_tile"]), "variant": 0, "split": schedule["split"]}


def mixed_schedule(bits: int, k_padded: int, n: int, m: int, group: int, zero: bool = False) -> dict | str:
    """The Hopper copy's route for m tokens of a bits-wide [n, k_padded] weight with `group` (`zero`: with zero
    points): the measured route fitted to the weight (`fit`), "wo_gemm" / "dequant" as measured, or the plain
    schedule where nothing was. Kept per argument tuple: an eager call otherwise walks the table, parses and checks
    the schedule each time (~7 us of the dispatcher's host time at 16-256 tokens; dev/route_cost.py). Callers must
    not change the returned dict."""
    key = (bits, k_padded, n, m, group, zero)
    found = None if torch.compiler.is_compiling() else _schedules.get(key)
    if found is None:
        route = measured_route(bits, k_padded, n, m, zero)
        if route is None:
            found = plain_schedule(m, group, k_padded)
        else:
            found = fit(route, m, group, k_padded) if isinstance(route, dict) else route
        if not torch.compiler.is_compiling():
            if len(_schedules) >= SCHEDULES_MAX:
                _schedules.clear()
            _schedules[key] = found
    return found


# Where w8_gemv's PDL twin runs on static weights: "rule" (gemv_pdl's measured rule) or "all" (to 8 tokens on every
# shape: the A/B in the model, where the kernel before is often Inductor's, launched with PDL since session 24).
GEMV_PDL = os.environ.get("QTOOL_GEMV_PDL", "rule")
if GEMV_PDL not in ("rule", "all"):
    raise ValueError(f"QTOOL_GEMV_PDL must be 'rule' or 'all', got {GEMV_PDL!r}")


def gemv_pdl(m: int, n: int, k: int) -> bool:
    """Whether w8_gemv runs its programmatic-dependent-launch twin (first tiles' weights loaded before waiting for
    the kernel before) on a static weight [n, k] at m tokens: where session 19 measured it faster (H200, graph
    replay, W8A8 and W8A16 at 1 and 8 tokens): layers with more rows than columns, e.g. int8 4096 x 6144 1.50 ->
    2.01x bf16, 4096 x 14336 at 8 tokens 1.57 -> 1.76x; it lost 5-31% where k >= n >= 4096 and at 16 tokens
    (back-to-back copies of one layer). GEMV_PDL = "all" takes it everywhere to 8 tokens."""
    return m <= 8 and (n > k or GEMV_PDL == "all")
