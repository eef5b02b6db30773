"""The protocol's timing: calls captured in a CUDA graph and replayed, median per call; several variants' graphs
replayed in turn so that none inherits another's clocks; weights rotated over copies.

Imported by the protocol benchmarks (bench_kernels.py, which re-exports them for dev/'s scripts, and bench_w8a8.py)
and the sweeps in dev/.
"""

from __future__ import annotations

import statistics

import torch


def capture(call, reps: int) -> torch.cuda.CUDAGraph:
    """`reps` calls of `call` captured in one CUDA graph, after warm-up calls on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # capture wants the first calls (allocations, autotuning) done
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            call()
    return graph


def graph_ms(call, reps: int = 20, replays: int = 10) -> float | None:
    """Median time per call of `reps` calls captured in one CUDA graph: GPU time with the CPU's launch
    and dispatch cost taken out (a decode step under CUDA graphs sees this). None if capture fails.
    `call` rotates its weights, so the captured calls read `reps` different copies."""
    return interleaved_graph_ms({"call": call}, reps, replays)["call"]


def interleaved_graph_ms(calls: dict, reps: int = 20, replays: int = 10) -> dict:
    """name -> median time per call, as `graph_ms`, of every call's graph replayed in turn (`replay_order`), so
    each sees the same clocks. Timed one after another, a layer measured right after cuBLAS's bf16 GEMM read up to
    10% slow on the H100's compute-bound cells (session 55, dev/layer_gap.py: its own schedule alone, timed later,
    ran at the bf16 GEMM's speed). None for a call whose capture fails."""
    graphs = {}
    for name, call in calls.items():
        try:
            graphs[name] = capture(call, reps)
        except (RuntimeError, NotImplementedError, ValueError) as err:  # a path this GPU/PyTorch lacks
            print(f"graph capture failed ({name}): {str(err).splitlines()[0]}")
    times = replay_graphs(graphs, reps, replays)
    return {name: times.get(name) for name in calls}


def replay_graphs(graphs: dict, reps: int = 20, replays: int = 10) -> dict:
    """name -> median ms per call of captured graphs (each of `reps` calls), replayed in turn (`replay_order`)."""
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for i in range(replays):
        for name in replay_order(list(graphs), i):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graphs[name].replay()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end) / reps)
    return {name: statistics.median(t) if t else None for name, t in times.items()}


def replay_order(names: list, i: int) -> list:
    """The order of replay i: rotated by i // 2, reversed on odd i. Over 2 * len(names) replays each name takes
    each place equally often (two names: ABBA)."""
    shift = i // 2 % len(names) if names else 0
    order = names[shift:] + names[:shift]
    return order if i % 2 == 0 else order[::-1]


class Rotation:
    """Cycles through copies of the same operand so consecutive calls read different memory."""

    def __init__(self, items: list) -> None:
        self.items, self.i = items, 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]
