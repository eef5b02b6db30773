"""Several processes through torch.distributed: data-parallel calibration, weight-parallel methods.

Launched by torchrun, on one machine or several:

    torchrun --nproc-per-node 2 -m quantize quantize MODEL --method gptq ... --device cuda
    qtool quantize MODEL --gpus 2 ...          # the same, torchrun started for this machine
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        -m quantize quantize MODEL ...

Each process (rank) holds a contiguous share of the calibration batches (`Collective.shard`: rank 0
holds batch 0, whose rows the error report samples) and runs every decoder block on its share only;
the activations never move between ranks. What a method learns from the data is reduced here: Hessians
and sums are summed with their token counts (`sum_`), ranges take min/max, sampled rows are gathered
in rank order (`gather_rows`, which is the single process's batch order). The linears of a block are
divided among the ranks (`assign`, longest first onto the least loaded rank) and each result is sent
to every rank (`share`), so all ranks continue with the same quantized block. Rank 0 writes.

Without a process group (or with one process) the `Collective` is `LOCAL`: every reduction returns its
input and every linear is this process's own, which is exactly the single-process code path.
NCCL needs each rank's tensors on its own GPU: `device` is where counts and received tensors go.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._pytree import register_dataclass, tree_flatten, tree_unflatten

from .primitives import QTensor

# Quantized weights travel between ranks as their tensors (`share`), their QuantArgs as plain data.
register_dataclass(QTensor)


class DistributedError(ValueError):
    """A setting that cannot work with several processes; the message names it."""


@dataclass(frozen=True)
class Collective:
    """This process's place among `size` ranks, and the reductions methods call on `ctx.group`."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes checkpoints and prints; the others only compute."""
        return self.rank == 0

    # --- data ---------------------------------------------------------------------------------

    def shard(self, batches: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """This rank's contiguous share of the calibration batches (all of them with one process)."""
        if not self.active or batches is None:
            return batches
        if len(batches) < self.size:
            raise DistributedError(f"{len(batches)} calibration batches cannot be shared by {self.size} processes: "
                                   "raise --num-samples or lower --batch-size so there is one batch per process")
        n = len(batches)
        return batches[self.rank * n // self.size:(self.rank + 1) * n // self.size]

    # --- reductions (in place; identity with one process) --------------------------------------

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.SUM)

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.MAX)

    def min_(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.MIN)

    def _reduce(self, t: torch.Tensor, op: Any) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=op)
        return t

    def count(self, n: int | float) -> float:
        """Sum over ranks of a number (token counts)."""
        if not self.active:
            return n
        t = torch.tensor([float(n)], dtype=torch.float64, device=self.device)
        return float(self.sum_(t).item())

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Rows [M_r, ...] of every rank concatenated in rank order (each rank may hold a different M_r)."""
        if not self.active:
            return t
        t = t.to(self.device).contiguous()
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.int64, device=self.device))
        longest = max(int(s) for s in sizes)
        padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=self.device)
        padded[:t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:int(s)] for p, s in zip(parts, sizes, strict=True)])

    # --- weight parallelism --------------------------------------------------------------------

    def assign(self, costs: dict[str, float]) -> dict[str, int]:
        """name -> rank that computes it: longest first onto the least loaded rank (ties: lowest rank),
        the same answer on every rank since it depends only on `costs`."""
        load = [0.0] * self.size
        owners = {}
        for name in sorted(costs, key=lambda n: -costs[n]):
            rank = min(range(self.size), key=lambda r: (load[r], r))
            owners[name] = rank
            load[rank] += costs[name]
        return {name: owners[name] for name in costs}

    def mine(self, owners: dict[str, int]) -> list[str]:
        return [name for name, rank in owners.items() if rank == self.rank]

    def share(self, local: dict[str, Any], owners: dict[str, int]) -> dict[str, Any]:
        """Every name's value on every rank, each sent by its owner. Values are trees (tuples, lists,
        dicts) of tensors and picklable data; tensors arrive on this rank's device."""
        if not self.active:
            return dict(local)
        metas: list[Any] = [None] * self.size
        with _quiet_treespecs():
            dist.all_gather_object(metas, {n: _describe(v) for n, v in local.items()})
        return {name: self._receive(metas[rank][name], local.get(name), rank) for name, rank in owners.items()}

    def broadcast(self, value: Any, src: int = 0) -> Any:
        """`value` of rank `src` on every rank (a tree as for `share`)."""
        if not self.active:
            return value
        box = [_describe(value) if self.rank == src else None]
        with _quiet_treespecs():
            dist.broadcast_object_list(box, src=src, device=self.device if self.device.type == "cuda" else None)
        return self._receive(box[0], value, src)

    def _receive(self, meta: tuple, value: Any, src: int) -> Any:
        spec, slots = meta
        leaves = tree_flatten(value)[0] if self.rank == src else None
        out = []
        for i, slot in enumerate(slots):
            if slot[0] != "tensor":
                out.append(slot[1])
                continue
            _, shape, dtype = slot
            # Sent as bytes: gloo has no float8 or bfloat16 collectives, bytes work everywhere.
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            if self.rank == src:
                buf = leaves[i].detach().to(self.device).contiguous().reshape(-1).view(torch.uint8)
            else:
                buf = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            if nbytes:
                dist.broadcast(buf, src=src)
            out.append(leaves[i].to(self.device) if self.rank == src else buf.view(dtype).reshape(shape))
        return tree_unflatten(out, spec)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


LOCAL = Collective()


def merge_observer(observer: Any, group: Collective) -> None:
    """Combine a static-activation observer's statistics over the ranks: running min/max reduce
    exactly; histograms (percentile, mse, kl) are binned per rank and cannot be added up here."""
    if not group.active:
        return
    if observer.name != "minmax":
        raise DistributedError(f"the {observer.name} observer cannot combine statistics of several processes; "
                               "use --observer minmax, or one process")
    inf = torch.full((1,), float("inf"), device=group.device)
    lo = inf.clone() if observer.min is None else observer.min.to(group.device)
    hi = -inf if observer.max is None else observer.max.to(group.device)
    observer.min, observer.max = group.min_(lo.clone()), group.max_(hi.clone())
    observer.num_observed = int(group.count(observer.num_observed))


@contextmanager
def _quiet_treespecs() -> Iterator[None]:
    """Unpickling a pytree TreeSpec warns about LeafSpec's deprecation (torch 2.13), once per leaf."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        yield


def _describe(value: Any) -> tuple:
    """(tree structure, per leaf ("tensor", shape, dtype) or ("value", leaf)): what a receiver allocates."""
    leaves, spec = tree_flatten(value)
    slots = [("tensor", tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else ("value", x) for x in leaves]
    return spec, slots


def launched() -> bool:
    """Whether torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str) -> tuple[Collective, str]:
    """Join the process group torchrun describes (nccl on CUDA, gloo on the CPU) and return this rank's
    Collective and device ("cuda" becomes "cuda:LOCAL_RANK"). Without torchrun: (LOCAL, device)."""
    if not launched():
        return LOCAL, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.device(device).index is not None:
            raise DistributedError(f"--device {device} names one GPU; with several processes use --device cuda "
                                   "(each process takes the GPU of its LOCAL_RANK)")
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"process {local_rank} of this machine has no GPU: {torch.cuda.device_count()} "
                                   "visible; start at most that many processes per machine")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", device_id=torch.device(device)
                                if kind == "cuda" else None)
    return Collective(dist.get_rank(), dist.get_world_size(), torch.device(device)), device


def current(device: torch.device | str) -> Collective:
    """The Collective of an initialized process group (LOCAL without one), sending to `device`."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return LOCAL
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return Collective(dist.get_rank(), dist.get_world_size(), device)


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def relaunch_args(argv: list[str], processes: int) -> list[str]:
    """torchrun's arguments to run `argv` (qtool's, after the program name) in `processes` processes on
    this machine, `--gpus` removed so the children do not launch again."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            skip = True
            continue
        if arg.startswith("--gpus="):
            continue
        out.append(arg)
    return ["--standalone", "--nproc-per-node", str(processes), "-m", "quantize", *out]


def relaunch(argv: list[str], processes: int) -> int:
    """Run qtool again under torchrun in `processes` processes of this machine; returns its exit code."""
    import os
    import subprocess
    import sys

    # torchrun gives each process one CPU thread unless told otherwise; the work on the host (reading
    # and checking shards, tokenizing) then runs serially. Share this machine's cores instead.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes)), **os.environ}
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", *relaunch_args(argv, processes)], env=env)
