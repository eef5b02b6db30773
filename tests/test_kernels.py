"""CPU tests of the CUDA kernels' Python side: the repacked layout, act-order removal, dispatch (with the
PyTorch emulation of the kernels in place of the kernels), W8A8 on torch's GEMMs, and the loader. The int8-planes
path and the kernels' decode helpers compiled for the host are in test_planes.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import random_weight, rel_err
from qtool_kernels import build, layout, reference, scaled_mm, tuning, weight_only
from qtool_kernels.layout import PackedWeight, ReferenceOps, UnsupportedLayout, pack_weight
from quantize.linear import QuantLinear, pack_layer, prepare_for_cuda
from quantize.primitives import QTensor
from quantize.scheme import QuantArgs, QuantScheme, Strategy

ROOT = Path(__file__).resolve().parents[1]


def decode_by_ptx_rule(qweight, bits):
    """Signed codes [N_pad, K_pad] read back with the PTX A-fragment rule, independently of layout.py."""
    if bits in (2, 3):
        return decode_low_bits_as_kernels_do(qweight, bits)
    stripes, chunks = qweight.shape[:2]
    kc, mask, offset = 256 // bits, (1 << bits) - 1, 1 << (bits - 1)
    words = qweight.to(torch.int64) & 0xFFFFFFFF
    out = torch.full((stripes, 16, chunks, kc), 99, dtype=torch.int64)
    for lane in range(32):
        g, t = divmod(lane, 4)
        for j in range(16 // bits):
            for p in range(4):
                for h in range(2):
                    row, k = g + 8 * (p % 2), 16 * j + 2 * t + 8 * (p // 2) + h
                    word, shift = (j, 4 * (p + 4 * h)) if bits == 4 else (2 * j + p // 2, 8 * (2 * (p % 2) + h))
                    out[:, row, :, k] = ((words[:, :, lane, word] >> shift) & mask) - offset
    return out.reshape(stripes * 16, chunks * kc)


def decode_low_bits_as_kernels_do(qweight, bits):
    """2- and 3-bit codes read back the way wo_decode.cuh's low_bit_nibbles merges them: low-plane word
    j // 2 and (3-bit) high-plane word j // 4, shifted left by 2 for odd j // 2, become one word of
    nibbles for subtile j (even j: bits 0..1 of each nibble of the low word, odd j: bits 2..3), whose
    nibble p + 4h is register p, half h of the A fragment."""
    stripes, chunks = qweight.shape[:2]
    words = qweight.to(torch.int64) & 0xFFFFFFFF
    lo = words[:, :, :32]  # [S, C, 32 lanes, 4]
    hi = words[:, :, 32:].reshape(stripes, chunks, 32, 2) if bits == 3 else torch.zeros_like(lo[..., :2])
    low_mask, u32 = 0x33333333, 0xFFFFFFFF
    out = torch.full((stripes, 16, chunks, 128), 99, dtype=torch.int64)
    for lane in range(32):
        g, t = divmod(lane, 4)
        for j in range(8):
            w = lo[:, :, lane, j // 2]
            hs = hi[:, :, lane, j // 4]
            hs = (hs << 2) & u32 if (j // 2) % 2 else hs
            if j % 2:
                w, hs = w >> 2, hs >> 1
            nib = (w & low_mask) | (hs & ~low_mask & u32)
            for p in range(4):
                for h in range(2):
                    row, k = g + 8 * (p % 2), 16 * j + 2 * t + 8 * (p // 2) + h
                    out[:, row, :, k] = ((nib >> (4 * (p + 4 * h))) & ((1 << bits) - 1)) - (1 << (bits - 1))
    return out.reshape(stripes * 16, chunks * 128)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n,k,group_size", [(40, 576, 128), (16, 600, 32), (24, 100, -1), (32, 4096, 64),
                                            (20, 328, 256)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_pack_round_trips_and_pads_with_zero_point(bits, n, k, group_size, symmetric):
    codes, scale, zero, _ = random_weight(n, k, bits, group_size, symmetric)
    p = pack_weight(codes, scale, zero, None, bits, group_size)
    unit = 128 if bits in (2, 3) else 64  # one 2-/3-bit chunk
    n_pad, k_pad = -(-n // 16) * 16, -(-k // unit) * unit
    rows = 48 if bits == 3 else 32  # 3-bit: 32 rows of low bits, 16 of high bits
    assert p.qweight.shape == (n_pad // 16, k_pad // layout.chunk_k(bits), rows, 4) and p.k_padded == k_pad
    assert p.qweight.numel() * 32 == n_pad * k_pad * bits, "codes are stored at their own width"
    unpacked = layout.unpack_codes(p.qweight, bits)
    assert torch.equal(decode_by_ptx_rule(p.qweight, bits), unpacked.long())
    assert torch.equal(unpacked[:n, :k], codes)
    groups = 1 if group_size <= 0 else -(-k_pad // group_size)
    assert p.scale.shape == (groups, n_pad) and torch.equal(p.scale[: scale.shape[1], :n], scale.t())
    assert not p.scale[scale.shape[1]:].any() and not p.scale[:, n:].any()
    dense = layout.dequantize_packed(p.qweight, p.scale, p.zero, bits, p.group_size, n)
    assert not dense[:, k:].any(), "padding columns must dequantize to 0"
    args = QuantArgs(num_bits=bits, symmetric=symmetric).with_group_size(group_size)
    expected = QTensor(codes, scale, zero, args).dequantize()
    torch.testing.assert_close(dense[:, :k], expected, rtol=0, atol=0)


def test_act_order_is_removed_by_sorting_columns():
    codes, scale, zero, g_idx = random_weight(32, 320, 4, 64, symmetric=False, act_order=True)
    p = pack_weight(codes, scale, zero, g_idx, 4, 64)
    assert p.perm is not None and torch.equal(g_idx[p.perm].long(), torch.arange(320) // 64)
    dense = layout.dequantize_packed(p.qweight, p.scale, p.zero, 4, 64, 32)[:, :320]
    expected = QTensor(codes, scale, zero, QuantArgs(symmetric=False, group_size=64), g_idx).dequantize()
    torch.testing.assert_close(dense, expected[:, p.perm], rtol=0, atol=0)
    assert layout.act_order_permutation(torch.arange(320, dtype=torch.int32) // 64, 64, 320) is None
    with pytest.raises(UnsupportedLayout):  # group 0 has 65 members: not what sorting can fix
        layout.act_order_permutation(torch.cat([torch.zeros(65), torch.arange(255) // 64 + 1]).int(), 64, 320)


@pytest.mark.parametrize("bits,group_size", [(3, 16), (2, 16), (4, 96), (4, 8), (5, -1), (2, 48)])
def test_unsupported_layouts_raise(bits, group_size):
    codes, scale, zero, _ = random_weight(16, 192, 4, 64)
    with pytest.raises(UnsupportedLayout):
        pack_weight(codes, scale, zero, None, bits, group_size)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 5, 100, 300])  # one per dispatch branch: wo_gemv, wo_gemm_v3, wo_gemm, dequant
@pytest.mark.parametrize("symmetric,act_order", [(True, False), (False, True)])
def test_packed_linear_matches_reference_op(bits, m, symmetric, act_order):
    n, k, gs = 48, 576, 128
    codes, scale, zero, g_idx = random_weight(n, k, bits, gs, symmetric, act_order)
    qweight = codes if bits == 8 else layout_checkpoint_pack(codes, bits)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(n)
    expected = reference.weight_only_linear(x, qweight, scale, zero, g_idx, bias, bits, gs, k)
    packed = pack_weight(codes, scale, zero, g_idx, bits, gs)
    got = weight_only.packed_linear(x, packed, bias, ReferenceOps)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="epilogue"):  # the raw ops' activation argument is always "none"
        ReferenceOps.wo_gemm(x, packed.qweight, packed.scale, packed.zero, bias, bits, gs, n, "silu")


@pytest.mark.parametrize("fmt,group_size,static", [("int8", 0, False), ("int8", 32, False), ("e4m3", 0, False),
                                                    ("e4m3", 48, False), ("int8", 0, True), ("e5m2", 0, True)])
def test_reference_activation_quantization_matches_primitives(fmt, group_size, static):
    """kernels/ restates the activation conventions instead of importing them: both must agree."""
    from quantize.primitives import choose_qparams, quantize

    x = torch.randn(5, 100, generator=torch.Generator().manual_seed(0)) * 3
    x[0] = 0  # an all-zero token takes scale 1
    kw = dict(num_bits=8) if fmt == "int8" else dict(num_bits=8, type="float", fp_format=fmt)
    if static:
        args = QuantArgs(**kw, strategy="tensor")
    elif group_size:
        args = QuantArgs(**kw, strategy="group", group_size=group_size, dynamic=True)
    else:
        args = QuantArgs(**kw, strategy="token", dynamic=True)
    scale = torch.tensor([0.02]) if static else choose_qparams(x, args)[0]
    codes, got_scale = reference.quantize_activation(x, fmt, group_size, scale if static else None)
    assert torch.equal(got_scale, scale)
    assert torch.equal(codes.float(), quantize(x, scale, None, args).float())


def layout_checkpoint_pack(codes, bits):
    from quantize.primitives import pack_int

    return pack_int(codes, bits)


@pytest.mark.parametrize("symmetric", [True, False])
def test_pack_layer_serves_quantlinear(symmetric):
    n, k, gs = 32, 256, 64
    codes, scale, zero, g_idx = random_weight(n, k, 4, gs, symmetric, act_order=True)
    args = QuantArgs(num_bits=4, symmetric=symmetric, strategy=Strategy.GROUP, group_size=gs, actorder=True)
    layer = QuantLinear.from_qtensor(QTensor(codes, scale, zero, args, g_idx), QuantScheme(weights=args),
                                     bias=torch.randn(n))
    x = torch.randn(3, 7, k)
    packed = pack_layer(layer)
    got = weight_only.packed_linear(x, packed, layer.bias, ReferenceOps)
    torch.testing.assert_close(got, layer(x), rtol=1e-5, atol=1e-4)
    fp8 = QuantScheme(weights=QuantArgs(num_bits=8, type="float", fp_format="e4m3", strategy=Strategy.CHANNEL))
    assert pack_layer(QuantLinear(k, n, fp8)) is None


@pytest.mark.parametrize("name", ["fp8", "fp8-static", "w8a8-int8-static", "fp8-block"])
def test_w8a8_layer_compiles_in_one_graph(name):
    """A W8A8 QuantLinear traces without a graph break (its forward reads the static input scale from the
    module's buffers directly, the eager path's cheap lookup) and computes what eager does."""
    from quantize.primitives import quantize_weight
    from quantize.scheme import preset

    scheme = preset(name)
    static = scheme.input_activations.strategy is Strategy.TENSOR and not scheme.input_activations.dynamic
    layer = QuantLinear.from_qtensor(quantize_weight(torch.randn(96, 256), scheme.weights), scheme,
                                     input_scale=torch.tensor(0.03) if static else None)
    x = torch.randn(5, 256)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True, backend="eager")(x), layer(x))


def test_prepared_layout_is_kept_until_a_source_changes(monkeypatch):
    """prepare_for_cuda keeps the packed weight it built (an eager call's host time) and builds it again when a
    checkpoint buffer is written in place, loaded or moved (.to() forgets it at once, so the old device's copies
    are not held); each layout computes what the layer's reference op does."""
    monkeypatch.setattr(build, "load_extension", lambda: object())  # the stand-in library: the layout is CPU code
    n, k, gs = 32, 256, 64
    codes, scale, zero, _ = random_weight(n, k, 4, gs, False, act_order=False)
    args = QuantArgs(num_bits=4, symmetric=False, strategy=Strategy.GROUP, group_size=gs)
    layer = QuantLinear.from_qtensor(QTensor(codes, scale, zero, args), QuantScheme(weights=args), bias=torch.randn(n))
    x = torch.randn(5, k)

    def check(packed):
        got = weight_only.packed_linear(x, packed, layer.cuda_bias, ReferenceOps)
        torch.testing.assert_close(got, layer(x), rtol=1e-5, atol=1e-4)

    first = prepare_for_cuda(layer)
    assert prepare_for_cuda(layer) is first
    check(first)
    layer.weight_scale.mul_(2.0)  # in place
    second = prepare_for_cuda(layer)
    assert second is not first and prepare_for_cuda(layer) is second
    check(second)
    other = QuantLinear.from_qtensor(QTensor(*random_weight(n, k, 4, gs, False, act_order=False)[:3], args),
                                     QuantScheme(weights=args), bias=torch.randn(n))
    layer.load_state_dict(other.state_dict())
    third = prepare_for_cuda(layer)
    assert third is not second
    check(third)
    layer.to(torch.float64)
    assert layer._cuda_packed is None and prepare_for_cuda(layer) is not third


def test_prepare_refuses_a_first_call_inside_a_graph_capture(monkeypatch):
    """A layer whose kernel layout is not yet made refuses inside a CUDA graph capture, which would record the
    repack without running it and keep unwritten memory; prepared by an eager call first, the capture uses it."""
    monkeypatch.setattr(build, "load_extension", lambda: object())
    codes, scale, zero, _ = random_weight(32, 256, 4, 64, False, act_order=False)
    args = QuantArgs(num_bits=4, symmetric=False, strategy=Strategy.GROUP, group_size=64)
    layer = QuantLinear.from_qtensor(QTensor(codes, scale, zero, args), QuantScheme(weights=args))
    monkeypatch.setattr(build, "capturing", lambda: True)
    with pytest.raises(RuntimeError, match=r"QuantLinear\(256 -> 32\).*eager forward"):
        prepare_for_cuda(layer)
    monkeypatch.setattr(build, "capturing", lambda: False)
    packed = prepare_for_cuda(layer)
    monkeypatch.setattr(build, "capturing", lambda: True)
    assert packed is not None and prepare_for_cuda(layer) is packed


@pytest.mark.parametrize("bits,group_size", [(2, 64), (3, 128), (3, -1), (2, 32), (3, 16), (2, 16), (5, 32),
                                             (6, -1), (7, 64)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_narrow_codes_run_on_the_wider_kernels(bits, group_size, symmetric):
    """2-3-bit layers pack natively (g16: as 4-bit kernel weights), 5-7-bit as 8-bit: the kernel route
    computes what the layer's own reference does (float64 dequantized weight) at these widths, ragged K
    included."""
    n, k = 40, 200
    codes, scale, zero, _ = random_weight(n, k, bits, group_size, symmetric, act_order=False)
    strategy = Strategy.GROUP if group_size > 0 else Strategy.CHANNEL
    args = QuantArgs(num_bits=bits, symmetric=symmetric, strategy=strategy,
                     group_size=group_size if group_size > 0 else None)
    qt = QTensor(codes, scale, zero, args)
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=torch.randn(n))
    packed = pack_layer(layer)
    assert packed is not None and packed.num_bits == (bits if bits < 4 and group_size != 16 else 4 if bits < 4 else 8)
    for m in (1, 5, 9):  # low bits: wo_gemv up to 8 tokens, then dequant_int
        x = torch.randn(m, k)
        got = weight_only.packed_linear(x, packed, layer.bias.float(), ReferenceOps)
        want = x.double() @ qt.dequantize(torch.float64).T + layer.bias.double()
        assert rel_err(got, want) < 1e-5
        torch.testing.assert_close(got, layer(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("m", [1, 16, 17, 300])  # w8_gemv, at its limit, in two slices, then dequantized rows
def test_rows_layout_serves_w8_per_channel(monkeypatch, m):
    """An 8-bit symmetric per-channel layer packs row-major (no wo layout) and computes what its reference does
    (float64 product of its own dequantized weight), through w8_gemv up to weight_only.W8_ROWS_MAX_M tokens
    (no Hopper copy here), in slices of that many up to twice it, and dequantized rows past it; ragged layers keep the wo layout; with W8_ROWS_MAX_M
    = 0 nothing packs row-major."""
    n, k = 48, 256
    codes, scale, _, _ = random_weight(n, k, 8, -1, True, act_order=False)
    args = QuantArgs(num_bits=8, symmetric=True, strategy=Strategy.CHANNEL)
    qt = QTensor(codes, scale, None, args)
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=torch.randn(n))
    monkeypatch.setattr(weight_only, "W8_ROWS_MAX_M", 0)
    assert pack_layer(layer).rows is None
    monkeypatch.setattr(weight_only, "W8_ROWS_MAX_M", 16)
    packed = pack_layer(layer)
    assert packed.qweight is None and packed.rows.shape == (n, k) and packed.k_padded == k
    calls = []

    class Counting(ReferenceOps):
        @staticmethod
        def w8_gemv(*args):
            calls.append(args[0].shape[0])
            assert args[6:7] in ((), (0,))  # PDL twin only where k < n (tuning.gemv_pdl): here n < k
            assert args[7:] in ((), (None,))  # no prefetch link: none was made
            return ReferenceOps.w8_gemv(*args)

    x = torch.randn(1, m, k)
    got = weight_only.packed_linear(x, packed, layer.bias.float(), Counting)
    want = x.double() @ qt.dequantize(torch.float64).T + layer.bias.double()
    assert got.shape == want.shape and rel_err(got, want) < 1e-5
    assert calls == ([m] if m <= 16 else [16, m - 16] if m <= 32 else [])  # slices of 16, then dequantized rows
    ragged = QuantLinear.from_qtensor(QTensor(codes[:, :200], scale, None, args), QuantScheme(weights=args))
    assert pack_layer(ragged).rows is None  # K % 64 != 0: the wo layout pads it


@pytest.mark.parametrize("n, k, limit", [(4096, 4096, 32), (6144, 4096, 32), (14336, 4096, 16), (8192, 8192, 16),
                                         (28672, 8192, 4), (4096, 28672, 4)])
def test_rows_gemv_rule(n, k, limit):
    """weight_only.rows_gemv: w8_gemv up to 4 / 16 / 32 tokens by the weight's size where a bf16 Hopper copy can
    take over (session 16's measured rule), to W8_ROWS_MAX_M without one (fp16, or no copy)."""
    mixed = object()  # only its presence matters to the rule
    rows = torch.zeros(1, dtype=torch.int8).expand(n, k)  # the shape without the bytes
    w = PackedWeight(None, torch.ones(1, n), None, None, 8, -1, k, n, mixed, rows=rows)
    took = [m for m in range(1, 40) if weight_only.rows_gemv(w, m, torch.bfloat16)]
    assert took == list(range(1, limit + 1))
    assert [m for m in range(1, 40) if weight_only.rows_gemv(w, m, torch.float16)] == \
        list(range(1, weight_only.W8_ROWS_MAX_M + 1))


def test_gemv_pdl_rule():
    """w8_gemv's PDL twin (static weights) where session 19 measured it faster: more rows than columns, <= 8
    tokens; qtool::w8a8_linear takes the hint after the layer's arguments (then the prefetch link and the gated
    MLP's epilogue), off unless a caller (QuantLinear) passes it."""
    assert tuning.gemv_pdl(1, 6144, 4096) and tuning.gemv_pdl(8, 28672, 8192)
    assert not tuning.gemv_pdl(9, 6144, 4096) and not tuning.gemv_pdl(1, 4096, 4096)
    assert not tuning.gemv_pdl(1, 4096, 14336)
    schema = torch.ops.qtool.w8a8_linear.default._schema
    assert [a.name for a in schema.arguments[-3:]] == ["static_weight", "prefetch", "swiglu"]
    assert [a.default_value for a in schema.arguments[-3:]] == [0, None, 0]


def test_scaled_mm_paths_match_reference():
    g = torch.Generator().manual_seed(0)
    for m in (3, 40):
        xq = torch.randint(-127, 128, (m, 64), generator=g, dtype=torch.int8)
        wq = torch.randint(-127, 128, (32, 64), generator=g, dtype=torch.int8)
        xs, ws, bias = torch.rand(m, 1, generator=g) / 100, torch.rand(32, 1, generator=g) / 100, torch.randn(32)
        got = scaled_mm.scaled_mm(xq, xs, wq, ws, bias, 0, 0, 0, torch.float32)
        torch.testing.assert_close(got, reference.scaled_linear(xq, xs, wq, ws, bias, 0, 0, 0, torch.float32))
        static = torch.tensor([0.01])
        got = scaled_mm.scaled_mm(xq, static, wq, ws, None, 0, 0, 0, torch.float32)
        torch.testing.assert_close(got, reference.scaled_linear(xq, static, wq, ws, None, 0, 0, 0, torch.float32))
    xf = torch.randn(40, 64, generator=g).to(torch.float8_e4m3fn)
    wf = torch.randn(32, 64, generator=g).to(torch.float8_e4m3fn)
    got = scaled_mm.scaled_mm(xf, xs, wf, ws, bias, 0, 0, 0, torch.bfloat16)
    if not scaled_mm._cpu_has_rowwise_fp8():
        assert got is None  # the reference serves older PyTorch's CPU
        return
    expected = reference.scaled_linear(xf, xs, wf, ws, bias, 0, 0, 0, torch.bfloat16)
    torch.testing.assert_close(got.float(), expected.float(), rtol=1e-2, atol=1e-2)
    assert scaled_mm.scaled_mm(xf, xs.expand(40, 2), wf, ws, None, 32, 0, 0, torch.bfloat16) is None  # groups
    assert scaled_mm.scaled_mm(xf[:, :40], xs, wf[:, :40], ws, None, 0, 0, 0, torch.bfloat16) is None  # K % 16


def test_load_extension_returns_none_with_one_warning_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    build._loader.reset()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert build.load_extension() is None
            assert build.load_extension() is None
        assert len(caught) == 1 and "PyTorch reference" in str(caught[0].message)
        assert prepare_for_cuda(QuantLinear(64, 16, QuantScheme(weights=QuantArgs()))) is None
        assert build.available_ops() == []
    finally:
        build._loader.reset()


def test_info_reports_no_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = build.info()
    assert info["available"] is False and info["device"] is None and info["capability"] is None
    assert info["ops"] == [] and info["reason"]
    assert info["cuda_implementations"]["weight-only QuantLinear"] == "reference"
    assert Path(info["build_dir"]).parent.parts[-2:] == ("qtool", "kernels")


def test_import_compiles_nothing():
    """From a checkout's root, the ordinary import (through the qtool_kernels link) builds nothing."""
    code = """
import sys
import qtool_kernels.build, qtool_kernels.ops, qtool_kernels.scaled_mm, qtool_kernels.weight_only
assert qtool_kernels.__file__ is None and list(qtool_kernels.__path__)[0].endswith("kernels")
assert "quantize" not in sys.modules
assert not qtool_kernels.build._loader.tried
assert "torch.utils.cpp_extension" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_prebuilt_library_is_installed_only_for_its_stamp(tmp_path, monkeypatch):
    """install_prebuilt (dev/prebuild_ext.sh's library on the device): copied where load_extension looks, newer than
    the sources, only when built from these sources, flags and PyTorch; .xz unpacked; a changed source changes the
    stamp."""
    import lzma

    monkeypatch.setenv("QTOOL_KERNELS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "prebuilt"
    folder.mkdir()
    payload = bytes(range(256)) * 64
    (folder / "qtool_cuda.so").write_bytes(payload)
    assert "no prebuilt" in build.install_prebuilt(folder)  # no stamp beside it
    (folder / "qtool_cuda.stamp").write_text("0" * 20)
    assert "skipped" in build.install_prebuilt(folder)
    assert not (build.build_dir() / "qtool_cuda.so").exists()

    (folder / "qtool_cuda.stamp").write_text(build.stamp() + "\n")
    assert "installed" in build.install_prebuilt(folder)
    target = build.build_dir() / "qtool_cuda.so"
    newest = max((build.CSRC / f).stat().st_mtime for f in build.SOURCES + build.HEADERS)
    assert target.read_bytes() == payload and target.stat().st_mtime >= newest

    (folder / "qtool_cuda.so").unlink()
    (folder / "qtool_cuda.so.xz").write_bytes(lzma.compress(payload[::-1]))
    assert "installed" in build.install_prebuilt(folder)
    assert target.read_bytes() == payload[::-1]

    csrc = tmp_path / "csrc"
    shutil.copytree(build.CSRC, csrc)
    monkeypatch.setattr(build, "CSRC", csrc)
    before = build.stamp()
    (csrc / build.SOURCES[1]).write_text((csrc / build.SOURCES[1]).read_text() + "\n// changed\n")
    assert build.stamp() != before
