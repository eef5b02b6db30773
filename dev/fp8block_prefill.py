"""Why fp8-block prefill lost to bf16 end to end (session 11: 0.88x) while its layers measured 1.3-1.6x:
one QuantLinear per 8B shape at 2048 tokens, eager and under torch.compile, beside bf16, and the kernels of
the compiled call (torch.profiler).

    python3 dev/fp8block_prefill.py
"""

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from quantize.linear import QuantLinear
from quantize.primitives import quantize_weight
from quantize.scheme import preset


def ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def probe(scheme: str, k: int, n: int) -> None:
    dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / 64
    s = preset(scheme)
    layer = QuantLinear.from_qtensor(quantize_weight(dense.float(), s.weights), s).cuda()
    x = torch.randn(1, 2048, k, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(layer)
    t_bf16, t_eager, t_comp = ms(lambda: F.linear(x, dense)), ms(lambda: layer(x)), ms(lambda: compiled(x))
    print(f"{scheme} {k}x{n} M=2048: bf16 {t_bf16 * 1e3:.0f} us, eager {t_bf16 / t_eager:.2f}x, "
          f"compiled {t_bf16 / t_comp:.2f}x", flush=True)
    if scheme == "fp8-block" and n == 28672:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                compiled(x)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10))


for scheme in ("fp8-block", "fp8"):
    for k, n in ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)):
        probe(scheme, k, n)
