import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantize.observers import OBSERVERS, HistogramObserver, make_observer
from quantize.primitives import dequantize, qparams_from_range, quantize
from quantize.scheme import QuantArgs

INT8 = QuantArgs(num_bits=8, strategy="tensor")
INT4 = QuantArgs(num_bits=4, strategy="tensor")
FP8 = QuantArgs(num_bits=8, type="float", strategy="tensor")
NAMES = sorted(OBSERVERS)


def laplace(n: int, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Laplace(0, scale) by inverse CDF, so one seeded generator drives everything."""
    u = torch.rand(n, generator=generator) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs()) * scale


def quantization_mse(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, args: QuantArgs) -> float:
    scale, zero_point = qparams_from_range(lo, hi, args)
    return (dequantize(quantize(x, scale, zero_point, args), scale, zero_point, args) - x).square().mean().item()


def observed(name: str, args: QuantArgs, *batches: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    observer = make_observer(name, args, **kw)
    for batch in batches:
        observer.observe(batch)
    return observer.result()


@pytest.fixture(scope="module")
def outliers() -> torch.Tensor:
    """2^20 Laplace values and two outliers at +-100 (about 7x the largest Laplace value).

    Clipping the pair costs 2 x ~90^2 / 2^20 ~ 0.015 in MSE, while the int8 step the pair
    forces on everything else costs (100 / 127.5)^2 / 12 ~ 0.05: a tighter clip must win.
    """
    x = laplace(1 << 20, torch.Generator().manual_seed(0))
    x[:2] = torch.tensor([100.0, -100.0])
    return x


def test_minmax_is_the_true_range():
    x = torch.rand(4, 256, generator=torch.Generator().manual_seed(0)) * 8 - 3
    lo, hi = observed("minmax", INT8, x)
    assert lo.dtype == hi.dtype == torch.float32 and lo.shape == (1,)
    assert lo.item() == x.min().item() and hi.item() == x.max().item()


def test_percentile_of_a_normal_distribution():
    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(1))
    lo, hi = observed("percentile", INT8, x, percentile=99.0)
    assert hi.item() == pytest.approx(2.5758, abs=0.02)  # 99th percentile of |N(0, 1)|
    assert lo.item() == -hi.item()
    lo, hi = observed("percentile", QuantArgs(num_bits=8, symmetric=False, strategy="tensor"), x, percentile=99.0)
    assert hi.item() == pytest.approx(2.3263, abs=0.02)  # 1st and 99th percentiles of N(0, 1)
    assert lo.item() == pytest.approx(-2.3263, abs=0.02)


@pytest.mark.parametrize("args", [INT8, INT4], ids=["int8", "int4"])
@pytest.mark.parametrize("name", ["mse", "kl"])
def test_heavy_tails_clip_tighter_and_quantize_better_than_minmax(outliers, name, args):
    lo, hi = observed(name, args, *outliers.chunk(4))
    assert hi.item() < 0.5 * outliers.max().item()
    assert quantization_mse(outliers, lo, hi, args) < 0.5 * quantization_mse(outliers, *observed("minmax", args, outliers), args)


@pytest.mark.parametrize("name", ["percentile", "mse", "kl"])
def test_fp8_ranges_stay_within_the_observed_range(outliers, name):
    lo, hi = observed(name, FP8, outliers)
    assert 0 < hi.item() <= 100 and -100 <= lo.item() < 0
    if name == "mse":  # the search includes the full range, so it cannot do worse than minmax
        assert quantization_mse(outliers, lo, hi, FP8) <= 1.01 * quantization_mse(outliers, -outliers.max(), outliers.max(), FP8)


def aligned_batches() -> list[torch.Tensor]:
    """Batches whose running bound (1, then 8) ends where one batch's bound is: identical histograms."""
    g = torch.Generator().manual_seed(2)
    first = laplace(4096, g)
    first = first / first.abs().max()  # |x| max exactly 1.0
    second = laplace(4096, g, 2.0).clamp(-7.5, 7.5)
    second[0] = -8.0
    return [first, second, laplace(4096, g, 0.5).clamp(-7.5, 7.5)]


@pytest.mark.parametrize("args", [INT8, INT4, FP8], ids=["int8", "int4", "fp8"])
@pytest.mark.parametrize("name", NAMES)
def test_batches_equal_one_batch_when_ranges_align(name, args):
    batches = aligned_batches()
    kw = {} if name == "minmax" else {"bins": 256}
    many, one = observed(name, args, *batches, **kw), observed(name, args, torch.cat(batches), **kw)
    torch.testing.assert_close(many, one, rtol=0, atol=0)


# How close several batches come to one batch when the running bound overshoots the true maximum.
UNALIGNED_TOLERANCE = {"minmax": 0.0, "percentile": 0.002, "mse": 0.05, "kl": 0.15}


@pytest.mark.parametrize("name", NAMES)
def test_batches_match_one_batch_within_histogram_tolerance(name):
    g = torch.Generator().manual_seed(0)
    batches = [laplace(1 << 15, g, scale) for scale in (1.0, 1.7, 3.1, 0.5)]
    x = torch.cat(batches)
    (lo, hi), (lo1, hi1) = observed(name, INT8, *batches), observed(name, INT8, x)
    tolerance = UNALIGNED_TOLERANCE[name]
    assert hi.item() == pytest.approx(hi1.item(), rel=tolerance, abs=1e-6)
    assert lo.item() == pytest.approx(lo1.item(), rel=tolerance, abs=1e-6)
    assert quantization_mse(x, lo, hi, INT8) == pytest.approx(quantization_mse(x, lo1, hi1, INT8), rel=tolerance)


@pytest.mark.parametrize("name", ["percentile", "mse", "kl"])
def test_range_grows_by_doubling_and_keeps_every_count(name):
    g = torch.Generator().manual_seed(3)
    observer = make_observer(name, INT8, bins=128)
    observer.observe(torch.rand(1000, generator=g) * 2 - 1)
    narrow_bound = observer.bound.item()
    observer.observe(torch.rand(1000, generator=g) * 20 - 10)
    counts, edges = observer.histogram()
    assert counts.sum().item() == 2000 and counts.shape == (1, 256) and edges.shape == (1, 257)
    grown = observer.bound.item()
    assert grown >= observer.max.abs().item() > narrow_bound
    assert grown / narrow_bound in (8.0, 16.0)  # whole doublings
    assert edges[0, 0].item() == -grown and edges[0, -1].item() == grown
    lo, hi = observer.result()
    assert hi.item() > 5  # the range follows the wider batch


def test_per_channel_growth_matches_binning_at_the_final_bounds():
    """Channel 0 grows 1 -> 4, channel 1 never grows: counts equal one pass at bounds (4, 2)."""
    g = torch.Generator().manual_seed(4)
    first = torch.rand(512, 2, generator=g) * 2 - 1
    first[0] = torch.tensor([1.0, 2.0])
    second = torch.rand(512, 2, generator=g) * 2 - 1
    second[0, 0] = -4.0
    grown = make_observer("kl", INT8, per_channel=True, bins=64)
    grown.observe(first)
    grown.observe(second)
    direct = make_observer("kl", INT8, per_channel=True, bins=64)
    direct.observe(torch.cat([second, first]))  # the widest values come first: no growth
    torch.testing.assert_close(grown.bound, torch.tensor([4.0, 2.0]))
    torch.testing.assert_close(grown.histogram(), direct.histogram(), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_per_channel_shapes_for_activations_and_weights(name):
    g = torch.Generator().manual_seed(5)
    kw = {} if name == "minmax" else {"bins": 64}
    activations = torch.randn(2, 8, 16, generator=g)
    lo, hi = observed(name, INT8, activations, activations * 2, per_channel=True, **kw)
    assert lo.shape == hi.shape == (16,)
    assert (lo <= 0).all() and (hi >= 0).all()
    weight = torch.randn(32, 16, generator=g)
    lo, hi = observed(name, INT4, weight, per_channel=True, axis=0, **kw)
    assert lo.shape == hi.shape == (32,)
    assert (hi <= weight.amax(1)).all() and (lo >= weight.amin(1)).all()
    if name == "minmax":
        torch.testing.assert_close(hi, weight.amax(1))
    assert observed(name, INT8, weight, **kw)[0].shape == (1,)


def test_asymmetric_ranges_keep_one_sided_data_one_sided():
    x = torch.randn(1 << 14, generator=torch.Generator().manual_seed(6)).relu()
    args = QuantArgs(num_bits=8, symmetric=False, strategy="tensor")
    for name in NAMES:
        lo, hi = observed(name, args, x, **({} if name == "minmax" else {"bins": 256}))
        # The percentile interpolates inside the bin that holds the zeros, so its lo may sit just above 0.
        assert 0 <= lo.item() < 1e-3 * hi.item() and 0 < hi.item() <= x.max().item(), name


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_channels_give_an_empty_range(name):
    x = torch.zeros(16, 3)
    x[:, 1] = torch.linspace(-1, 2, 16)
    lo, hi = observed(name, INT8, x, x, per_channel=True, **({} if name == "minmax" else {"bins": 64}))
    assert lo[0].item() == hi[0].item() == 0 and lo[2].item() == hi[2].item() == 0
    assert lo[1].item() < 0 < hi[1].item()


@pytest.mark.parametrize("name", NAMES)
def test_nan_inf_and_changed_channels_are_errors(name):
    observer = make_observer(name, INT8, per_channel=True)
    with pytest.raises(ValueError, match="NaN/Inf"):
        observer.observe(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="NaN/Inf"):
        observer.observe(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(RuntimeError, match="no data"):
        observer.result()
    observer.observe(torch.ones(3, 4))
    with pytest.raises(ValueError, match="4 channels before, now 5"):
        observer.observe(torch.ones(3, 5))


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_through_safetensors_and_json(tmp_path, name):
    g = torch.Generator().manual_seed(7)
    first, second = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g) * 3
    kw = {} if name == "minmax" else {"bins": 64}
    observer = make_observer(name, INT8, per_channel=True, **kw)
    observer.observe(first)
    tensors, meta = observer.state_dict()
    save_file(tensors, tmp_path / "stats.safetensors")
    (tmp_path / "stats.json").write_text(json.dumps(meta))

    restored = make_observer(name, INT8)  # settings come back from the saved state
    restored.load_state_dict(load_file(tmp_path / "stats.safetensors"), json.loads((tmp_path / "stats.json").read_text()))
    assert restored.per_channel and restored.num_observed == 64
    for obs in (observer, restored):
        obs.observe(second)
    torch.testing.assert_close(restored.result(), observer.result(), rtol=0, atol=0)
    assert (restored.histogram() is None) == (name == "minmax")

    other = make_observer("kl" if name != "kl" else "mse", INT8)
    with pytest.raises(ValueError, match=f"from the '{name}' observer"):
        other.load_state_dict(tensors, meta)


def test_histogram_counts_every_value():
    observer = make_observer("percentile", INT8, bins=32)
    observer.observe(torch.linspace(-1, 1, 101))
    counts, edges = observer.histogram()
    assert counts.sum().item() == 101 and counts.dtype == torch.float64
    torch.testing.assert_close(edges[0, [0, 32, 64]], torch.tensor([-1.0, 0.0, 1.0]))
    assert make_observer("minmax", INT8).histogram() is None
    assert isinstance(observer, HistogramObserver)


def test_make_observer_names_the_unknown_one():
    assert set(OBSERVERS) == {"minmax", "percentile", "mse", "kl"}
    assert make_observer("mse", INT8, grid=10).grid == 10
    with pytest.raises(ValueError, match=r"unknown observer 'entropy'; choose from minmax, percentile, mse, kl"):
        make_observer("entropy", INT8)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="percentile"):
        make_observer("percentile", INT8, percentile=0)
    with pytest.raises(ValueError, match="bins"):
        make_observer("kl", INT8, bins=0)
    with pytest.raises(ValueError, match="min_ratio"):
        make_observer("mse", INT8, min_ratio=1.5)
