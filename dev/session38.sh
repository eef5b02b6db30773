#!/usr/bin/env bash
# The next session's device calls, prepared in session 37 (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]: on a fresh
# development machine `bash dev/prebuild_sm90.sh` (~13 min) and `bash dev/prebuild_ext.sh` (~3 min) first).
#   call 1: bash dev/session38.sh fusedtests w8tests w8ab lowab e2efused     (~12 min)
# fusedtests  the planes under torch.compile (tests/test_planes_gpu.py) and the gated MLP's tests
# w8tests    w8_planes_gemv (csrc/w8_planes.cu, written in session 37 without device time) and x_planes' k order
# w8ab       dev/w8planes_ab.py: w8_planes_gemv given and with x_planes against w8_gemv and bf16 at 1-4 tokens; if it
#            wins, QTOOL_W8_PLANES=1 end to end: E2E_SCHEMES=w8a8-int8 e2ew8
# lowab      dev/planes_ab.py --bits 3 --group 128 and --bits 2 --group 64 (wo_planes_low.cu given and with x_planes,
#            against the ring GEMV / variant 3): if it wins, QTOOL_LOWBIT_PLANES=1 goes on where it does
# e2efused    qtool bench llama-8b w4a16 at batch 1 and 4 with QTOOL_FUSED_PLANES=1 (the q/k/v, gate/up and down
#             GEMVs at 1-2 tokens on the planes, Inductor writing them in the RMSNorm and SiLU-and-multiply kernels)
#             and without, one process each
cd "$(dirname "$0")/.."
LOG=session38.log
source dev/gpu_setup.sh

fusedtests() {
  step "GPU tests: the planes under torch.compile"
  gputests fusedtests "${PT_TIMEOUT:-240}" tests/test_planes_gpu.py tests/test_mlp.py  # (and the 2-/3-bit GEMV)
}
w8tests() {
  step "GPU tests: w8_planes_gemv"
  gputests w8tests "${PT_TIMEOUT:-240}" tests/test_kernels_gpu.py -k "w8_planes or given_planes or opcheck"
}
w8ab() {
  step "w8_planes_gemv vs w8_gemv vs bf16, 1-4 tokens"
  timeout -k 10 "${AB_TIMEOUT:-200}" python3 dev/w8planes_ab.py --json "$OUT/w8planes_ab.json" 2>&1 | tail -40
}
e2ew8() {  # W8A8 int8 at batch 1 and 4 with the int8-row planes and without
  QTOOL_W8_PLANES=1 E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "-w8planes" "${E2E_SCHEMES:-w8a8-int8}" 1,4 2048 11
  E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "" "${E2E_SCHEMES:-w8a8-int8}" 1,4 2048 11
}
lowab() {
  step "W3 g128 / W2 g64 on the planes vs the GEMVs, 1-4 tokens"
  timeout -k 10 "${AB_TIMEOUT:-150}" python3 dev/planes_ab.py --bits 3 --group 128 --json "$OUT/planes_w3.json" 2>&1 | tail -32
  timeout -k 10 "${AB_TIMEOUT:-150}" python3 dev/planes_ab.py --bits 2 --group 64 --json "$OUT/planes_w2.json" 2>&1 | tail -32
}
e2efused() {
  QTOOL_FUSED_PLANES=1 E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "-fused" "w4a16" ${E2E_BATCHES:-1,4} 2048 11
  E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "" "w4a16" ${E2E_BATCHES:-1,4} 2048 11
}

xtests() {  # x_planes in registers (session 38): its lengths, the GEMVs on its planes, the planes under compile
  step "GPU tests: x_planes, the planes GEMVs"
  gputests xtests "${PT_TIMEOUT:-200}" tests/test_kernels_gpu.py -k "x_planes or given_planes or w8_planes or opcheck"
  gputests planestests "${PT_TIMEOUT:-200}" tests/test_planes_gpu.py tests/test_routes.py
}
xab() {  # the producer's cost: p (x_planes + GEMV) against g (planes given), W4 / W8 / W3
  step "planes GEMVs with the register x_planes"
  timeout -k 10 150 python3 dev/planes_ab.py --json "$OUT/planes_w4.json" 2>&1 | tail -32
  timeout -k 10 150 python3 dev/w8planes_ab.py --json "$OUT/w8planes_ab.json" 2>&1 | tail -32
  timeout -k 10 150 python3 dev/planes_ab.py --bits 3 --group 128 --json "$OUT/planes_w3.json" 2>&1 | tail -32
}
routeab() {  # the routes as landed (lowbit and int8-row planes on) against QTOOL_LOWBIT_PLANES=0 QTOOL_W8_PLANES=0
  for label in on off; do
    local env=""; [ $label = off ] && env="QTOOL_LOWBIT_PLANES=0 QTOOL_W8_PLANES=0"
    step "protocol tables, planes $label"
    env $env timeout -k 10 200 python3 benchmarks/bench_kernels.py --formats w3a16-g128,w2a16-g64,w8a16-channel \
      --tokens 1,2,3,4 --json "$OUT/wo_$label.json" > /tmp/wo_$label.txt 2>&1; echo "exit $?"; tail -40 /tmp/wo_$label.txt
    env $env timeout -k 10 200 python3 benchmarks/bench_w8a8.py --tokens 1,2,4 --json "$OUT/w8a8_$label.json" \
      > /tmp/w8a8_$label.txt 2>&1; echo "exit $?"; tail -40 /tmp/w8a8_$label.txt
  done
}
fusediag() {  # why QTOOL_FUSED_PLANES=1's bench ran past 280 s (call 2): batch 1, short prompt, the whole log kept
  step "fused planes e2e, diagnosis"
  QTOOL_FUSED_PLANES=1 TORCH_LOGS="recompiles,graph_breaks" timeout -k 15 "${E2E_TIMEOUT:-220}" python3 -m quantize \
    bench llama-8b --random-weights --scheme w4a16 --decode-tokens 16 --batch-sizes 1 --prefill-len 128 \
    --json "$OUT/e2e-fused-diag.json" > "$OUT/fusediag.txt" 2>&1
  echo "exit $?"; grep -c "Recompiling\|Graph break" "$OUT/fusediag.txt"; tail -25 "$OUT/fusediag.txt"
}

lowtable() {  # issue 19's 4-, 3- and 2-bit rows at 1-4 tokens, the routes as landed (call 4)
  step "W4 / W3 / W2 at 1-4 tokens, every shape"
  timeout -k 10 240 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w3a16-g128,w2a16-g64 --tokens 1,2,3,4 \
    --json "$OUT/wo_low.json" > /tmp/wo_low.txt 2>&1; echo "exit $?"; tail -80 /tmp/wo_low.txt
}
e2e4() {  # W4A16 end to end with the planes' prefetch hint (QTOOL_PLANES_PREFETCH=0: without)
  E2E_TIMEOUT=${E2E_TIMEOUT:-280} bench8b "${E2E_LABEL:-}" "w4a16" ${E2E_BATCHES:-1,4} 2048 11
}

for stage in "$@"; do "$stage"; done
step "done"
