#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 24 (nvidia-h200, carry [".gpu/w8a8"]; the Hopper
# libraries there match the code: `python3 -c 'import quantize; from qtool_kernels import sm90; print([l.path().name
# for l in sm90.ALL])'` names them, `bash dev/prebuild_sm90.sh` builds a missing one):
#   call 1: bash dev/session25.sh cholesky tests        (~8 min: GPTQ's factor routes on the GPU; every GPU test after
#           session 24's changes: decode attention, the PDL decode test's logits form, GPTQ's factor and column shapes)
#   call 2: TABLE_TIMEOUT=420 bash dev/session25.sh wotable (issue 19's whole weight-only table, last whole in session 11)
#   call 3: bash dev/session25.sh e2e                   (8B end to end under session 24's harness: w4a16 with and without
#           --quantize-lm-head, fp8-block)
#   call 4: bash dev/session25.sh e2ew4                  (w4a16 again: call 3's run hit its 145 s limit)
#   if time is left: bash dev/session25.sh profile
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# cholesky  dev/cholesky_probe.py at K = 4096 and 14336: the chain GPTQ ran until session 24, the reversed-Hessian
#           route it runs now (recursive triangular inverse, or one triangular solve), float64; then dev/gptq_probe.py
# tests     every GPU test
# wotable   every weight-only format, shape and M, with tinygemm beside it
# profile   dev/decode_profile.py at batch 1 and 16 (which SDPA kernel the packed decode attention gets: session 24
#           measured it 1-3% slower than transformers' copies at batch 1, 8-9% faster at 16)
# e2e       qtool bench on the 8B shape (decode batch 1 / 16, prefill 1 x 2048), one process per scheme
cd "$(dirname "$0")/.."
LOG=session25.log
source dev/gpu_setup.sh
step "host: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")"

cholesky() {
  step "GPTQ's inverse-Hessian factor: routes, time and error against float64"
  timeout -k 15 "${CH_TIMEOUT:-120}" python3 dev/cholesky_probe.py --json "$OUT/cholesky.json" 2>&1 | tail -14
  step "GPTQ's arithmetic per linear, with the new factor and column shapes"
  timeout -k 15 "${GP_TIMEOUT:-150}" python3 dev/gptq_probe.py --json "$OUT/gptq_probe.json" 2>&1 | grep -v column_kernel | tail -10
}
e2e() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "" "w4a16" 1,16 2048 8
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "-lmhead" "w4a16" 1 128 8 --quantize-lm-head
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "" "fp8-block" 1,16 2048 8
}

e2ew4() {  # call 3's w4a16 run again with room: the 8B quantization, compile and 2048-token prefill took > 145 s
  E2E_TIMEOUT=${E2E_TIMEOUT:-280} bench8b "" "w4a16" 1,16 2048 12
}

profile() {
  for b in 1 16; do
    step "one 8B w4a16 decode step's kernels at batch $b (decode attention, Inductor PDL)"
    timeout -k 15 "${PR_TIMEOUT:-120}" python3 dev/decode_profile.py --scheme w4a16 --batch $b \
      --json "$OUT/decode_profile_b$b.json" > "/tmp/dprof$b.txt" 2>&1
    echo "exit $?"; grep -vE "Warning|warn" "/tmp/dprof$b.txt" | tail -24
  done
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(cholesky tests)
for s in "${stages[@]}"; do "$s"; done
step "done"
