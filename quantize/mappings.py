"""Architecture knowledge as data: where the decoder blocks are, which layers feed which.

A new model family is a new `Architecture` entry, not a new branch in the code. Names are
relative to one decoder block. `Smooth` entries say where per-channel scales can migrate
(AWQ, SmoothQuant): out of `prev` (a norm or a linear) and into the linears in `balance`,
which all read `prev`'s output and nothing else. `fusions` name the linears that read the same
input one after another in the model's forward, in call order (quantize/fusion.py runs each group
as one layer at inference).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn as nn


@dataclass(frozen=True)
class Smooth:
    """`prev`'s output feeds exactly the linears `balance`; `inspect` is the module whose output
    scores candidate scales (AWQ), `None` meaning the balance linears themselves."""

    prev: str
    balance: tuple[str, ...]
    inspect: str | None = None


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    block_classes: tuple[str, ...]  # decoder layer class names, for models whose model_type is not listed
    blocks: tuple[str, ...]  # candidate paths of the ModuleList of decoder blocks, first that exists wins
    sequential: tuple[tuple[str, ...], ...]  # true-sequential order: each group reads the previous group's output
    smooth: tuple[Smooth, ...]
    norm_offset: float = 0.0  # 1.0 where RMSNorm multiplies by (1 + weight) (Gemma)
    # Linears that read the same tensor, in the order forward calls them (first one first); empty
    # where the checkpoint already fuses them (Phi-3's qkv_proj) or the order is not known.
    fusions: tuple[tuple[str, ...], ...] = ()
    # Linears whose outputs enter the model only through the attention scores q k^T (AWQ leaves
    # their ranges unclipped, as the reference implementation does).
    attention_scores: tuple[str, ...] = ()

    def for_block(self, block: nn.Module) -> Architecture:
        """This entry with every `*` in a name replaced by each child of the module before it in `block`
        (`mlp.experts.*.up_proj` -> `mlp.experts.0.up_proj`, ...): a mixture of experts is one entry
        whatever its number of experts. Entries without `*` are returned as they are."""
        names = [n for g in (*self.sequential, *self.fusions) for n in g]
        names += [n for s in self.smooth for n in (s.prev, *s.balance)]
        if not any("*" in n for n in names):
            return self
        smooth = tuple(Smooth(inst[0], inst[1:-1], inst[-1] or None) for s in self.smooth
                       for inst in _instances((s.prev, *s.balance, s.inspect or ""), block))
        return replace(self, sequential=tuple(tuple(n for name in g for (n,) in _instances((name,), block))
                                              for g in self.sequential),
                       fusions=tuple(inst for f in self.fusions for inst in _instances(f, block)), smooth=smooth)


def _instances(names: tuple[str, ...], block: nn.Module) -> list[tuple[str, ...]]:
    """`names` once per child index of the module the first `*` name points into (none when it is missing)."""
    starred = next((n for n in names if "*" in n), None)
    if starred is None:
        return [names]
    try:
        container = block.get_submodule(starred.split("*")[0].rstrip("."))
    except AttributeError:
        return []
    return [tuple(n.replace("*", index) for n in names) for index, _ in container.named_children()]


_LLAMA_SEQ = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
# Checked against transformers 5.x modeling code of every model_type below: attention calls q, k, v
# on hidden_states in that order, the MLP computes act(gate_proj(x)) * up_proj(x).
_LLAMA_FUSIONS = (_QKV, ("mlp.gate_proj", "mlp.up_proj"))
_QK = ("self_attn.q_proj", "self_attn.k_proj")


def _llama_smooth(mlp_norm: str) -> tuple[Smooth, ...]:
    return (
        Smooth("input_layernorm", _QKV, inspect="self_attn"),
        # v -> o is only valid when both have the same width (no grouped-query attention); see `applicable`.
        Smooth("self_attn.v_proj", ("self_attn.o_proj",)),
        Smooth(mlp_norm, ("mlp.gate_proj", "mlp.up_proj"), inspect="mlp"),
        Smooth("mlp.up_proj", ("mlp.down_proj",)),
    )


# Mixtral, Qwen3-MoE (transformers 5): experts become per-expert linears (quantize/moe.py); the router
# `mlp.gate` is no Linear and stays in float. The norm -> experts mapping is left out: the router reads
# that norm too. Qwen3-MoE's dense layers (mlp_only_layers) use the plain mlp names.
_EXPERT = "mlp.experts.*."
_MOE_SEQ = (_QKV, ("self_attn.o_proj",),
            ("mlp.gate_proj", "mlp.up_proj", _EXPERT + "gate_proj", _EXPERT + "up_proj"),
            ("mlp.down_proj", _EXPERT + "down_proj"))
_MOE_SMOOTH = (*_llama_smooth("post_attention_layernorm"), Smooth(_EXPERT + "up_proj", (_EXPERT + "down_proj",)))
_MOE_FUSIONS = (*_LLAMA_FUSIONS, (_EXPERT + "gate_proj", _EXPERT + "up_proj"))

_BLOCKS = ("model.layers", "model.language_model.layers", "language_model.model.layers")

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("llama", ("llama", "mistral", "qwen2", "qwen3", "smollm3", "granite"),
                 ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"),
                 _BLOCKS, _LLAMA_SEQ, _llama_smooth("post_attention_layernorm"), fusions=_LLAMA_FUSIONS,
                 attention_scores=_QK),
    # Gemma 2/3 have sandwich norms: post_attention_layernorm sits after attention, before the
    # residual add, so it does NOT feed the MLP; pre_feedforward_layernorm does.
    Architecture("gemma", ("gemma2", "gemma3", "gemma3_text"), ("Gemma2DecoderLayer", "Gemma3DecoderLayer"),
                 _BLOCKS, _LLAMA_SEQ, _llama_smooth("pre_feedforward_layernorm"), norm_offset=1.0,
                 fusions=_LLAMA_FUSIONS, attention_scores=_QK),
    Architecture("gemma1", ("gemma",), ("GemmaDecoderLayer",), _BLOCKS, _LLAMA_SEQ,
                 _llama_smooth("post_attention_layernorm"), norm_offset=1.0, fusions=_LLAMA_FUSIONS,
                 attention_scores=_QK),
    Architecture("moe", ("mixtral", "qwen3_moe"), ("MixtralDecoderLayer", "Qwen3MoeDecoderLayer"), _BLOCKS,
                 _MOE_SEQ, _MOE_SMOOTH, fusions=_MOE_FUSIONS, attention_scores=_QK),
    Architecture("phi3", ("phi3",), ("Phi3DecoderLayer",), _BLOCKS,
                 (("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",)),
                 (Smooth("input_layernorm", ("self_attn.qkv_proj",), inspect="self_attn"),
                  Smooth("post_attention_layernorm", ("mlp.gate_up_proj",), inspect="mlp")),
                 # q, k and v in one linear: its output is mostly q and k, so it stays unclipped too.
                 attention_scores=("self_attn.qkv_proj",)),
)


class ArchitectureError(ValueError):
    """The model's architecture is not described in `ARCHITECTURES`."""


def find_architecture(model: nn.Module) -> Architecture:
    """The entry for `model`, by config.model_type, else by its decoder layer class."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    classes = {type(m).__name__ for m in model.modules()}
    for arch in ARCHITECTURES:
        if classes & set(arch.block_classes):
            return arch
    raise ArchitectureError(
        f"no layer mappings for model_type {model_type!r}: add an Architecture entry in quantize/mappings.py "
        f"(known: {', '.join(t for a in ARCHITECTURES for t in a.model_types)})")


def find_blocks(model: nn.Module, arch: Architecture) -> tuple[str, nn.ModuleList]:
    """The decoder blocks' path and ModuleList."""
    for path in arch.blocks:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList):
            return path, blocks
    raise ArchitectureError(f"{arch.name}: none of the block paths {arch.blocks} exists in {type(model).__name__}")


def applicable(block: nn.Module, smooth: Smooth) -> bool:
    """Whether scales can move from `prev` into `balance` in this block: all modules exist and the
    widths agree (v_proj -> o_proj is skipped under grouped-query attention, where they differ)."""
    try:
        prev = block.get_submodule(smooth.prev)
        balance = [block.get_submodule(b) for b in smooth.balance]
    except AttributeError:
        return False
    width = prev.out_features if isinstance(prev, nn.Linear) else prev.weight.shape[0]
    return all(isinstance(b, nn.Linear) and b.in_features == width for b in balance)
