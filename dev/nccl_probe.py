"""All-reduce bandwidth between this machine's GPUs, as qtool's Hessian merge sees it (float32, NCCL).

    NCCL_DEBUG=INFO torchrun --standalone --nproc-per-node 2 dev/nccl_probe.py   # prints GB/s per size
"""

import os
import time

import torch
import torch.distributed as dist


def main() -> None:
    rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    for mib in (64, 822, 3136):  # 4096^2, 14336^2 and 28672^2 float32 Hessians
        t = torch.ones(mib * 2**18, device="cuda")
        dist.all_reduce(t)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(t)
        torch.cuda.synchronize()
        s = (time.perf_counter() - t0) / 5
        if rank == 0:
            print(f"all_reduce {mib} MiB float32: {s * 1e3:.1f} ms, {mib / 1024 / s:.1f} GiB/s algorithm bandwidth")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
