"""The residual add and RMSNorm before a 4-bit GEMV, and that GEMV's int8 planes, as one kernel in the compiled
decode step: an Inductor graph pass (the model's code is not forked).

Why: at 1-8 tokens the 4-bit GEMVs take x as two int8 planes (int8_planes.py), written by x_planes, a launch of its
own per projection input. In a Llama-style layer that input is `rms_norm(residual + out) * weight`, which Inductor
computes in one kernel of its own just before: two launches where one can do both (csrc/norm_planes.cu), 64 per 8B
step. The planes then cost nothing, so 1-2 tokens take them on every shape (int8_planes._planes_by_shape, `free`).

How: transformers' decoder layer adds the residual in Python, calls the norm module (quantize/norms.py: F.rms_norm)
and the fused q/k/v or gate/up QuantLinear, whose planes route calls qtool_cuda.x_planes on the normalized rows. The
pattern below is traced from that same code (F.rms_norm under Inductor's decompositions, so it follows each torch
release's form of the norm) and is replaced by qtool_cuda.norm_planes, which also returns the sum for the residual.
Without the add (the first layer's norm reads the embedding) the norm alone is folded. Where nothing matches (another
norm, a pad before x_planes), x_planes stays: slower, never wrong.

On by default since session 51's A/B (int8_planes.NORM_PLANES; QTOOL_NORM_PLANES=0: off): quantize/bench.py's decode
compile options carry the pass, and while one is in use (IN_USE) the layers with QuantLinear.norm_input count their
planes as free.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

EPS_PLACEHOLDER = 2.0**-16  # traced as itself (exact in float32), then matched as any epsilon
# Rewrites made by every pass of this process (`qtool bench` and dev/step_ab.py record it: an A/B whose model made
# none measured nothing of this lever). Counts compiles, not cached graphs: quantize/bench.py turns Inductor's FX
# graph cache off where the pass is on.
REWRITES = [0]
# Whether a pass was made in this process (make_pass): only then do weight_only's routes count a norm's planes as
# free. A model compiled without the pass (torch.compile outside `qtool bench`) keeps the measured rule, where x_planes
# is a launch of its own.
IN_USE = [False]


def _search_with_residual(ops, flat: bool):
    def search(residual, x, weight, eps):
        s = residual + x
        n = F.rms_norm(s, (s.shape[-1],), weight, eps)
        planes, xscale = ops.x_planes(n if flat else n.reshape(-1, n.shape[-1]), 1)
        return s, planes, xscale
    return search


def _replace_with_residual(ops):
    def replace(residual, x, weight, eps):
        k = x.shape[-1]
        s, planes, xscale = ops.norm_planes(x.reshape(-1, k).contiguous(), residual.reshape(-1, k).contiguous(),
                                            weight.contiguous(), eps, 1)
        return s.view(x.shape), planes, xscale
    return replace


def _search_norm(ops, flat: bool):
    def search(x, weight, eps):
        n = F.rms_norm(x, (x.shape[-1],), weight, eps)
        return ops.x_planes(n if flat else n.reshape(-1, n.shape[-1]), 1)
    return search


def _replace_norm(ops):
    def replace(x, weight, eps):
        _, planes, xscale = ops.norm_planes(x.reshape(-1, x.shape[-1]).contiguous(), None, weight.contiguous(), eps, 1)
        return planes, xscale
    return replace


def _fits(match) -> bool:
    """Whether the kernel takes the matched rows: float16 / bfloat16, K a multiple of 64 up to 32768
    (csrc/wo_kernels.h, kNormPlanesMaxK), the weight [K] and the residual (x's shape, no broadcast) of x's dtype,
    rows starting 16-byte aligned."""
    def val(name: str):
        node = match.kwargs.get(name)
        return node.meta.get("val") if node is not None else None

    x, weight = val("x"), val("weight")
    residual = val("residual") if "residual" in match.kwargs else x
    if x is None or weight is None or residual is None:
        return False
    k = x.shape[-1]
    return (x.dtype in (torch.bfloat16, torch.float16) and isinstance(k, int) and 0 < k <= 32768 and k % 64 == 0
            and weight.dtype == x.dtype and tuple(weight.shape) == (k,)
            and all(t.dtype == x.dtype and t.shape == x.shape and t.storage_offset() % 8 == 0 for t in (x, residual)))


def _tracer(reshape: bool):
    """fwd_only, with the in-place epsilon add of some releases' rms_norm decomposition made functional, as
    Inductor's own graphs have it by the time the pass runs; `reshape`: the rows' view before x_planes as the
    aten.reshape the pre-pass graph can still hold (the trace makes it a view)."""
    from torch._inductor.pattern_matcher import fwd_only

    def trace(fn, args, **kwargs):
        gm = fwd_only(fn, args, **kwargs)
        for node in gm.graph.nodes:
            if node.target is torch.ops.aten.add_.Scalar:
                node.target = torch.ops.aten.add.Scalar
            elif reshape and node.target is torch.ops.aten.view.default:
                node.target = torch.ops.aten.reshape.default
        gm.recompile()
        return gm
    return trace


@functools.cache
def pattern_passes(ops, device: str) -> tuple:
    """Two PatternMatcherPasses for `ops` (a namespace with x_planes and norm_planes as qtool_cuda's; tests pass
    stand-ins), traced on `device`: with the residual add first, then the norm alone."""
    from torch._inductor.pattern_matcher import PatternMatcherPass, register_replacement

    with_residual, norm_only = PatternMatcherPass(), PatternMatcherPass()
    # rows [B, T, K] viewed (or reshaped) to [m, K] before x_planes, or [m, K] already; dtypes and sizes match any
    for flat, reshape in ((False, False), (False, True), (True, False)):
        shape = (4, 128) if flat else (2, 2, 128)
        x = [torch.randn(shape, dtype=torch.bfloat16, device=device) for _ in range(2)]
        weight = torch.randn(128, dtype=torch.bfloat16, device=device)
        register_replacement(_search_with_residual(ops, flat), _replace_with_residual(ops), [*x, weight],
                             _tracer(reshape), [with_residual], extra_check=_fits,
                             scalar_workaround={"eps": EPS_PLACEHOLDER})
        register_replacement(_search_norm(ops, flat), _replace_norm(ops), [x[0], weight], _tracer(reshape),
                             [norm_only], extra_check=_fits, scalar_workaround={"eps": EPS_PLACEHOLDER})
    return with_residual, norm_only


def make_pass(ops=None, device: str = "cuda"):
    """The post-grad graph pass for torch.compile's options (`post_grad_custom_pre_pass`): qtool_cuda's ops unless
    `ops` is given. A CustomGraphPass, so Inductor's FX graph cache keys on this file. The patterns are traced here,
    before any compile (tracing runs the search code on small real tensors)."""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    passes = pattern_passes(ops if ops is not None else torch.ops.qtool_cuda, device)
    IN_USE[0] = True

    class NormPlanesPass(CustomGraphPass):
        """Rewrites add -> rms_norm -> x_planes (and rms_norm -> x_planes) into norm_planes; counts its rewrites."""

        def __init__(self) -> None:
            self.rewrites = 0

        def __call__(self, graph: torch.fx.Graph) -> None:
            for patterns in passes:
                made = patterns.apply(graph)
                self.rewrites += made
                REWRITES[0] += made

        def uuid(self) -> bytes:
            return hashlib.sha256(Path(__file__).read_bytes()).digest()

    return NormPlanesPass()
