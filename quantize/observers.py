"""Range observers: accumulate statistics over calibration batches, then choose (lo, hi).

An observer never keeps the activations it sees: MinMax keeps running extremes, the
others a fixed-size signed histogram that grows its range by powers of two as wider data
arrives. Choosing a range is a function of those statistics only, so it can be redone
from a saved `state_dict`. The target `QuantArgs` supply the number format (integer bits
and symmetry, or FP8); granularity is the observer's own: one range for the tensor, or
with `per_channel` one per entry of `axis` (-1, the features of an activation
[..., features]; 0, the output rows of a weight [out, in]).

- minmax: the observed range.
- percentile: the p-th percentile of |x| (symmetric targets) or the (100-p)-th and p-th
  percentiles of x (asymmetric).
- mse: the clip ratio of the observed range, on a grid, with the least expected squared
  quantization error; the same search as GPTQ's `find_params` grid, scored on the histogram.
- kl: entropy calibration (Migacz, "8-bit Inference with TensorRT", GTC 2017): the
  threshold whose clipped-then-quantized histogram is closest in KL divergence to the
  clipped reference.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch

from .primitives import dequantize, qparams_from_range, quantize
from .scheme import QuantArgs, Strategy

# Candidate ranges are scored in blocks of [n, C, 2 * bins] tensors of about this many values:
# big enough that Python overhead vanishes, small enough for a few float64 copies in memory.
CANDIDATE_BUDGET = 1 << 21


class Observer:
    """Common interface; subclasses choose the range in `_choose`.

    observe(x): x [..., features] (any shape when per tensor).
    result(): (lo, hi) float32, each [1] per tensor or [channels] per channel.
    """

    name: ClassVar[str] = ""
    settings: ClassVar[tuple[str, ...]] = ("per_channel", "axis")  # saved with the statistics

    def __init__(self, args: QuantArgs, *, per_channel: bool = False, axis: int = -1) -> None:
        self.args = args
        self.per_channel = per_channel
        self.axis = axis
        self.min: torch.Tensor | None = None  # [C] running minimum
        self.max: torch.Tensor | None = None  # [C] running maximum
        self.num_observed = 0  # values seen per channel

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """x as float32 [C, M]: one row per channel (C = 1 per tensor)."""
        if not self.per_channel:
            return x.reshape(1, -1).float()
        channels = x.shape[self.axis]
        return x.movedim(self.axis, -1).reshape(-1, channels).T.float()

    def observe(self, x: torch.Tensor) -> None:
        """Fold a batch into the statistics. Raises ValueError on NaN/Inf or a changed channel count."""
        if x.numel() == 0:
            return
        finite = torch.isfinite(x)
        if not finite.all():
            raise ValueError(f"observed tensor {tuple(x.shape)} has {int((~finite).sum())} NaN/Inf values")
        rows = self._rows(x)
        lo, hi = rows.amin(1), rows.amax(1)
        if self.min is None:
            self.min, self.max = lo, hi
        elif lo.shape != self.min.shape:
            raise ValueError(f"observer saw {self.min.numel()} channels before, now {lo.numel()} (shape {tuple(x.shape)})")
        else:
            self.min, self.max = torch.minimum(self.min, lo), torch.maximum(self.max, hi)
        self.num_observed += rows.shape[1]
        self._accumulate(rows)

    def _accumulate(self, rows: torch.Tensor) -> None:
        """Subclass hook: rows [C, M] of one batch, after min/max are updated."""

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min is None:
            raise RuntimeError(f"{self.name} observer has observed no data")
        lo, hi = self._choose()
        return lo.float().clone(), hi.float().clone()

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _clip(self, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The observed range cut to [-threshold, threshold] per channel."""
        return torch.maximum(self.min, -threshold), torch.minimum(self.max, threshold)

    def histogram(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(counts [C, 2 * bins], edges [C, 2 * bins + 1]) where the observer keeps a histogram."""
        return None

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Statistics as (tensors for safetensors, JSON-able settings and counts)."""
        if self.min is None:
            raise RuntimeError(f"{self.name} observer has observed no data")
        meta = {"observer": self.name, "num_observed": self.num_observed}
        meta.update({key: getattr(self, key) for key in self.settings})
        return {"min": self.min.clone(), "max": self.max.clone()}, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore statistics and settings from `state_dict`; the QuantArgs are the caller's (they live in the scheme)."""
        if meta.get("observer") != self.name:
            raise ValueError(f"statistics are from the {meta.get('observer')!r} observer, not {self.name!r}")
        for key in self.settings:
            setattr(self, key, meta[key])
        self.num_observed = int(meta["num_observed"])
        self.min, self.max = tensors["min"].float(), tensors["max"].float()


class MinMaxObserver(Observer):
    """The running minimum and maximum."""

    name = "minmax"

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min, self.max


class HistogramObserver(Observer):
    """Keeps a signed histogram per channel: 2 * bins equal bins over [-bound, bound].

    Bin `bins` + k holds (k w, (k + 1) w] (and 0 itself for k = 0), bin `bins` - 1 - k holds
    [-(k + 1) w, -k w), with w = bound / bins; folding the halves gives the histogram of |x|.
    When a batch exceeds the bound, the bound doubles (as often as needed) and each run of
    2^k old bins merges into one, outward from 0: nothing is lost but resolution.
    Memory: C x 2 x bins float64 counts.
    """

    settings = (*Observer.settings, "bins")

    def __init__(self, args: QuantArgs, *, per_channel: bool = False, axis: int = -1, bins: int = 2048) -> None:
        super().__init__(args, per_channel=per_channel, axis=axis)
        if bins < 1:
            raise ValueError(f"bins must be positive, got {bins}")
        self.bins = bins
        self.counts: torch.Tensor | None = None  # [C, 2 * bins] float64, exact counts up to 2^53
        self.bound: torch.Tensor | None = None  # [C] float32; 0 while a channel has seen only zeros
        # Same number format, one scale per row: lets `quantize` broadcast [C, 1] scales over [C, n] bins.
        self._row_args = replace(args, strategy=Strategy.CHANNEL, group_size=None, block_structure=None)

    def _accumulate(self, rows: torch.Tensor) -> None:
        channels, width = rows.shape[0], 2 * self.bins
        if self.counts is None:
            self.counts = torch.zeros(channels, width, dtype=torch.float64, device=rows.device)
            self.bound = torch.zeros(channels, device=rows.device)
        magnitude = rows.abs()
        self._grow(magnitude.amax(1))
        bound = torch.where(self.bound > 0, self.bound, torch.ones_like(self.bound))[:, None]
        # Bins are closed on the side away from zero, so |x| == bound needs no clamping; that is
        # what makes merging after growth give the same counts as binning at the final bound.
        magnitude = (torch.ceil(magnitude / bound * self.bins) - 1).long().clamp(0, self.bins - 1)
        index = torch.where(rows >= 0, self.bins + magnitude, self.bins - 1 - magnitude)
        # One bincount over all channels: channel c owns the slots [c * width, (c + 1) * width).
        index += torch.arange(channels, device=rows.device)[:, None] * width
        self.counts += torch.bincount(index.flatten(), minlength=channels * width).view(channels, width)

    def _grow(self, needed: torch.Tensor) -> None:
        """Raise each channel's bound to cover `needed` [C], merging bins by a power of two."""
        grow = needed > self.bound
        if not grow.any():
            return
        live = grow & (self.bound > 0)  # channels that already hold nonzero counts
        safe = torch.where(live, self.bound, torch.ones_like(self.bound))
        doublings = torch.where(live, torch.ceil(torch.log2(needed / safe)), 0).long().clamp(min=0)
        doublings += (torch.ldexp(safe, doublings) < needed) & live  # log2 can round down
        # Channels that saw only zeros keep them in the bin at 0, whatever the bound.
        self.bound = torch.where(live, torch.ldexp(self.bound, doublings), torch.where(grow, needed, self.bound))
        factor = (1 << doublings)[:, None]
        i = torch.arange(2 * self.bins, device=self.counts.device)
        b = self.bins
        target = torch.where(i >= b, b + (i - b) // factor, b - 1 - (b - 1 - i) // factor)
        self.counts = torch.zeros_like(self.counts).scatter_add_(1, target, self.counts)

    def bin_width(self) -> torch.Tensor:
        """[C, 1] width of one bin."""
        return (self.bound / self.bins)[:, None]

    def centers(self) -> torch.Tensor:
        """[C, 2 * bins] bin centers."""
        i = torch.arange(2 * self.bins, device=self.counts.device)
        return (i - self.bins + 0.5) * self.bin_width()

    def folded(self) -> torch.Tensor:
        """[C, bins] histogram of |x| over [0, bound]."""
        return self.counts[:, self.bins:] + self.counts[:, : self.bins].flip(1)

    def histogram(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.counts is None:
            return None
        i = torch.arange(2 * self.bins + 1, device=self.counts.device)
        return self.counts.clone(), (i - self.bins) * self.bin_width()

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().state_dict()
        return {**tensors, "histogram": self.counts.clone(), "histogram_bound": self.bound.clone()}, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        super().load_state_dict(tensors, meta)
        self.counts = tensors["histogram"].double()
        self.bound = tensors["histogram_bound"].float()

    def estimate_error(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Mean squared quantization error of the histogram under ranges lo, hi [..., C]; same shape.

        Every value is taken to sit at its bin center, so the estimate is exact to within
        the bin width; it covers both rounding and clipping error. Leading dims of lo and
        hi are candidate ranges, scored in one pass.
        """
        centers = self.centers()
        scale, zero_point = qparams_from_range(lo[..., None], hi[..., None], self._row_args)
        codes = quantize(centers, scale, zero_point, self._row_args)
        error = centers - dequantize(codes, scale, zero_point, self._row_args)
        return (self.counts * error.double().square()).sum(-1) / self.counts.sum(-1)

    def split_candidates(self, candidates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split candidates [N] so each block's [n, C, 2 * bins] work tensors hold about 2^21 values."""
        return candidates.split(max(1, CANDIDATE_BUDGET // self.counts.numel()))


def locate_quantile(counts: torch.Tensor, left: torch.Tensor, width: torch.Tensor, q: float) -> torch.Tensor:
    """[C] q-quantile (0..1) of histograms counts [C, n] whose bins start at left [C, 1], each width [C, 1].

    Values are taken as uniform within a bin, so the answer interpolates inside the bin it falls in.
    """
    cumulative = counts.cumsum(1)
    target = q * cumulative[:, -1:]
    j = torch.searchsorted(cumulative, target).clamp(max=counts.shape[1] - 1)
    in_bin = counts.gather(1, j)
    before = cumulative.gather(1, j) - in_bin
    fraction = ((target - before) / in_bin.clamp(min=1e-30)).clamp(0, 1)
    return (left + (j + fraction) * width).squeeze(1).float()


class PercentileObserver(HistogramObserver):
    """Clip at a percentile: of |x| for symmetric targets, of x at both ends for asymmetric ones."""

    name = "percentile"
    settings = (*HistogramObserver.settings, "percentile")

    def __init__(self, args: QuantArgs, *, percentile: float = 99.99, **kw: Any) -> None:
        super().__init__(args, **kw)
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile = percentile

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor]:
        q, width = self.percentile / 100, self.bin_width()
        if self.args.symmetric:
            return self._clip(locate_quantile(self.folded(), torch.zeros_like(width), width, q))
        left = -self.bound[:, None]
        lo, hi = locate_quantile(self.counts, left, width, 1 - q), locate_quantile(self.counts, left, width, q)
        return torch.maximum(self.min, lo), torch.minimum(self.max, hi)


class MSEObserver(HistogramObserver):
    """Shrink the observed range by the ratio, of `grid` points from 1 to `min_ratio`, with least expected MSE.

    Both ends shrink by the same ratio, so asymmetric ranges keep their skew. The search
    runs per channel on the histogram; cost is grid x C x 2 x bins.
    """

    name = "mse"
    settings = (*HistogramObserver.settings, "grid", "min_ratio")

    def __init__(self, args: QuantArgs, *, grid: int = 100, min_ratio: float = 0.2, **kw: Any) -> None:
        super().__init__(args, **kw)
        if grid < 1 or not 0 < min_ratio <= 1:
            raise ValueError(f"need grid >= 1 and 0 < min_ratio <= 1, got grid={grid}, min_ratio={min_ratio}")
        self.grid, self.min_ratio = grid, min_ratio

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor]:
        ratios = torch.linspace(1.0, self.min_ratio, self.grid, device=self.min.device)
        errors = torch.cat([self.estimate_error(self.min * r[:, None], self.max * r[:, None])
                            for r in self.split_candidates(ratios)])
        best = ratios[errors.argmin(0)]  # argmin takes the first minimum: ties keep the wider range
        return self.min * best, self.max * best


class KLObserver(HistogramObserver):
    """TensorRT-style entropy calibration, on the target's own grid (int or FP8).

    For each candidate threshold t = i bin widths (i from 2^(bits-1), 128 for 8-bit formats,
    up to `bins`, in steps of `step`), over the bins inside [-t, t]:
      P: the histogram with the mass outside folded into the two end bins (what clipping does);
      Q: the histogram without that mass, quantized: the bins whose centers quantize to the
         same code share their total evenly among the bins where P is nonzero;
    and the threshold with the least KL(P || Q), each normalized, wins. TensorRT merges fixed
    runs of bins into 128 levels; merging by code is the same for a symmetric int8 grid and
    also covers int4, asymmetric and FP8 grids (FP8 uses this procedure, not a fallback).
    Where Q is empty and P is not (an empty code group at the edge that clipping fills) the
    divergence is infinite and the threshold is passed over, instead of smoothing Q with an
    epsilon. Asymmetric targets get a symmetric threshold, applied to the observed range.
    Cost: about bins / step passes over C x 2 x bins values.
    """

    name = "kl"
    settings = (*HistogramObserver.settings, "step")

    def __init__(self, args: QuantArgs, *, step: int = 1, **kw: Any) -> None:
        super().__init__(args, **kw)
        if step < 1:
            raise ValueError(f"step must be positive, got {step}")
        self.step = step

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.bins
        first = min(b, 1 << (self.args.num_bits - 1))
        candidates = torch.arange(first, b + 1, self.step, device=self.counts.device)
        divergences = torch.cat([self._divergence(i) for i in self.split_candidates(candidates)])
        best = divergences.min(0)
        threshold = candidates[best.indices] * self.bin_width().squeeze(1)
        # Every candidate diverging (Q empty where P is not) leaves the full range.
        return self._clip(torch.where(best.values.isfinite(), threshold, self.bound))

    def _divergence(self, half_widths: torch.Tensor) -> torch.Tensor:
        """[n, C] KL(P || Q) for the thresholds of `half_widths` [n] bins either side of zero."""
        b, counts = self.bins, self.counts
        j = torch.arange(2 * b, device=counts.device)
        i = half_widths[:, None, None]  # [n, 1, 1]
        inside = counts * ((j >= b - i) & (j < b + i))  # [n, C, 2b]
        # below[:, k] = mass of the bins before bin k, so the mass outside the window is two lookups.
        below = torch.nn.functional.pad(counts.cumsum(1), (1, 0)).expand(len(half_widths), -1, -1)
        left_edge, right_edge = (b - i).expand(-1, counts.shape[0], 1), (b + i - 1).expand(-1, counts.shape[0], 1)
        p = inside.scatter_add(2, left_edge, below.gather(2, left_edge))
        p = p.scatter_add(2, right_edge, below[..., -1:] - below.gather(2, right_edge + 1))

        threshold = half_widths[:, None] * self.bin_width().squeeze(1)  # [n, C]
        lo, hi = self._clip(threshold)
        scale, zero_point = qparams_from_range(lo[..., None], hi[..., None], self._row_args)
        # Every target format stores one byte per value, so the byte is a code id in 0..255.
        codes = quantize(self.centers(), scale, zero_point, self._row_args).view(torch.uint8).long()
        occupied = p > 0
        per_code = torch.zeros(*p.shape[:2], 256, dtype=p.dtype, device=p.device)
        mass = per_code.scatter_add(2, codes, inside).gather(2, codes)
        shares = per_code.scatter_add(2, codes, occupied.double()).gather(2, codes)
        q = torch.where(occupied, mass / shares.clamp(min=1), 0)
        p = p / p.sum(2, keepdim=True)
        q = q / q.sum(2, keepdim=True).clamp(min=1e-300)
        # p log(p / 0) is +inf, which is what rules such a threshold out.
        return torch.where(occupied, p * torch.log(p / q), 0).sum(2)


OBSERVERS: dict[str, type[Observer]] = {
    cls.name: cls for cls in (MinMaxObserver, PercentileObserver, MSEObserver, KLObserver)
}


def make_observer(name: str, args: QuantArgs, **kw: Any) -> Observer:
    """Build the observer registered under `name`; keyword arguments go to its constructor."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; choose from {', '.join(OBSERVERS)}")
    return OBSERVERS[name](args, **kw)
