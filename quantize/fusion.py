"""Horizontal fusion of quantized projections that read the same input, for decode speed.

At batch-1 decode every QuantLinear is one GEMV launch whose fixed cost dominates small layers
(k_proj and v_proj have 1024 outputs on Llama-3-8B). q/k/v read the same hidden states, as do
gate/up, so each group can run as ONE QuantLinear whose rows are the members' rows stacked
(N = Nq + Nk + Nv): 7 launches per Llama block become 4. Rows are independent in every layout we
store (checkpoint: per row; kernel layout: per 16-row stripe, kernels/layout.py), so stacking the
checkpoint buffers along N is the whole transformation; the fused layer repacks itself for the
CUDA kernels at its first eager call, as any QuantLinear does.

The model's forward still calls q_proj, k_proj, v_proj one by one, so the members are replaced by
a head/tail pair sharing a `_FusedGroup`:
- `FusedHead` (the first member, the one forward calls first) runs the fused layer, returns its own
  slice and leaves the others pending on the group, with the input they came from;
- `FusedTail` takes its pending slice. Called with another input tensor, or twice for one head
  call, it finds no slice for that input and computes the fused layer itself (correct, slower).
  "Another input" is decided by identity (`is`): a tensor modified in place between the head's
  and the tail's call would get the stale slice; transformers' projections never see that.
The slices are views of the fused output along the last dim (no copy): `.view(*lead, heads,
head_dim)` only splits the last dim, which is contiguous, so transformers' reshapes work on them.

torch.compile: `pending` is an attribute of a plain Python object, which Dynamo traces as a side
effect; within one graph the head sets it and the last tail clears it, so the identity test is
decided at trace time and no slice outlives the graph (no extra graph output, no CUDA-graph memory
held). The compiled code then replays one Python store (pending = None) per group after each call,
on the CPU while a CUDA-graph replay runs (not measured yet).
Tests check compiled logits against eager (backends eager, aot_eager) with fullgraph=True.

Fusion is an inference-time transform: a fused model's state dict would not describe the checkpoint
(members renamed and merged), so `state_dict()` raises; save before fusing. `qtool quantize` never
fuses; `qtool bench` does (--no-fuse to compare).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .linear import QuantLinear, kernel_args, set_submodule
from .mappings import ArchitectureError, find_architecture, find_blocks
from .scheme import Strategy

# Checkpoint tensors stacked along N (dim 0); QuantLinear's other buffers are excluded by `incompatibility`
# (weight_g_idx, input_scale) or rebuilt (weight_shape).
_ROW_TENSORS = ("weight_packed", "weight", "weight_scale", "weight_zero_point", "bias")


class FusedModelError(RuntimeError):
    """A fused model was asked for a state dict; the message says what to do instead."""


class _FusedGroup:
    """What a head and its tails share: the fused layer, each member's width, and the pending slices.

    pending: (x, slices) after the head ran on x; slices[i] is tail i's view [..., N_(i+1)] of the
    fused output, None once taken; pending is None again once every tail took its slice. One
    attribute, so a compiled graph replays a single store per group after it runs.
    """

    def __init__(self, layer: QuantLinear, sizes: tuple[int, ...]) -> None:
        self.layer = layer
        self.sizes = sizes
        self.pending: tuple[torch.Tensor, tuple[torch.Tensor | None, ...]] | None = None
        # quantize/rotary.py: the whole output kept for the attention (which clears it), where keep_output is set
        self.keep_output = False
        self.output: torch.Tensor | None = None


class FusedHead(nn.Module):
    """Stands in for the first member of a fused group: runs the fused layer, returns its own slice."""

    def __init__(self, group: _FusedGroup) -> None:
        super().__init__()
        self.fused = group.layer  # registered here only, so .to() and .modules() reach it once
        self.group = group
        self.in_features, self.out_features = group.layer.in_features, group.sizes[0]
        self.register_state_dict_pre_hook(refuse_state_dict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N_0], a view of the fused output [..., N]."""
        out = self.fused(x)
        head, *tails = out.split(self.group.sizes, dim=-1)
        self.group.pending = (x, tuple(tails))
        if self.group.keep_output:
            self.group.output = out
        return head

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused widths={self.group.sizes}"


class FusedTail(nn.Module):
    """Stands in for a later member: returns the slice its head computed for the same input."""

    def __init__(self, group: _FusedGroup, index: int) -> None:
        super().__init__()
        self.group = group  # not a submodule: the head owns the fused layer
        self.index = index  # into pending slices; this member is member index + 1 of the group
        self.start = sum(group.sizes[: index + 1])
        self.in_features, self.out_features = group.layer.in_features, group.sizes[index + 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N_i]: the head's slice when it ran on this very tensor, else computed here."""
        pending = self.group.pending
        part = pending[1][self.index] if pending is not None and pending[0] is x else None
        if part is None:
            return self.group.layer(x)[..., self.start:self.start + self.out_features]
        rest = tuple(None if i == self.index else p for i, p in enumerate(pending[1]))
        # Cleared once all are taken: no tensor is held between forward passes (nor leaves a graph).
        self.group.pending = None if all(p is None for p in rest) else (x, rest)
        return part

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, slice={self.index + 1}"


def refuse_state_dict(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    raise FusedModelError(f"{prefix.rstrip('.') or 'this module'} holds projections fused for inference "
                          "(quantize.fusion); its state dict is not a checkpoint layout. Save the model "
                          "before fuse_projections, or reload it unfused.")


def incompatibility(members: list[nn.Module]) -> str | None:
    """Why `members` cannot run as one layer, or None when they can.

    They must all be QuantLinears of one scheme whose scales stack along the rows
    (`_scheme_incompatibility`), with equal in_features, one device, no act-order (each layer has
    its own input permutation), the same bias presence and tensor dtypes; and carry no hooks (fusion
    would drop them). Or all plain nn.Linear (a float baseline fused like the quantized model, `qtool
    bench --fuse-baseline`) with equal in_features, one device and dtype, the same bias presence, no hooks.
    """
    first = members[0]
    if all(type(m) is QuantLinear for m in members):
        reason = _scheme_incompatibility(members)
        if reason is not None:
            return reason
        if first.scheme.weights.actorder:
            return "act-order weights"
        if any(m.scheme != first.scheme for m in members):
            return "different schemes"
    elif not all(type(m) is nn.Linear for m in members):
        return "neither all QuantLinear nor all nn.Linear"
    for m in members:
        if m.in_features != first.in_features:
            return "different in_features"
        if _device(m) != _device(first):
            return "different devices"
        if m._forward_hooks or m._forward_pre_hooks:
            return "a member has forward hooks"
    for name in _ROW_TENSORS:  # torch.cat would promote mixed dtypes silently (nn.Linear: weight, bias)
        if len({None if (t := getattr(m, name, None)) is None else t.dtype for m in members}) > 1:
            return f"{name} differs in presence or dtype"
    return None


def _device(m: QuantLinear | nn.Linear) -> torch.device:
    return m.weight_scale.device if isinstance(m, QuantLinear) else m.weight.device


def _scheme_incompatibility(members: list[QuantLinear]) -> str | None:
    """Weight-only integer layers need group or channel scales (the kernels' layouts). W8A8 layers
    stack per-channel and block scales (blocks whole in every member), not a per-tensor weight scale
    (one number per member), and a static activation scale only when all members share it."""
    first = members[0]
    act, w = first.scheme.input_activations, first.scheme.weights
    if act is None:
        if kernel_args(first.scheme) is None:
            return f"scheme {first.scheme.describe()} is not weight-only integer with group or channel scales"
        return None
    if w.strategy is Strategy.TENSOR:
        return "per-tensor weight scales"
    if w.strategy is Strategy.BLOCK and any(m.out_features % w.block_structure[0] for m in members):
        return "a member's rows do not fill whole weight blocks"
    if not act.dynamic and any(not torch.equal(m.input_scale, first.input_scale) for m in members):
        return "different static activation scales"
    return None


def fuse_layers(members: list[QuantLinear] | list[nn.Linear]) -> QuantLinear | nn.Linear:
    """One layer computing all members: out [..., sum N_i] = members' outputs concatenated.

    Assumes `incompatibility(members)` is None. Built on the meta device, then every buffer is set
    to its stacked tensor, so no zero-filled copy of the fused weight is allocated.
    """
    first = members[0]
    if type(first) is nn.Linear:
        fused = nn.Linear(first.in_features, sum(m.out_features for m in members), bias=first.bias is not None,
                          device="meta", dtype=first.weight.dtype)
        for name in ("weight", "bias"):
            if getattr(first, name) is not None:
                stacked = torch.cat([getattr(m, name).detach() for m in members], dim=0)
                setattr(fused, name, nn.Parameter(stacked, requires_grad=False))
        return fused
    n = sum(m.out_features for m in members)
    k = first.in_features
    device = first.weight_scale.device
    bias_dtype = first.bias.dtype if first.bias is not None else torch.float32
    fused = QuantLinear(k, n, first.scheme, bias=first.bias is not None, dtype=bias_dtype, device="meta")
    for name in _ROW_TENSORS:
        if getattr(first, name, None) is None:
            continue
        stacked = torch.cat([getattr(m, name).detach() for m in members], dim=0)
        setattr(fused, name, nn.Parameter(stacked, requires_grad=False) if name == "bias" else stacked)
    if first.scheme.weights.packed:
        fused.weight_shape = torch.tensor([n, k], dtype=torch.int64, device=device)
    if hasattr(first, "input_scale"):  # equal in every member (`incompatibility`)
        fused.input_scale = first.input_scale.detach().clone()
    left = [name for name, t in (*fused.named_buffers(), *fused.named_parameters()) if t.is_meta]
    if left:
        raise AssertionError(f"fuse_layers left {left} unset: _ROW_TENSORS misses a QuantLinear buffer")
    return fused


def fuse_group(block: nn.Module, names: tuple[str, ...]) -> bool:
    """Replace the linears `names` of `block` (call order) by a head/tail pair; False (and the block
    unchanged) when a name is missing or `incompatibility` finds a reason."""
    try:
        members = [block.get_submodule(name) for name in names]
    except AttributeError:
        return False
    if len(members) < 2 or incompatibility(members) is not None:
        return False
    fused = fuse_layers(members)
    if isinstance(fused, QuantLinear):
        fused.planes_fuse = fused.norm_input = True  # its input is an RMSNorm's (q/k/v, gate/up): QuantLinear
    group = _FusedGroup(fused, tuple(m.out_features for m in members))
    set_submodule(block, names[0], FusedHead(group))
    for i, name in enumerate(names[1:]):
        set_submodule(block, name, FusedTail(group, i))
    return True


def fuse_projections(model: nn.Module) -> int:
    """Fuse, in every decoder block, each of the architecture's `fusions` groups whose members
    qualify (`incompatibility`); returns how many groups were fused (0 for an architecture
    mappings.py does not describe). In place; inference only: see the module docstring."""
    try:
        arch = find_architecture(model)
        _, blocks = find_blocks(model, arch)
    except ArchitectureError:
        return 0
    return sum(fuse_group(block, names) for block in blocks for names in arch.for_block(block).fusions)
