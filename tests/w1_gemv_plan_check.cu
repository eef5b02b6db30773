// Prints the W1A16 GEMV launch plan (kernels/csrc/w1_gemv_plan.h) on the CPU, so
// tests/test_binary_layout.py can check it against the hardware's shared-memory rules without a GPU.
// stdin: lines "m n_padded k_padded gpc smem_optin_bytes"; stdout per line:
// "blocks threads xs ring_offset partial_offset smem_bytes opt_in xs_row_bytes ring_bytes partial_bytes".
#include <cstdio>

#include "w1_gemv_plan.h"

int main() {
  int m = 0, n_padded = 0, k_padded = 0, gpc = 0, optin = 0;
  while (std::scanf("%d %d %d %d %d", &m, &n_padded, &k_padded, &gpc, &optin) == 5) {
    const qtool::W1GemvPlan p = qtool::plan_w1_gemv(m, n_padded, k_padded, gpc, optin);
    std::printf("%d %d %d %d %d %d %d %d %d %d\n", p.blocks, p.threads, p.xs ? 1 : 0, p.ring_offset, p.partial_offset,
                p.smem_bytes, p.opt_in ? 1 : 0, qtool::w1_xs_row_bytes(k_padded), qtool::w1_ring_bytes(gpc),
                qtool::kW1PartialBytes);
  }
  return 0;
}
