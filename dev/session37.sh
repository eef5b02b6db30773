#!/usr/bin/env bash
# The next session's device calls, prepared in session 36 (no device time left for them; nvidia-h200, carry
# [".gpu/w8a8", ".gpu/ext"]: `bash dev/prebuild_sm90.sh` (~13 min) and `bash dev/prebuild_ext.sh` (~3-4 min) first on a
# fresh development machine, else gpu_setup.sh compiles for minutes).
#   call 1: bash dev/session37.sh planetests planesan planesab     (~5 min: wo_gemv variant 4, csrc/wo_planes.cu,
#           written in session 36 and never run: its tests, compute-sanitizer, its speed against the ring GEMV)
#   call 2, if the planes win at one token: bash dev/session37.sh e2eplanes ncuplanes   (~6 min)
#   (session 37 ran call 1 twice, the second with x_planes + wo_planes_gemv, then: planetests w4small e2eplanes)
# planetests  the variant's GPU tests and the other wo_gemv / QuantLinear tests (ops.cpp's checks changed)
# planesan    compute-sanitizer memcheck and racecheck over one planes launch per token count (the staging's barriers)
# planesab    dev/planes_ab.py: planes (variants 4 and 5) vs the ring GEMV vs bf16 at 1-4 tokens, issue 19's shapes and
#             the fused 8B ones
# e2eplanes   qtool bench llama-8b w4a16 at batch 1 and 16, prefill 2048, with QTOOL_GEMV_PLANES=${PLANES:-1} and without
# ncuplanes   ncu --set full of the planes and the lean ring GEMV at one token on 4096 x 4096 and 8192 x 8192: where the
#             planes' time goes (the staging's share, session 36's instruction count: ~160 per 16-k subtile per thread)
cd "$(dirname "$0")/.."
LOG=session37.log
source dev/gpu_setup.sh

planetests() {
  step "GPU tests: wo_gemv variant 4 (planes) and the weight-only GEMVs"
  gputests planetests "${PT_TIMEOUT:-300}" tests/test_kernels_gpu.py tests/test_wo_stream_gpu.py tests/test_mixed_gpu.py \
    -k "planes or raw_kernels or gemv or quantlinear or opcheck or stream or route"
}
planesan() {
  step "compute-sanitizer: one planes launch per token count"
  cat > /tmp/planes_one.py <<'PY'
import torch
import quantize  # noqa: F401
from qtool_kernels import build
from qtool_kernels.layout import EPILOGUE, pack_weight
ops = build.load_extension()
for k, n, m in ((576, 200, 1), (4096, 1536, 2), (14336, 64, 3), (4096, 256, 4)):
    codes = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
    p = pack_weight(codes, torch.rand(n, -(-k // 128), device="cuda"), None, None, 4, 128)
    x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
    for variant in (4, 5, 6):
        ops.wo_gemv(x, p.qweight, p.scale, None, torch.randn(n, device="cuda"), 4, 128, n, EPILOGUE, None, variant)
    planes, xs = ops.x_planes(x, 1)
    for variant in (0, 1, 2):
        ops.wo_planes_gemv(planes, xs, p.qweight, p.scale, None, None, 128, n, x.dtype, variant + 16)
    zero = torch.randint(-8, 8, p.scale.shape, device="cuda").float()
    ops.wo_planes_gemv(planes, xs, p.qweight, p.scale, zero, None, 128, n, x.dtype, 16)
torch.cuda.synchronize()
print("launched")
PY
  for tool in memcheck racecheck; do
    timeout -k 10 "${SAN_TIMEOUT:-120}" compute-sanitizer --tool "$tool" --kernel-name kns=planes \
      python3 /tmp/planes_one.py > "$OUT/planes_$tool.txt" 2>&1
    echo "$tool exit $?"; tail -3 "$OUT/planes_$tool.txt"
  done
}
planesab() {
  step "planes vs ring GEMV vs bf16, 1-4 tokens"
  timeout -k 10 "${AB_TIMEOUT:-200}" python3 dev/planes_ab.py --json "$OUT/planes_ab.json" 2>&1 | tail -40
}
ncuplanes() {
  for shape in 4096x4096 8192x8192; do
    ncu_source "$shape" "w4 wo_gemv v4 M=1" "gv4_${shape}" 'wo_planes_kernel'
    ncu_source "$shape" "w4 wo_gemv v1 M=1" "gv1_${shape}" 'wo_gemv_kernel'
  done
}
e2eplanes() {  # the planes route on (the default) and off, one process each, bf16 beside each (~220 s each)
  E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "" "w4a16" ${E2E_BATCHES:-1,4,16} 2048 11
  QTOOL_GEMV_PLANES=0 E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "-noplanes" "w4a16" ${E2E_BATCHES:-1,4,16} 2048 11
}
asymab() {  # W4 g128 asymmetric at 1-4 tokens through QuantLinear: the planes (with zero points) on and off
  ASYM_TOKENS=1,2,3,4 asymtable
  cp "$OUT/wo_asym.json" "$OUT/wo_asym_planes.json"
  QTOOL_GEMV_PLANES=0 ASYM_TOKENS=1,2,3,4 asymtable
}
asymmodes() {  # the two forms of zero points in the planes GEMV (csrc/wo_planes.cu, ASYM 1 "sums", 2 "codes"):
  # their tests, then W4 g128 asym at 1-4 tokens through QuantLinear with each
  gputests asym1tests 120 tests/test_kernels_gpu.py -k "given_planes or opcheck"
  QTOOL_PLANES_ASYM=2 gputests asym2tests 120 tests/test_kernels_gpu.py -k "given_planes or opcheck"
  ASYM_TOKENS=1,2,3,4 asymtable
  cp "$OUT/wo_asym.json" "$OUT/wo_asym_sums.json"
  QTOOL_PLANES_ASYM=2 ASYM_TOKENS=1,2,3,4 asymtable
  cp "$OUT/wo_asym.json" "$OUT/wo_asym_codes.json"
}
final() {  # the routes as landed: the tests, then W4 g128 symmetric and asymmetric at 1-4 tokens through QuantLinear
  planetests
  planesan
  w4small
  ASYM_TOKENS=1,2,3,4 asymtable
}
stalefix() {  # session 37: the one test that failed in planetests (a refusal test that still named variant 4)
  gputests stalefix 120 tests/test_wo_stream_gpu.py -k token_limits
}
w4small() {  # issue 19's W4 g128 rows at 1-4 tokens through QuantLinear (the routes), the planes on
  step "W4 g128 at 1-4 tokens, every shape"
  timeout -k 15 "${SMALL_TIMEOUT:-200}" python3 benchmarks/bench_kernels.py --formats w4a16-g128 --tokens 1,2,3,4 \
    --json "$OUT/w4_small.json" > /tmp/w4_small.txt 2>&1
  echo "exit $?"; tail -30 /tmp/w4_small.txt
}

for stage in "$@"; do "$stage"; done
step "done"
