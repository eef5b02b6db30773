#!/usr/bin/env bash
# Session 15's device calls (nvidia-h200, carry [".gpu/w8a8"]; the Hopper libraries did not change since session 14:
# .gpu/w8a8 holds them, else bash dev/prebuild_sm90.sh first):
#   call 1 (run): bash dev/session15.sh tests streamab streamab2 wogemv e2estream   (e2estream cut by the limit)
#   call 2 (run): bash dev/session15.sh tests wosmall gemvwide
#   call 3 (run): bash dev/session15.sh rtests wosmall1     (the GEMV rule of weight_only.gemv_kind, set from call 2)
#   call 4 (run): bash dev/session15.sh wotok               (gemv_variant: the wide ring GEMV where K > N, from call 3)
#   call 5:       bash dev/session15.sh lowtests lowsmall    (2-/3-bit weights of <= 4096 x 4096 on variant 3 to 16 tokens)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 summary
# tests      every GPU test (wo_gemv variant 3 by the new rule: one 16-warp stripe to 6144 rows, two stripes above)
# streamab   variant 3 by launch shape (QTOOL_WO_STREAM=0..3) against the shipped GEMV and bf16, W4 g128 asym
# streamab2  the same for W8 per channel, W3 g128 and W2 g64, the default launch shapes only
# e2estream  the 8B w4a16 decode with every weight-only layer of <= 16 tokens on variant 3 (QTOOL_WO_STREAM_MAX_M,
#            gone since: call 1's layer table settled it) and without
# wogemv     session 14's call-1 table again (W4 / W8 / W3 GEMVs at 1 and 8 tokens, with wo_gemv_stream)
# wosmall    bench_kernels' columns and the dispatcher at 2-8 tokens, every width, after variant 3's rule
#            (weight_only.takes_stream): the cells the rule was extrapolated to (2-3 tokens, W8 / W3 / W2 at 4)
# gemvwide   w8_gemv with 16-warp blocks up to 8192 rows (QTOOL_W8_GEMV=16) against today's 4096 (the fp8 decode's
#            q/k/v, 6144 rows, streamed 2.5 TB/s in session 14's profile); if it wins, raise kWideMaxN
# wotable    bench_kernels' weight-only table (W4 g128, W8, W3, W2 at 1-8192 tokens)
# e2ew4      the 8B w4a16 end to end (decode bs 1 / 16, prefill 2048)
cd "$(dirname "$0")/.."
LOG=session15.log
source dev/gpu_setup.sh

TESTS=(tests/test_w8a8_gpu.py tests/test_mixed_gpu.py tests/test_kernels_gpu.py tests/test_lowbit_gpu.py
       tests/test_wo_stream_gpu.py tests/test_mlp.py tests/test_fusion.py)

rtests() {  # the dispatch and the kernels it picks
  step "GPU tests of the weight-only kernels and their dispatch"
  timeout 200 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py tests/test_lowbit_gpu.py tests/test_wo_stream_gpu.py \
    tests/test_mixed_gpu.py --tb=short -rf > "$OUT/rtests.txt" 2>&1
  summarize "$OUT/rtests.txt"
}

tests() {
  step "GPU tests"
  timeout 260 python3 -m pytest -q -m gpu "${TESTS[@]}" --tb=short -rf > "$OUT/tests.txt" 2>&1
  summarize "$OUT/tests.txt"
}

streamrtests() {  # the dispatch and the kernels it picks
  step "GPU tests of the weight-only kernels and their dispatch"
  timeout 200 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py tests/test_lowbit_gpu.py tests/test_wo_stream_gpu.py \
    tests/test_mixed_gpu.py --tb=short -rf > "$OUT/rtests.txt" 2>&1
  summarize "$OUT/rtests.txt"
}

tests() {  # session 14's last call: the new kernel's tests alone, then streamquick
  step "wo_gemv variant 3 tests"
  timeout 100 python3 -m pytest -q -x -m gpu tests/test_wo_stream_gpu.py --tb=short -rf > "$OUT/stream_tests.txt" 2>&1
  summarize "$OUT/stream_tests.txt"
}
streamquick() {
  step "wo_gemv variant 3, W4 g128 asym, default launch shapes, 1 / 8 / 16 tokens"
  timeout 80 python3 dev/stream_ab.py --shapes 0 --formats w4a16-g128 --tokens 1,8,16 --json "$OUT/stream_quick.json" \
    2>&1 | tail -30
}

streamshapes() {  # session 14's last call: the three launch shapes at 1 and 8 tokens
  step "wo_gemv variant 3 by launch shape (QTOOL_WO_STREAM=1,2,3), W4 g128 asym, 1 / 8 tokens"
  timeout 110 python3 dev/stream_ab.py --shapes 1,2,3 --formats w4a16-g128 --tokens 1,8 \
    --json "$OUT/stream_shapes.json" 2>&1 | tail -20
}

streamab() {
  step "wo_gemv variant 3 by launch shape, W4 g128 asym (QTOOL_WO_STREAM=0,1,2,3)"
  timeout 230 python3 dev/stream_ab.py --shapes 0,1,2,3 --formats w4a16-g128 --tokens 1,4,8,16,32 \
    --json "$OUT/stream_ab.json" 2>&1 | tail -45
}

streamab2() {
  step "wo_gemv variant 3, W8 per channel, W3 g128, W2 g64 (default launch shapes)"
  timeout 150 python3 dev/stream_ab.py --shapes 0 --formats w8a16-channel,w3a16-g128,w2a16-g64 --tokens 1,8,16,32 \
    --json "$OUT/stream_ab2.json" 2>&1 | tail -100
}

wosmall() {
  step "weight-only kernels and the dispatcher at 2-8 tokens, every width"
  timeout 230 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel,w3a16-g128,w2a16-g64 \
    --tokens 2,3,4,6,8 --shapes 4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,4096x28672,8192x28672,28672x8192 \
    --json "$OUT/wosmall.json" 2>&1 | tail -3
  python3 dev/kernels_table.py "$OUT/wosmall.json"
}
e2ew4() { bench8b "" w4a16 1,16 2048 14; }

wogemv() {
  step "wo_gemv variants at every shape, M = 1, 8"
  timeout 200 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel,w3a16-g128 --tokens 1,8 \
    --shapes 4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,4096x28672 --json "$OUT/wogemv.json" 2>&1 | tail -3
  python3 dev/kernels_table.py "$OUT/wogemv.json"
}

wosmall1() {
  step "weight-only kernels and the dispatcher at 1-8 tokens, every width, after gemv_kind"
  timeout 260 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel,w3a16-g128,w2a16-g64 \
    --tokens 1,2,3,4,6,8 --shapes 4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,4096x28672,8192x28672,28672x8192 \
    --json "$OUT/wosmall1.json" 2>&1 | tail -3
  python3 dev/kernels_table.py "$OUT/wosmall1.json" | tail -5
}

lowtests() {
  step "GPU tests: 2-/3-bit layers and variant 3"
  timeout 120 python3 -m pytest -q -m gpu tests/test_lowbit_gpu.py tests/test_wo_stream_gpu.py --tb=short -rf \
    > "$OUT/lowtests.txt" 2>&1
  summarize "$OUT/lowtests.txt"
}
lowsmall() {
  step "2-/3-bit 4096 x 4096 at 9-16 tokens through the dispatcher"
  timeout 100 python3 benchmarks/bench_kernels.py --formats w3a16-g128,w2a16-g64 --tokens 9,12,16,17 \
    --shapes 4096x4096 --json "$OUT/lowsmall.json" 2>&1 | tail -3
  python3 dev/kernels_table.py "$OUT/lowsmall.json" | tail -9
}

wotok() {
  step "weight-only kernels and the dispatcher at 1 and 16 tokens, every width"
  timeout 200 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel,w3a16-g128,w2a16-g64 \
    --tokens 1,16 --shapes 4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,4096x28672,8192x28672,28672x8192 \
    --json "$OUT/wotok.json" 2>&1 | tail -3
  python3 dev/kernels_table.py "$OUT/wotok.json" | tail -5
}

gemvwide() {
  step "w8_gemv tests with QTOOL_W8_GEMV=16"
  QTOOL_W8_GEMV=16 timeout 120 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py -k w8_gemv --tb=short -rf \
    > "$OUT/gemv_wide_tests.txt" 2>&1
  summarize "$OUT/gemv_wide_tests.txt"
  step "w8_gemv: 16-warp blocks up to 8192 rows (QTOOL_W8_GEMV=16) vs 4096 (0)"
  timeout 150 python3 dev/gemv_probe.py --switches 0,16 --tokens 1,8,16 --json "$OUT/gemv_wide.json" 2>&1 | tail -60
}

wotable() {
  step "weight-only table"
  timeout 400 python3 benchmarks/bench_kernels.py --json "$OUT/wo.json" 2>&1 | tail -3
  python3 dev/kernels_table.py "$OUT/wo.json"
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests wosmall gemvwide)
for s in "${stages[@]}"; do "$s"; done
step "done"
