"""Raw mma.sync throughput of the b1 tensor cores (m16n8k256, AND-popc and XOR-popc) next to bf16
(m16n8k16), measured on the GPU: Hopper's binary tensor-core rate is not in NVIDIA's documentation.

    python benchmarks/bench_b1_mma.py [--json out.json]

Every warp runs chains of independent mma (8 accumulators, no memory traffic) on all SMs; the rate is
counted in multiply-accumulates per second (one b1 MAC = one AND/XOR plus one popcount add).
On sm_90 ptxas expands .xor.popc into more instructions (csrc/w1a1.cu), so AND is the one the kernel uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

SOURCE = r"""
#include <torch/extension.h>
#include <cuda_runtime.h>

template <int KIND>  // 0: b1 and.popc, 1: b1 xor.popc, 2: bf16
__global__ void loop(int iters, int* out) {
  int d[8][4] = {};
  float f[8][4] = {};
  uint32_t a[4] = {threadIdx.x, threadIdx.x * 3u, threadIdx.x * 5u, threadIdx.x * 7u};
  uint32_t b0 = threadIdx.x * 11u, b1 = threadIdx.x * 13u;
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      if constexpr (KIND == 0) {
        asm volatile("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                     "{%8,%9}, {%0,%1,%2,%3};" : "+r"(d[c][0]), "+r"(d[c][1]), "+r"(d[c][2]), "+r"(d[c][3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
      } else if constexpr (KIND == 1) {
        asm volatile("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                     "{%8,%9}, {%0,%1,%2,%3};" : "+r"(d[c][0]), "+r"(d[c][1]), "+r"(d[c][2]), "+r"(d[c][3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
      } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                     "{%8,%9}, {%0,%1,%2,%3};" : "+f"(f[c][0]), "+f"(f[c][1]), "+f"(f[c][2]), "+f"(f[c][3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
      }
    }
  }
  int s = 0;
  for (int c = 0; c < 8; ++c) s += d[c][0] + d[c][1] + d[c][2] + d[c][3] + (int)(f[c][0] + f[c][3]);
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

double run(int64_t kind, int64_t iters, int64_t blocks, int64_t threads) {
  torch::Tensor out = torch::empty({blocks * threads}, torch::dtype(torch::kInt).device(torch::kCUDA));
  auto launch = [&] {
    if (kind == 0) loop<0><<<blocks, threads>>>(iters, out.data_ptr<int>());
    else if (kind == 1) loop<1><<<blocks, threads>>>(iters, out.data_ptr<int>());
    else loop<2><<<blocks, threads>>>(iters, out.data_ptr<int>());
  };
  launch();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start);
  launch();
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  return ms;
}
"""
KINDS = {"b1 and.popc m16n8k256": (0, 16 * 8 * 256), "b1 xor.popc m16n8k256": (1, 16 * 8 * 256),
         "bf16 m16n8k16": (2, 16 * 8 * 16)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--iters", type=int, default=4096)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_b1_mma.py needs a CUDA device")
    from torch.utils.cpp_extension import load_inline

    major, minor = torch.cuda.get_device_capability()
    module = load_inline("qtool_b1_mma", cpp_sources="double run(int64_t, int64_t, int64_t, int64_t);",
                         cuda_sources=SOURCE, functions=["run"], extra_cuda_cflags=[
                             "-O3", f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"])
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    result = {"device": torch.cuda.get_device_name(), "sms": sms, "rows": []}
    for name, (kind, macs) in KINDS.items():
        best = None
        for warps_per_sm in (8, 16, 32):
            blocks, threads = sms * warps_per_sm // 4, 128
            ms = module.run(kind, args.iters, blocks, threads)
            rate = blocks * threads // 32 * args.iters * 8 * macs / (ms * 1e-3)
            best = max(best or (0, 0), (rate, warps_per_sm))
        per_sm_clk = best[0] / sms / (torch.cuda.get_device_properties(0).clock_rate * 1e3)
        result["rows"].append({"mma": name, "tera_macs_per_s": best[0] / 1e12, "warps_per_sm": best[1],
                               "macs_per_sm_per_clock_at_max_clock": per_sm_clk})
        print(f"{name:24s} {best[0] / 1e12:9.1f} T MAC/s  ({best[1]} warps/SM; {per_sm_clk:.0f} MAC/SM/clk at the "
              "reported max clock)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
