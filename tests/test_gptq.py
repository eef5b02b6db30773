"""GPTQ on synthetic layers whose inputs are correlated, so H is far from diagonal."""

import dataclasses
import functools
import itertools
import math

import pytest
import torch

from quantize.methods.gptq import Hessian, gptq_quantize
from quantize.primitives import int_range, qparams_from_range, quantize_weight
from quantize.scheme import QuantArgs

N, K, TOKENS = 48, 200, 1024  # K=200 leaves a shorter last group at g=64 and g=128
OUTLIERS = [3, 50, 120, 190]  # large-magnitude input features, as in LLM activations

BITS = [2, 3, 4, 8]
GROUPS = [None, 32, 64, 128]
ORDERS = [(False, False), (False, True), (True, False), (True, True)]  # (act_order, static_groups)
COMBOS = list(itertools.product(BITS, GROUPS, [True, False], ORDERS))


def make_inputs(seed: int = 0, tokens: int = TOKENS) -> torch.Tensor:
    """Correlated features with a decaying spectrum (as LLM activations have) and a few outliers."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(K, K, generator=g) / math.sqrt(K) * torch.logspace(0, -2, K)[:, None]
    x = torch.randn(tokens, K, generator=g) @ mixing
    x[:, OUTLIERS] *= 20
    return x


def weight_args(bits: int, group: int | None, symmetric: bool) -> QuantArgs:
    if group is None:
        return QuantArgs(num_bits=bits, symmetric=symmetric, strategy="channel")
    return QuantArgs(num_bits=bits, symmetric=symmetric, strategy="group", group_size=group)


@functools.cache
def layer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs [TOKENS, K] float64, weight [N, K], Hessian [K, K])."""
    x = make_inputs()
    hessian = Hessian(K)
    hessian.add_batch(x)
    weight = torch.randn(N, K, generator=torch.Generator().manual_seed(1))
    return x.double(), weight, hessian.matrix


@functools.cache
def run(bits, group, symmetric, act_order, static_groups):
    _, weight, hessian = layer()
    args = weight_args(bits, group, symmetric)
    return gptq_quantize(weight, hessian, args, act_order=act_order, static_groups=static_groups)


def output_error(x: torch.Tensor, weight: torch.Tensor, q: torch.Tensor) -> float:
    return torch.linalg.norm(x @ (weight.double() - q.double()).T).item()


def damped(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    h = hessian.double()
    return h + damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=torch.float64)


@pytest.mark.parametrize("bits,group,symmetric,order", COMBOS)
def test_codes_in_range_and_shapes(bits, group, symmetric, order):
    act_order, static_groups = order
    result = run(bits, group, symmetric, *order)
    qt = result.qtensor
    qmin, qmax = int_range(bits)
    assert qt.values.dtype == torch.int8 and qt.values.shape == (N, K)
    assert qt.values.min() >= qmin and qt.values.max() <= qmax
    groups = 1 if group is None else math.ceil(K / group)
    assert qt.scale.shape == (N, groups) and qt.scale.dtype == torch.float32
    assert torch.isfinite(qt.scale).all() and (qt.scale > 0).all()
    if symmetric:
        assert qt.zero_point is None
    else:
        assert qt.zero_point.shape == (N, groups) and qt.zero_point.dtype == torch.int8
        assert qt.zero_point.min() >= qmin and qt.zero_point.max() <= qmax
    if group is not None and act_order and not static_groups:
        assert qt.g_idx is not None and qt.g_idx.dtype == torch.int32 and qt.g_idx.shape == (K,)
        sizes = torch.bincount(qt.g_idx.long(), minlength=groups)
        assert sizes[:-1].eq(group).all() and sizes[-1] == K - (groups - 1) * group
    else:
        assert qt.g_idx is None
    assert math.isfinite(result.loss) and result.loss > 0
    assert result.damp_used == 0.01 and result.messages == []


@pytest.mark.parametrize("bits,group,symmetric,order", COMBOS)
def test_output_error_below_round_to_nearest(bits, group, symmetric, order):
    x, weight, _ = layer()
    args = weight_args(bits, group, symmetric)
    gptq = output_error(x, weight, run(bits, group, symmetric, *order).qtensor.dequantize())
    rtn = output_error(x, weight, quantize_weight(weight, args).dequantize())
    assert gptq < rtn


@pytest.mark.parametrize("bits,group,symmetric,order", COMBOS)
def test_loss_is_the_objective_of_the_dequantized_weight(bits, group, symmetric, order):
    # The per-column losses sum to tr(E H E^T) / 2 for E = W - Q, with H as damped for the
    # factorization: so the loss describes exactly the matrix QTensor.dequantize builds (g_idx included).
    _, weight, hessian = layer()
    result = run(bits, group, symmetric, *order)
    e = weight.double() - result.qtensor.dequantize().double()
    objective = 0.5 * torch.trace(e @ damped(hessian, result.damp_used) @ e.T).item()
    assert result.loss == pytest.approx(objective, rel=1e-4)


@pytest.mark.parametrize("symmetric", [True, False])
def test_act_order_groups_need_g_idx(symmetric):
    _, weight, hessian = layer()
    qt = run(4, 32, symmetric, True, False).qtensor
    assert not torch.equal(qt.g_idx, torch.sort(qt.g_idx).values)  # groups are not contiguous
    assert not torch.allclose(dataclasses.replace(qt, g_idx=None).dequantize(), qt.dequantize())


@pytest.mark.parametrize("args", [QuantArgs(num_bits=4, strategy="tensor"),
                                  QuantArgs(num_bits=4, strategy="block", block_structure=(16, 64)),
                                  QuantArgs(num_bits=3, symmetric=False, strategy="group", group_size=48)],
                         ids=["tensor", "block", "g48"])
@pytest.mark.parametrize("act_order", [False, True])
def test_other_strategies(args, act_order):
    x, weight, hessian = layer()
    result = gptq_quantize(weight, hessian, args, act_order=act_order)
    q = result.qtensor.dequantize()
    assert output_error(x, weight, q) < output_error(x, weight, quantize_weight(weight, args).dequantize())
    e = weight.double() - q.double()
    assert result.loss == pytest.approx(0.5 * torch.trace(e @ damped(hessian, 0.01) @ e.T).item(), rel=1e-4)


def reference_gptq(weight: torch.Tensor, hessian: torch.Tensor, args: QuantArgs, act_order: bool,
                   damp: float = 0.01) -> torch.Tensor:
    """Algorithm 1 of the paper for dynamic groups, eagerly and in float64: every update is applied
    at once, so each group's scale sees the current weights. Returns the dequantized weight."""
    W, H = weight.double().clone(), damped(hessian, damp)
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if act_order else torch.arange(K)
    W, H = W[:, perm], H[perm][:, perm]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    g = args.group_size
    for j in range(K):
        if j % g == 0:
            cols = W[:, j:j + g]
            scale, zero = qparams_from_range(cols.amin(1), cols.amax(1), args)
            scale, zero = scale.double(), torch.zeros_like(scale) if zero is None else zero.double()
        qmin, qmax = int_range(args.num_bits)
        Q[:, j] = ((W[:, j] / scale).round() + zero).clamp(qmin, qmax).sub(zero).mul(scale)
        W[:, j:] -= torch.outer((W[:, j] - Q[:, j]) / U[j, j], U[j, j:])
    return Q[:, torch.argsort(perm)]


@pytest.mark.parametrize("block_size", [1, 16, 128, 500])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_eager_reference(block_size, act_order, symmetric):
    # g=48 does not divide block_size 16 or 128: lazy blocks must be cut at group starts that would
    # cross them, or a group's scale would come from weights missing this block's updates.
    _, weight, hessian = layer()
    args = QuantArgs(num_bits=3, symmetric=symmetric, group_size=48)
    expected = reference_gptq(weight, hessian, args, act_order)
    result = gptq_quantize(weight, hessian, args, block_size=block_size, act_order=act_order)
    same = torch.isclose(result.qtensor.dequantize().double(), expected, rtol=1e-5, atol=1e-6)
    # Symmetric scales put each group's largest |w| on a rounding tie (+-3.5 steps at 3 bits), which
    # float32 and float64 break differently; the flips then propagate. Stale scales match ~40%.
    assert same.double().mean() > (0.95 if symmetric else 0.999)


@pytest.mark.parametrize("args", [QuantArgs(num_bits=4, group_size=64), QuantArgs(num_bits=4, group_size=64,
                                                                              symmetric=False)])
@pytest.mark.parametrize("order", ORDERS)
def test_dead_inputs_give_zero_columns(args, order):
    x = make_inputs()
    dead = [5, 77, 199]
    x[:, dead] = 0
    hessian = Hessian(K)
    hessian.add_batch(x)
    weight = layer()[1]
    result = gptq_quantize(weight, hessian.matrix, args, act_order=order[0], static_groups=order[1])
    q = result.qtensor.dequantize()
    assert torch.isfinite(q).all() and torch.isfinite(result.qtensor.scale).all()
    assert math.isfinite(result.loss)
    assert q[:, dead].eq(0).all()
    assert q[:, [0, 100]].ne(0).any()


def test_singular_hessian_retries_with_more_damping():
    # Every input equal: H is rank one, and its Cholesky factorization fails without dampening.
    weight = layer()[1]
    result = gptq_quantize(weight, torch.ones(K, K), QuantArgs(num_bits=4), damp=0.0)
    assert result.damp_used == 0.01
    assert len(result.messages) == 1 and "retrying with damp=0.01" in result.messages[0]
    assert torch.isfinite(result.qtensor.dequantize()).all()


def test_indefinite_hessian_retries_until_positive_definite():
    g = torch.Generator().manual_seed(2)
    basis, _ = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64))
    eigenvalues = torch.linspace(1, 2, K, dtype=torch.float64)
    eigenvalues[0] = -0.05  # below -0.01 * mean(diag), above -0.1 * mean(diag)
    hessian = (basis * eigenvalues) @ basis.T
    result = gptq_quantize(layer()[1], hessian.float(), QuantArgs(num_bits=4), damp=0.01)
    assert result.damp_used == pytest.approx(0.1)
    assert len(result.messages) == 1 and "failed with damp=0.01" in result.messages[0]

    # Eigenvalue -0.999 but diagonal 0.001: even damp=100 adds only 0.1.
    hopeless = torch.ones(K, K) - 0.999 * torch.eye(K)
    with pytest.raises(ValueError, match="Cholesky of the Hessian failed even with damp=100"):
        gptq_quantize(layer()[1], hopeless, QuantArgs(num_bits=4))


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_hessian_over_batches_equals_whole(dtype, rel):
    x = make_inputs(tokens=301).double()
    hessian = Hessian(K, dtype=dtype)
    hessian.add_batch(x[:100].reshape(4, 25, K))  # leading dims are tokens
    hessian.add_batch(x[100:100])  # an empty batch changes nothing
    hessian.add_batch(x[100:101])
    hessian.add_batch(x[101:])
    expected = 2 / x.shape[0] * x.T @ x
    assert hessian.num_tokens == 301
    assert hessian.matrix.dtype == dtype
    error = torch.linalg.norm(hessian.matrix.double() - expected) / torch.linalg.norm(expected)
    assert error < rel


def test_hessian_rejects_bad_inputs():
    hessian = Hessian(K)
    with pytest.raises(ValueError, match="no inputs"):
        _ = hessian.matrix
    with pytest.raises(ValueError, match=r"\[\.\.\., 200\]"):
        hessian.add_batch(torch.ones(3, K + 1))
    x = torch.ones(3, K)
    x[1, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        hessian.add_batch(x)
    x[1, 7] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        hessian.add_batch(x)
    assert hessian.num_tokens == 0


@pytest.mark.parametrize("args", [QuantArgs(num_bits=8, type="float", strategy="channel"),
                                  QuantArgs(num_bits=8, type="float", fp_format="e5m2", strategy="tensor"),
                                  QuantArgs(num_bits=8, type="float", strategy="block", block_structure=(16, 64))],
                         ids=["e4m3-channel", "e5m2-tensor", "e4m3-block"])
@pytest.mark.parametrize("act_order", [False, True])
def test_fp8_weights(args, act_order):
    """FP8 casts take the place of integer rounding: lower output error than the plain cast, and the
    loss is the objective of the FP8 weight the QTensor holds."""
    x, weight, hessian = layer()
    result = gptq_quantize(weight, hessian, args, act_order=act_order)
    qt = result.qtensor
    assert qt.values.dtype == {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[args.fp_format]
    assert qt.values.shape == weight.shape and qt.zero_point is None and qt.g_idx is None
    q = qt.dequantize()
    assert output_error(x, weight, q) < 0.9 * output_error(x, weight, quantize_weight(weight, args).dequantize())
    e = weight.double() - q.double()
    assert result.loss == pytest.approx(0.5 * torch.trace(e @ damped(hessian, 0.01) @ e.T).item(), rel=1e-4)


def test_gptq_rejects_bad_inputs():
    _, weight, hessian = layer()
    bad = weight.clone()
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match="weight contains NaN or Inf"):
        gptq_quantize(bad, hessian, QuantArgs())
    bad[3, 4] = float("-inf")
    with pytest.raises(ValueError, match="weight contains NaN or Inf"):
        gptq_quantize(bad, hessian, QuantArgs())
    with pytest.raises(ValueError, match="hessian must be"):
        gptq_quantize(weight, hessian[:-1, :-1], QuantArgs())
    with pytest.raises(ValueError, match="negative diagonal"):
        gptq_quantize(weight, -hessian, QuantArgs())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x, weight, hessian = layer()
    on_gpu = Hessian(K)
    on_gpu.add_batch(x.float().cuda())
    assert on_gpu.matrix.is_cuda
    args = QuantArgs(num_bits=4, group_size=64, symmetric=False)
    gpu = gptq_quantize(weight.cuda(), on_gpu.matrix, args, act_order=True)
    cpu = gptq_quantize(weight, hessian, args, act_order=True)
    assert gpu.qtensor.values.is_cuda
    assert (gpu.qtensor.values.cpu() == cpu.qtensor.values).float().mean() > 0.99
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-2)


@pytest.mark.parametrize("k, base", [(7, 1024), (300, 64), (2500, 1024)])
def test_inverse_factor_matches_the_float64_chain(k, base):
    """U from one Cholesky of the reversed Hessian and a recursive triangular inverse (gptq._upper_cholesky_of_inverse)
    against GPTQ's usual chain (Cholesky, cholesky_inverse, Cholesky) in float64, on fresh spread-scale Hessians:
    upper triangular, positive diagonal, within 1e-5 relative (float32 rounding; the chain in float32 is ~1e-7)."""
    from quantize.methods import gptq

    g = torch.Generator().manual_seed(k)
    x = torch.randn(2 * k, k, generator=g) * torch.logspace(-1, 1, k)
    H = x.T @ x / (2 * k)
    damped = H.double() + 0.01 * H.diagonal().double().mean() * torch.eye(k, dtype=torch.float64)
    expected = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    if base != 1024:
        lower = torch.linalg.cholesky(damped.float().flip(0, 1))
        U = gptq._lower_triangular_inverse(lower, base).flip(0, 1)
    else:
        U, damp, messages = gptq._upper_cholesky_of_inverse(H, 0.01)
        assert damp == 0.01 and messages == []
    assert torch.equal(U, torch.triu(U)) and (U.diagonal() > 0).all()
    assert (U.double() - expected).norm() / expected.norm() < 1e-5
