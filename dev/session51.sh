#!/usr/bin/env bash
# The next session's device calls (prepared in sessions 50-51; nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]; on a
# fresh development machine `bash dev/prebuild_sm90.sh` and `bash dev/prebuild_ext.sh` first). Back to back: a
# machine idle for 30 s is given back. Sessions 49-50 got only H100s; session 51 got none (loans paused). Session 50
# turned the rotary-and-write attention on in `qtool bench`, on the kernel from batch 16 (kernels/attention.py
# ROPE_MIN_BATCH; batch 16 +3.7%, batch 1 -1% on the kernel, so PyTorch ops there), and added dev/step_ab.py:
# variants of one quantized model timed in one process.
#   call 1: bash dev/session51.sh ropetests ropeprobe e2e   (~4 min, +4 on an H200: the rotary-and-write kernel's
#           staging reordered in session 50 (copies issued before the slot is read: the batch-1 loss's suspect), its
#           GPU tests, compute-sanitizer and probe again; e2e only on an H200, where issue 19's 8B goals are judged)
#   call 2: bash dev/session51.sh normtests normab          (~7 min, session 51's two levers for batches 1-8: (a) the
#           decoder layer's residual add, RMSNorm and the GEMV's x_planes as one kernel (csrc/norm_planes.cu) through
#           an Inductor graph pass (kernels/norm_planes.py, QTOOL_NORM_PLANES / int8_planes.NORM_PLANES): 64 launches
#           fewer per 8B step and q/k/v on the planes GEMV at one token; (b) gate/up rows interleaved by 8 so the
#           planes GEMV writes silu(gate) * up (QTOOL_GATED_EPILOGUE, qtool_kernels/mlp.py): 32 silu_mul launches
#           fewer. The tests of both, sanitizer, then main / norm-planes at batches 1, 4, 8 alternated
#           (dev/step_ab.py). Default on whatever wins (int8_planes.NORM_PLANES, mlp.GATED_EPILOGUE))
#   call 3: bash dev/session51.sh gatedab wosplitab         (~9 min: (b) with and without (a) in a process of its
#           own (interleaving happens when the MLPs are fused): compare with normab's rows, each beside its bf16.
#           Then batch 16: wo_gemm, which runs q/k/v, o and down there, launches 3 kernels per call (at::zeros of its
#           split-K sums, the GEMM, finish_split_k): 97 ATen fills and 96 finish kernels per step in session 50's
#           profile. The split tests, then the step with kept sums (QTOOL_WO_SPLIT=kept: no fill), fused (kept sums,
#           the last split finishing, one launch), fused with PDL (QTOOL_WO_GEMM_PDL=1; the ordered splits and PDL
#           lost at the layer in session 46, never timed in the model), alternated in one process (the switches
#           reloaded per variant: build.reload_switches, session 51))
#   call 4: bash dev/session51.sh ropebatch                  (~7 min: off / kernel from 16 / kernel from 1 at batches
#           1, 4, 16, 32, alternated twice in one process (dev/step_ab.py); also the first run of the foreach row
#           count (rotary._advance). If the kernel mode wins at batch 1 too, set ROPE_MIN_BATCH (kernels/attention.py)
#           to the smallest batch where it won)
#   call 5: bash dev/session51.sh downab profilerope         (~9 min: at batches 1 and 16, down at 9-16 tokens on
#           wo_gemm against the GEMM the norm sweep picks, and Inductor's combo kernels; then the step's kernels
#           with the mode on (decode_profile.py now takes bench.loop_cache))
#   call 6: bash dev/session51.sh smallsweep                 (~4 min: the small shapes swept behind the norm, merged on
#           the H200 only (copy $OUT/tuning.py back into kernels/tuning.py); widesweep after it if time is left)
# The prebuilt extension in .gpu/ext is session 51's (stamp 81865394d23923771a4e: session 50's reordered rope staging
# and wo_gemm's kept / fused split-K, session 51's norm_planes, gated planes epilogue and reload_switches); rebuild
# it (`bash dev/prebuild_ext.sh`) after any kernels/csrc change. In priority order: 30 device minutes reach about
# four or five of these calls.
cd "$(dirname "$0")/.."
LOG=session51.log
source dev/gpu_setup.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "device: $GPU"
source dev/session50.sh  # its functions (profilerope, smallsweep, widesweep, bench8b's callers); e2e redefined below

e2e() {  # the 8B W4A16 at batches 1 / 16 / 32, bf16 head, on the H200 only (the H100's were measured in session 50)
  case "$GPU" in
    *H200*) E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "-b1-16-32" w4a16 1,16,32 128 18 ;;
    *) echo "e2e skipped: session 50 measured the H100 ($GPU)" ;;
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
  stepab ropebatch 1,4,16,32 --variant from16 --variant from1 'qtool_kernels.attention.ROPE_MIN_BATCH=1' \
    --variant off 'quantize.rotary.ENABLED=False'
}
wosplitab() {  # wo_gemm's split-K without the per-call at::zeros (kept sums, session 50) or in one launch (fused),
  # with and without PDL, alternated in the 8B step in one process (the extension reads QTOOL_WO_SPLIT and
  # QTOOL_WO_GEMM_PDL again before each variant's compile: build.reload_switches, session 51); first the split tests
  # of those settings and the in-process reload's test
  step "split-K tests under each knob (tests/test_split_locks_gpu.py)"
  timeout -k 10 200 python3 -m pytest -q tests/test_split_locks_gpu.py -k "wo-kept or wo-fused or reload" \
    > /tmp/splittests.txt 2>&1
  echo "exit $?"; tail -3 /tmp/splittests.txt
  AB_TIMEOUT=${AB_TIMEOUT:-300} stepab wosplitab 16 --variant default \
    --variant kept 'os.environ["QTOOL_WO_SPLIT"]="kept"' \
    --variant fused 'os.environ["QTOOL_WO_SPLIT"]="fused"' \
    --variant fused-pdl 'os.environ["QTOOL_WO_SPLIT"]="fused"' 'os.environ["QTOOL_WO_GEMM_PDL"]="1"'
}
normtests() {  # session 51's norm_planes (csrc/norm_planes.cu) and its graph pass (kernels/norm_planes.py): GPU tests,
  # compute-sanitizer, and the CPU tests of the pass on the device's torch
  step "norm_planes: GPU tests (tests/test_norm_planes_gpu.py tests/test_norm_planes.py)"
  timeout -k 10 "${NORMTEST_TIMEOUT:-240}" python3 -m pytest -q tests/test_norm_planes_gpu.py \
    tests/test_norm_planes.py tests/test_gated_epilogue.py tests/test_mlp.py -p no:logging > /tmp/normtests.txt 2>&1
  echo "exit $?"; grep -vE "^DEBUG" /tmp/normtests.txt | tail -15
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool: norm_planes (dev/san_norm_planes.py)"
    timeout -k 10 "${SAN_TIMEOUT:-150}" compute-sanitizer --tool "$tool" --print-limit 20 \
      python3 dev/san_norm_planes.py > "/tmp/san_norm_$tool.txt" 2>&1
    echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|launches done" "/tmp/san_norm_$tool.txt" | tail -4
  done
}
normab() {  # the 8B step at 1-8 tokens with the residual add, RMSNorm and x_planes in one kernel (NORM_PLANES: q/k/v
  # then takes the planes too), against main, alternated in one process
  AB_TIMEOUT=${AB_TIMEOUT:-330} stepab normab 1,4,8 --variant main --variant norm-planes \
    'qtool_kernels.int8_planes.NORM_PLANES=True'
}
gatedab() {  # the same A/B in a process whose gated MLPs are interleaved (QTOOL_GATED_EPILOGUE=1, session 51: the
  # planes GEMV of gate/up writes silu(gate) * up from its epilogue, no silu_mul launch at 1-8 tokens); fused at model
  # build, so a process of its own: compare its rows with normab's (each has its bf16 beside it)
  (export QTOOL_GATED_EPILOGUE=1 AB_TIMEOUT=${AB_TIMEOUT:-270}; stepab gatedab 1,4,8 --variant gated \
    --variant gated-norm-planes \
    'qtool_kernels.int8_planes.NORM_PLANES=True')
}
downab() {  # down (14336 x 4096) at 9-16 tokens: wo_gemm (main) against the Hopper GEMM the norm sweep picked
  # and Inductor's combo kernels (independent small kernels launched as one: QTOOL_INDUCTOR_COMBO, new)
  AB_TIMEOUT=${AB_TIMEOUT:-300} stepab downab 1,16 --variant main --variant down-gemm \
    'qtool_kernels.tuning.MIXED[(4, 14336, 4096)][9]="k128 t16 v0 s0"' \
    'qtool_kernels.tuning.MIXED[(4, 14336, 4096)][16]="k128 t16 v0 s0"' \
    --variant combo 'quantize.bench.INDUCTOR_COMBO=True'
}
for stage in "$@"; do "$stage"; done
step "done"
