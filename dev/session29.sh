#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 28 (nvidia-h200, carry [".gpu/w8a8"]; run
# `bash dev/compile_check.sh` here first after any kernel edit):
#   call 1: bash dev/session29.sh gatedtests gatedab e2efb16   (~9 min)
#           fp8-block's SiLU-and-multiply in w8_gemv's epilogue (kBlockFoldGated, scaled_mm.SWIGLU_BLOCKS, written
#           without a GPU), its A/B in the 8B decode; the fp8-block decode at batch 16 and the 1 x 2048 prefill
#           after session 28's fold and routes
#   call 2: bash dev/session29.sh w8table w8ring   (issue 18's whole table with the new fp8-block routes; W8A16 per
#           channel at one token: w8_gemv on row-major codes against the ring GEMV on the wo layout, same run)
#   call 4: bash dev/session29.sh foldtests foldab foldsweep   (w8_gemv switch 256, then: fp8-block at 9-16 tokens in
#           64 registers, two tiles in flight, four blocks per SM; the default since)
#   call 5: bash dev/session29.sh foldtests w8mid e2efb16
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# gatedtests  the w8_gemv and gated-epilogue GPU tests (block scales per stripe, the 2^-64 detour)
# gatedab     dev/prefetch_sweep.py --schemes fp8-block --swiglu 8,0 (one process: the epilogue on / off)
# e2efb1      qtool bench llama-8b --scheme fp8-block at batch 1 (prefill 128)
# wotable     issue 19's weight-only table (dev/gpu_setup.sh)
# e2efb16     qtool bench llama-8b --scheme fp8-block at batch 16 and the 1 x 2048 prefill (issue 18's 1.5x goals)
# w8table     benchmarks/bench_w8a8.py at every issue-18 M, with the anchors
# w8ring      benchmarks/bench_kernels.py --formats w8a16-channel --tokens 1,2,4 (its wo_gemv columns are the ring
#             GEMV on the wo layout; the dispatcher column is w8_gemv on the row-major codes)
cd "$(dirname "$0")/.."
LOG=session29.log
source dev/gpu_setup.sh

gatedtests() {
  step "w8_gemv and gated-epilogue GPU tests"
  timeout -k 10 "${GT_TIMEOUT:-200}" python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_mlp.py \
    -k "w8_gemv or swiglu or w8a8_layers or forward_gated" --tb=short -rf -p no:logging > "$OUT/gatedtests.txt" 2>&1
  summarize "$OUT/gatedtests.txt"
}
gatedab() {
  step "fp8-block decode: SiLU-and-multiply in w8_gemv's epilogue (8) against the separate kernel (0)"
  timeout -k 15 "${GA_TIMEOUT:-300}" python3 dev/prefetch_sweep.py --schemes fp8-block --mb 0 --swiglu 8,0 \
    --batch-sizes 1 --json "$OUT/gatedab.jsonl" 2>&1 | grep -vE "Warning|warn" | tail -8
}
e2efb16() { E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "16" fp8-block 16 2048 12; }
e2efb1() { E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "1" fp8-block 1 128 10; }
w8table() {
  step "issue 18's table"
  timeout -k 15 "${WT_TIMEOUT:-420}" python3 benchmarks/bench_w8a8.py \
    --tokens 1,2,4,8,16,32,64,128,256,512,1024,4096,8192 --json "$OUT/w8table.json" > /tmp/w8table.txt 2>&1
  echo "exit $?"; tail -40 /tmp/w8table.txt
}
w8ring() {
  step "W8A16 per channel at 1-4 tokens: every kernel column"
  timeout -k 10 "${WR_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py --formats w8a16-channel --tokens 1,2,4 \
    --shapes 4096x4096,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192 --json "$OUT/w8ring.json" > /tmp/w8ring.txt 2>&1
  echo "exit $?"
  python3 - "$OUT/w8ring.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    g = {k: v for k, v in r["graph_kernel_ms"].items() if v and (k.startswith("wo_gemv") or k == "w8_gemv_rows")}
    print(f"{r['K']}x{r['N']} M={r['M']}: dispatcher {r['graph_speedup']:.2f}x; "
          + " ".join(f"{k} {r['graph_bf16_ms'] / v:.2f}" for k, v in g.items()))
PY
}

foldtests() {  # the w8_gemv GPU tests (call 4 ran them with the then switch 256, now the default)
  step "w8_gemv GPU tests"
  timeout -k 10 "${FT_TIMEOUT:-150}" python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_mlp.py \
    -k "w8_gemv" --tb=short -rf -p no:logging > "$OUT/foldtests.txt" 2>&1
  summarize "$OUT/foldtests.txt"
}
foldab() {  # raw w8_gemv at 9-16 tokens: the folded kernel at 128 registers (0) against 64 (256), one build
  step "w8_gemv at 9-16 tokens: QTOOL_W8_GEMV=0 / 256"
  timeout -k 10 "${FA_TIMEOUT:-200}" python3 dev/gemv_probe.py --switches 0,256 --tokens 9,12,16 \
    --json "$OUT/foldab.json" 2>&1 | grep -E "fp8-block|kind" | tail -30
}
chab() {  # per-channel w8_gemv at 9-16 tokens: four tiles in 64 registers (0) against two in 48 (256), one build
  step "per-channel w8_gemv at 9-16 tokens: QTOOL_W8_GEMV=0 / 256"
  timeout -k 10 "${CA_TIMEOUT:-100}" python3 dev/gemv_probe.py --switches 0,256 --tokens 9,16 \
    --json "$OUT/chab.json" 2>&1 | grep -E "^(fp8|int8) |kind" | tail -40
}
w8mid() {  # issue 18's table at 9 and 16 tokens (the layers as routed, with the anchors)
  step "issue 18's table at 9 and 16 tokens"
  timeout -k 15 "${WM_TIMEOUT:-150}" python3 benchmarks/bench_w8a8.py --tokens 9,16 --json "$OUT/w8mid.json" \
    > /tmp/w8mid.txt 2>&1
  echo "exit $?"; grep -E "^(fp8|w8a8)" /tmp/w8mid.txt | head -20
}
foldsweep() {  # fp8-block routes at 16 tokens with switch 256 on (its gemv column is the 64-register kernel)
  step "fp8-block routes at 16 tokens, QTOOL_W8_GEMV=256"
  QTOOL_W8_GEMV=256 timeout -k 10 "${FS_TIMEOUT:-200}" python3 dev/w8a8_sweep.py --kinds fp8-block --tokens 16 \
    --budget 170 --json "$OUT/foldsweep.json" 2>&1 | grep -v "^$" | tail -14
}

for stage in "$@"; do "$stage"; done
step "done"
