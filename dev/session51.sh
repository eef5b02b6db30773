#!/usr/bin/env bash
# The device calls prepared in sessions 50-51 (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]; on a fresh development
# machine `bash dev/prebuild_sm90.sh` and `bash dev/prebuild_ext.sh` first). Back to back: a machine idle for 30 s is
# given back. Sessions 49-51 got only H100s. Session 51 ran `ropetests normtests`, `normab` and `gatedab` on an H100
# (BENCHMARKS.md "H100, 2026-12-05 session 51"): the norm_planes pass and the gated planes epilogue won at batches
# 1 / 4 / 8 (2.49x -> 2.65x at batch 1) and are on by default; the rope staging's tests and sanitizer passed.
# Session 52 got one H100 call (`h200ab`: wo_gemm's kept split sums won at batch 16 and are the default now; fused
# lost 15%). Session 53 (H100s only) ran `b16check` (2.17x under qtool bench: no regression), `splittests` (13
# passed), `ropebatch` (the kernel mode from batch 1 lost 0.3-0.6% at batches 1 / 4: the threshold stays 16) and
# one round of `downab` (down on the Hopper GEMM +0.6% at batch 16: level, the route stays). Session 54 (nine
# refused starts, then one H100) ran `comboab` twice (Inductor's combo kernels: batch 1 407.3 -> 424.8 tokens/s,
# batch 16 level; on by default since) and qtool bench at batch 1 with them (2.70x). Left, in priority order (each
# call within the 10-minute limit):
#   call 1: bash dev/session51.sh first55                    (~7 min: the combo kernels' GPU tests; on an H200 issue
#           19's 8B goals at batches 1 / 16 with every lever of sessions 50-54 on; on an H100 batch 16 under qtool
#           bench with the combo kernels)
#   call 2: bash dev/session51.sh smallsweep                 (~4 min, H200 only for the merge: the small shapes swept
#           behind the norm, W4 4096 x 4096 at 4096 tokens (the 0.88x cell) among them; copy $OUT/tuning.py back
#           into kernels/tuning.py at once, so that call 3 runs on the merged routes)
#   call 3: bash dev/session51.sh wotable                    (~6 min: issue 19's whole table, the first since session
#           48, on the merged routes)
#   call 4: bash dev/session51.sh normab gatedab             (~9 min, H200: session 51's two levers, each against
#           itself off); then profilerope (~5 min, any card: the step's kernels at batches 1 / 16)
# The prebuilt extension in .gpu/ext is session 52's (stamp 90877339d7410f9479b2: session 50's reordered rope staging
# and wo_gemm's kept (the default since session 52) / fused split-K, session 51's norm_planes, gated planes epilogue
# and reload_switches); rebuild it (`bash dev/prebuild_ext.sh`) after any kernels/csrc change. In priority order: 30
# device minutes reach about four or five of these calls.
cd "$(dirname "$0")/.."
LOG=session51.log
source dev/gpu_setup.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "device: $GPU"
source dev/session50.sh  # its functions (profilerope, smallsweep, widesweep, bench8b's callers); e2e redefined below

e2e() {  # the 8B W4A16 at batches 1 / 16 / 32 (E2E_BATCHES), bf16 head, on the H200 only (session 50 measured the H100)
  local b=${E2E_BATCHES:-1,16,32}
  case "$GPU" in
    *H200*) E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "-b${b//,/-}" w4a16 "$b" 128 18 ;;
    *) echo "e2e skipped: session 50 measured the H100 ($GPU)" ;;
  esac
}
h200first() {  # issue 19's 8B goals at batches 1 / 16 where the card is an H200, else the combo kernels' A/B
  case "$GPU" in
    *H200*) E2E_BATCHES=1,16 E2E_TIMEOUT=${E2E_TIMEOUT:-280} e2e ;;
    *) AB_TIMEOUT=${AB_TIMEOUT:-280} comboab ;;
  esac
}
stepab() {  # stepab NAME BATCHES [--variant ...]: dev/step_ab.py, JSON to $OUT/NAME.json
  local name=$1 batches=$2; shift 2
  step "8B W4A16 decode steps, variants in one process: $name"
  timeout -k 10 "${AB_TIMEOUT:-500}" python3 dev/step_ab.py --scheme w4a16 --batches "$batches" --rounds 2 \
    --json "$OUT/$name.json" "$@" > "/tmp/$name.txt" 2>&1
  echo "exit $?"; grep -E "^round|bf16:" "/tmp/$name.txt"; python3 dev/step_ab.py --show "$OUT/$name.json" | tail -12
}
ropebatch() {  # where the rotary-and-write kernel mode starts to pay
  stepab ropebatch "${ROPE_BATCHES:-1,4,16,32}" --variant from16 \
    --variant from1 'qtool_kernels.attention.ROPE_MIN_BATCH=1' --variant off 'quantize.rotary.ENABLED=False'
}
splittests() {  # tests/test_split_locks_gpu.py whole: each knob in a child process, the default now kept sums
  step "split-K tests under every knob (tests/test_split_locks_gpu.py)"
  timeout -k 10 "${SPLIT_TIMEOUT:-300}" python3 -m pytest -q tests/test_split_locks_gpu.py > /tmp/splitall.txt 2>&1
  echo "exit $?"; tail -5 /tmp/splitall.txt
}
b16check() {  # batch 16 as session 50 measured it (qtool bench, prefill 128): default, then with the gate/up halves
  # (QTOOL_GATED_EPILOGUE=0: silu_mul's plain form); session 52's step_ab had batch 16 at 2.05-2.07x (prefill 16)
  E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-b16" w4a16 16 128 10
  QTOOL_GATED_EPILOGUE=0 E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-b16-halves" w4a16 16 128 10
}
h200ab() {  # the 8B step at batches 1 and 16 against bf16 (issue 19's goals, session 51's levers on), wo_gemm's
  # split-K as shipped (kept sums since session 52) against the per-call fill (atomic), alternated in one process.
  # Session 52 ran it with `fused` too (15% slower at batch 16, dropped) and the then-default atomic as main
  AB_TIMEOUT=${AB_TIMEOUT:-540} stepab h200ab 1,16 --variant main \
    --variant atomic 'os.environ["QTOOL_WO_SPLIT"]="atomic"'
}
normtests() {  # session 51's norm_planes (csrc/norm_planes.cu) and its graph pass (kernels/norm_planes.py): GPU tests,
  # compute-sanitizer, and the CPU tests of the pass on the device's torch
  step "norm_planes: GPU tests (tests/test_norm_planes_gpu.py tests/test_norm_planes.py)"
  timeout -k 10 "${NORMTEST_TIMEOUT:-240}" python3 -m pytest -q tests/test_norm_planes_gpu.py \
    tests/test_norm_planes.py tests/test_gated_epilogue.py tests/test_mlp.py -p no:logging > /tmp/normtests.txt 2>&1
  echo "exit $?"; grep -vE "^DEBUG" /tmp/normtests.txt | tail -15
  sanitize norm dev/san_norm_planes.py
}
normab() {  # the 8B step at 1-8 tokens with and without the norm_planes pass (on by default since session 51: the
  # residual add, RMSNorm and x_planes in one kernel; q/k/v on the planes at one token), alternated in one process
  AB_TIMEOUT=${AB_TIMEOUT:-270} stepab normab 1,4,8 --variant main --variant no-norm-planes \
    'qtool_kernels.int8_planes.NORM_PLANES=False'
}
gatedab() {  # the same A/B in a process whose gated MLPs are halves (QTOOL_GATED_EPILOGUE=0; interleaved, the default
  # since session 51, the planes GEMV of gate/up writes silu(gate) * up itself): interleaving happens when the MLPs
  # are fused, so a process of its own; compare its rows with normab's (each has its bf16 beside it)
  (export QTOOL_GATED_EPILOGUE=0 AB_TIMEOUT=${AB_TIMEOUT:-270}; stepab gatedab 1,4,8 --variant halves \
    --variant halves-no-norm-planes 'qtool_kernels.int8_planes.NORM_PLANES=False')
}
downab() {  # down (14336 x 4096) at 9-16 tokens: wo_gemm (main) against the Hopper GEMM the norm sweep picked
  AB_TIMEOUT=${AB_TIMEOUT:-300} stepab downab 1,16 --variant main --variant down-gemm \
    'qtool_kernels.tuning.MIXED[(4, 14336, 4096)][9]="k128 t16 v0 s0"' \
    'qtool_kernels.tuning.MIXED[(4, 14336, 4096)][16]="k128 t16 v0 s0"'
}
comboab() {  # Inductor's combo kernels (independent small kernels launched as one) in the step: session 54 ran it
  # (H100) with them off in main (batch 1 407.3 -> 424.8 tokens/s, batch 16 level); on by default since, so `no-combo`
  AB_TIMEOUT=${AB_TIMEOUT:-280} stepab comboab 1,16 --variant main --variant no-combo \
    'quantize.bench.INDUCTOR_COMBO=False'
}
combotests() {  # Inductor's combo kernels (on by default since session 54) against them off: the decode step's logits
  # on a fused 4-layer model, three schemes (tests/test_fusion.py; its PDL half passed in earlier sessions)
  step "decode step with the combo kernels against without (tests/test_fusion.py -k 'inductor_options and combo')"
  timeout -k 10 "${COMBOTEST_TIMEOUT:-240}" python3 -m pytest -q tests/test_fusion.py -k "inductor_options and combo" \
    -p no:logging > /tmp/combotests.txt 2>&1
  echo "exit $?"; tail -6 /tmp/combotests.txt
}
first55() {  # the next session's first call: the combo tests, then issue 19's 8B goals on an H200 (on an H100 batch
  # 16 under qtool bench with the combo kernels: session 54 measured batch 1 there)
  combotests
  case "$GPU" in
    *H200*) h200first ;;
    *) E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-b16-combo" w4a16 16 128 10 ;;
  esac
}
if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced (a later session's script may source it)
  for stage in "$@"; do "$stage"; done
  step "done"
fi
