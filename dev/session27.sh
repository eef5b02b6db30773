#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 26 (nvidia-h200, carry [".gpu/w8a8"]; the Hopper
# libraries there match the code: `python3 -c 'import quantize; from qtool_kernels import sm90; print([l.path().name
# for l in sm90.ALL])'`, `bash dev/prebuild_sm90.sh` builds a missing one, ~16 min for all four):
#   call 1: bash dev/session27.sh pdltest xsab   (~5 min: the Inductor-PDL decode test with session 26's bounds; the
#           ring GEMV with x read through L1 against staged, QTOOL_GEMV_XS_MAX=0, on the 8B decode shapes)
#   call 2: bash dev/session27.sh gemvtests xpab ncuxp   (x staged in fragment order, QTOOL_GEMV_XP=1 vs 0)
#   call 3: bash dev/session27.sh gemvtests xpab e2ew4    (the final ring GEMV: its tests, the 8B W4A16 decode)
#   call 4: bash dev/session27.sh gemvrule                (every GEMV column at 2-4 tokens, for gemv_kind's rule)
#   call 7: bash dev/session27.sh bulk                    (wo_gemv variant 4, "bulk": tests, then against the ring)
#   g2lean: two-group chunks (W4 g32, W8 g16, W2 g64) on the lean / wide launches, against variant 0
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# pdltest   tests/test_fusion.py -k inductor_pdl (failed once for fp8 in session 26 at the old 2% bound)
# xsab      dev/gemv_xs_ab.py, one process per QTOOL_GEMV_XS_MAX setting (it is read once): W4 g128 at 1, 2, 4 tokens
#           on 4096 x 6144, 4096 x 4096, 4096 x 28672, 14336 x 4096
cd "$(dirname "$0")/.."
LOG=session27.log
source dev/gpu_setup.sh

xsab() {
  for xs in default 0; do
    step "ring GEMV, QTOOL_GEMV_XS_MAX=$xs (default: x staged; 0: x through L1)"
    ( [ "$xs" = default ] || export QTOOL_GEMV_XS_MAX=$xs
      timeout -k 15 "${XS_TIMEOUT:-120}" python3 dev/gemv_xs_ab.py --json "$OUT/xs_$xs.json" > "/tmp/xsab_$xs.txt" 2>&1
      echo "exit $?" )
    grep -vE "Warning|warn" "/tmp/xsab_$xs.txt" | tail -12
  done
}

gemvtests() {  # the GEMV and low-bit GPU tests (every width, group, token count, ragged K)
  step "GEMV GPU tests"
  timeout -k 15 "${GT_TIMEOUT:-220}" python3 -m pytest -q -m gpu tests/test_kernels_gpu.py tests/test_lowbit_gpu.py \
    tests/test_wo_stream_gpu.py --tb=short -rf -p no:logging > "$OUT/gemvtests.txt" 2>&1
  summarize "$OUT/gemvtests.txt"
}
xpab() {  # the ring GEMV's routes at 1-2 tokens, W4 / W3 / W2 (call 2 ran it once per QTOOL_GEMV_XP, since removed)
  step "ring GEMV at 1-2 tokens"
  timeout -k 15 "${XP_TIMEOUT:-200}" python3 dev/gemv_xs_ab.py --tokens "${XP_TOKENS:-1,2}" \
    --formats "${XP_FORMATS:-4:128,3:128,2:64}" \
    --shapes "${XP_SHAPES:-4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192,4096x28672}" \
    --json "$OUT/xp.json" > /tmp/xp.txt 2>&1
  echo "exit $?"; grep -vE "Warning|warn" /tmp/xp.txt | tail -50
}
ncuxp() {  # the decode GEMVs as the 8B layers launch them, session 27's form
  ncu_source 4096x28672 "w4 wo_gemv v1 M=1" gx1 'wo_gemv_kernel'
  ncu_source 14336x4096 "w4 wo_gemv v2 M=1" gx2 'wo_gemv_kernel'
}

e2ew4() {  # the 8B-shaped Llama, W4A16, decode steps at batch 1 and 16 after a 128-token prefill
  E2E_TIMEOUT=${E2E_TIMEOUT:-240} bench8b "" "w4a16" 1,16 128 10
}

gemvrule() {  # every GEMV column at 2-4 tokens (weight_only.gemv_kind's rule after the ring GEMV changed)
  step "GEMV columns at 2-4 tokens"
  timeout -k 15 "${GR_TIMEOUT:-300}" python3 benchmarks/bench_kernels.py --formats "${GR_FORMATS:-w4a16-g128,w3a16-g128}" \
    --shapes "${GR_SHAPES:-4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192,4096x28672}" \
    --tokens "${GR_TOKENS:-2,3,4}" --json "$OUT/gemvrule.json" > /tmp/gemvrule.txt 2>&1
  echo "exit $?"; tail -5 /tmp/gemvrule.txt
  python3 - "$OUT/gemvrule.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    g = {k: v for k, v in r["graph_kernel_ms"].items() if v and k.startswith("wo_gemv")}
    best = min(g, key=g.get)
    print(f"{r['K']}x{r['N']} {r['format']} M={r['M']}: bf16/dispatcher {r['graph_speedup']:.2f}x; "
          + " ".join(f"{k[8:] or 'ring'} {r['graph_bf16_ms'] / v:.2f}" for k, v in g.items()) + f"; best {best}")
PY
}

bulk() {  # wo_gemv variant 4 ("bulk"), measured slower in session 28 and removed with dev/bulk_ab.py
  step "bulk: removed in session 28 (BENCHMARKS.md \"session 28\"), nothing to run"
}
g2lean() {  # two groups per chunk in the lean / wide launches (branch session27-bulk): raw columns v0 / lean / wide
  step "two-group chunks: W2 g64 and W4 g32 at 1-2 tokens, every ring launch"
  timeout -k 10 "${GL_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py --formats w2a16-g64 --tokens 1,2 \
    --shapes "${GL_SHAPES:-4096x4096,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192}" \
    --json "$OUT/g2lean.json" > /tmp/g2lean.txt 2>&1
  echo "exit $?"; tail -3 /tmp/g2lean.txt
  python3 - "$OUT/g2lean.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    g = {k: v for k, v in r["graph_kernel_ms"].items() if v and k.startswith("wo_gemv")}
    print(f"{r['K']}x{r['N']} {r['format']} M={r['M']}: dispatcher {r['graph_speedup']:.2f}x; "
          + " ".join(f"{k[8:] or 'v0'} {r['graph_bf16_ms'] / v:.2f}" for k, v in g.items()))
PY
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(pdltest xsab)
for s in "${stages[@]}"; do "$s"; done
step "done"
