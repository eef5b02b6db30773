#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 29 (nvidia-h200, carry [".gpu/w8a8"]; run
# `bash dev/compile_check.sh` here first after any kernel edit):
#   call 1: bash dev/session30.sh swtests swab swe2e   (~8 min)
#           w8_gemv's two switches written in session 29 without a GPU run, after its finding (fp8-block at 9-16
#           tokens: the same loads spread over more warps per SM, +1-23%): 256 = per-channel weights at 9-16 tokens
#           with two 64-k tiles in flight per warp in 48 registers (five 8-warp blocks per SM; the PDL twin spills
#           ~100 bytes there: if 256 wins, give the twin its own budget before making it the default); 512 = the
#           two-stripe kernels at 1-8 tokens (n >= 16384, and the decode's gated gate/up GEMV, 54% of an 8B layer's
#           weight bytes) with two tiles in flight in 80 registers, three blocks per SM instead of two.
#   call 2: bash dev/session30.sh e2eint8 int8sweep   (~6 min; e2eint8 again in a later call, after the merge)
#           int8's 28672-row layers still route 1-16 tokens to act_quant + the skinny GEMM (session 12-13 sweeps, when
#           w8_gemv's int8 ran 1.24x at one token on 4096 x 28672; its raw figure in session 28 was 1.62x, 1.74x with
#           the PDL launch the decode uses). On that route the 8B decode's gate/up layer at batch 1 also runs
#           SiLU-and-multiply separately (the gated epilogue needs the "gemv" route): a likely part of int8's 1.43x
#           at batch 1 against fp8's 1.51x. Re-sweep, merge (`python3 dev/w8a8_sweep.py --emit int8sweep.json
#           --merge` here), then the decode again with the new routes.
#   call 3: bash dev/session30.sh ringtests ringab ringe2e   (~6 min)
#           the ring GEMV's lean launch (W4 / W3 / W2 / W8 wo layout, one group per chunk, N > 4096 and K <= N: the 8B
#           q/k/v and gate/up) with 2 ring slots in 48 registers and 5 blocks per SM (QTOOL_WO_RING=2, written in
#           session 29) against 4 slots in 64 registers and 4 blocks: the same idea as 256 / 512 above
#   with time left: bash dev/session30.sh sanitize   (compute-sanitizer memcheck / racecheck over
#           dev/sanitize_w8a8.py, which now covers w8_gemv's folded block scales at 1-16 tokens and its two-stripe
#           kernels, with QTOOL_W8_GEMV=768 so the switches run too)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# swtests  the w8_gemv / gated-epilogue GPU tests with both switches on (QTOOL_W8_GEMV=768)
# swab     dev/gemv_probe.py --switches 0,256,512 at 1, 8, 9 and 16 tokens (raw w8_gemv, eight shapes, three kinds)
# swe2e    the 8B decode at batch 1 for fp8, fp8-block and int8 with QTOOL_W8_GEMV=0 and 512, one process each,
#          without the bf16 model (tokens/s compared directly; bf16 was 199-200 tok/s in sessions 28-29)
cd "$(dirname "$0")/.."
LOG=session30.log
source dev/gpu_setup.sh

swtests() {
  step "w8_gemv and gated-epilogue GPU tests, QTOOL_W8_GEMV=768"
  QTOOL_W8_GEMV=768 timeout -k 10 "${ST_TIMEOUT:-150}" python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py \
    tests/test_mlp.py -k "w8_gemv or swiglu" --tb=short -rf -p no:logging > "$OUT/swtests.txt" 2>&1
  summarize "$OUT/swtests.txt"
}
swab() {
  step "raw w8_gemv: QTOOL_W8_GEMV=0 / 256 / 512"
  timeout -k 10 "${SA_TIMEOUT:-200}" python3 dev/gemv_probe.py --switches 0,256,512 --tokens 1,8,9,16 \
    --json "$OUT/swab.json" 2>&1 | grep -E "^(fp8|int8|fp8-block) |kind" | tail -100
}
swe2e() {
  for sw in 0 512; do
    step "8B decode at batch 1, QTOOL_W8_GEMV=$sw"
    QTOOL_W8_GEMV=$sw timeout -k 15 "${SE_TIMEOUT:-150}" python3 dev/prefetch_sweep.py --schemes fp8,fp8-block,w8a8-int8 \
      --mb 0 --batch-sizes 1 --skip-base --json "$OUT/swe2e-$sw.jsonl" 2>&1 | grep -E '^\{' | tail -4
  done
}

int8sweep() {
  step "int8 routes at 1-16 tokens on the 28672-row shapes"
  timeout -k 10 "${IS_TIMEOUT:-200}" python3 dev/w8a8_sweep.py --kinds int8 --shapes 4096x28672,8192x28672,28672x8192 \
    --tokens 1,2,4,8,16 --budget 180 --json "$OUT/int8sweep.json" 2>&1 | grep -v "^$" | tail -16
}
e2eint8() { E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "1" w8a8-int8 1 128 10; }

ringtests() {
  step "wo_gemv GPU tests, QTOOL_WO_RING=2"
  QTOOL_WO_RING=2 timeout -k 10 "${RT_TIMEOUT:-200}" python3 -m pytest -q -m gpu tests/test_kernels_gpu.py \
    tests/test_lowbit_gpu.py -k "gemv" --tb=short -rf -p no:logging > "$OUT/ringtests.txt" 2>&1
  summarize "$OUT/ringtests.txt"
}
ringab() {  # the dispatcher's route (the lean ring GEMV at 1-2 tokens on these shapes) with QTOOL_WO_RING=0 / 2
  for sw in 0 2; do
    step "ring GEMV, QTOOL_WO_RING=$sw"
    QTOOL_WO_RING=$sw timeout -k 10 "${RA_TIMEOUT:-120}" python3 dev/gemv_xs_ab.py --tokens 1,2 \
      --shapes 4096x6144,4096x14336,4096x28672,8192x8192,8192x28672 --formats 4:128,3:128,2:64 \
      --json "$OUT/ringab-$sw.json" 2>&1 | tail -32
  done
}
ringe2e() {
  for sw in 0 2; do
    step "8B W4A16 decode at batch 1, QTOOL_WO_RING=$sw"
    QTOOL_WO_RING=$sw timeout -k 15 "${RE_TIMEOUT:-150}" python3 dev/prefetch_sweep.py --schemes w4a16 --mb 0 \
      --batch-sizes 1 --skip-base --json "$OUT/ringe2e-$sw.jsonl" 2>&1 | grep -E '^\{' | tail -3
  done
}

dispgap() {
  step "weight-only dispatcher vs its own Hopper kernel at 128-256 tokens, alternating"
  timeout -k 10 "${DG_TIMEOUT:-200}" python3 dev/dispatch_gap.py --json "$OUT/dispgap.json" 2>&1 | grep "^W" | tail -16
}

profile() {  # one steady decode step's kernels at batch 1, int8 and bf16 (which non-GEMM kernels are left)
  for s in ${PROF_SCHEMES:-w8a8-int8 bf16}; do
    step "decode profile, $s, batch 1"
    timeout -k 15 "${PF_TIMEOUT:-150}" python3 dev/decode_profile.py --scheme "$s" --top 40 \
      --json "$OUT/profile-$s.json" 2>&1 | grep -E "^\{| us " | tail -42
  done
}
e2eint8b16() { E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "16" w8a8-int8 16 128 6; }

deftests() {  # after the switches' removal: w8_gemv, gated epilogue and ring GEMV tests as built by default
  step "w8_gemv, gated-epilogue and wo_gemv GEMV GPU tests (default build)"
  timeout -k 10 "${DT_TIMEOUT:-150}" python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_mlp.py \
    tests/test_kernels_gpu.py tests/test_lowbit_gpu.py -k "w8_gemv or swiglu or gemv" --tb=short -rf -p no:logging \
    > "$OUT/deftests.txt" 2>&1
  summarize "$OUT/deftests.txt"
}
attntests() {
  step "decode attention kernel: GPU tests"
  timeout -k 10 "${AT_TIMEOUT:-200}" python3 -m pytest -q -m gpu tests/test_decode_attention.py tests/test_attention.py \
    --tb=short -rf -p no:logging > "$OUT/attntests.txt" 2>&1
  summarize "$OUT/attntests.txt"; grep -E "^(FAILED|E  )" "$OUT/attntests.txt" | head -20
}
attnprobe() {
  step "decode attention: qtool's kernel vs SDPA (packed, repeat_kv), 8B heads"
  timeout -k 10 "${AP_TIMEOUT:-150}" python3 dev/attn_probe.py --json "$OUT/attnprobe.json" 2>&1 | grep "^B=" | tail -12
}
attne2e() {
  for backend in sdpa kernel; do
    step "8B decode, QTOOL_DECODE_ATTENTION=$backend"
    QTOOL_DECODE_ATTENTION=$backend timeout -k 15 "${AE_TIMEOUT:-200}" python3 dev/prefetch_sweep.py \
      --schemes ${AE_SCHEMES:-w8a8-int8,fp8} --mb 0 --batch-sizes 1,16 --skip-base --json "$OUT/attne2e-$backend.jsonl" \
      2>&1 | grep -E '^\{' | tail -4
  done
}

sanitize() {
  for tool in ${SAN_TOOLS:-memcheck racecheck}; do
    step "compute-sanitizer $tool (QTOOL_W8_GEMV=${SAN_SWITCHES:-768})"
    QTOOL_W8_GEMV=${SAN_SWITCHES:-768} timeout -k 10 "${SAN_TIMEOUT:-200}" compute-sanitizer --tool "$tool" \
      --error-exitcode 3 python3 dev/sanitize_w8a8.py 2>&1 | tail -4
  done
}

for stage in "$@"; do "$stage"; done
step "done"
