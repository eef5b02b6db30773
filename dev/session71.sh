#!/usr/bin/env bash
# The device calls of session 71 (BENCHMARKS.md "session 71"); carry [".gpu/w8a8", ".gpu/ext"].
#   bash dev/session71.sh first71    on an H200: the wgmma tests, then every schedule (tall ones too) on issue 19's
#                                    shapes at 9-128 tokens, merged as the H200's cells ($OUT/tuning.py: copy it
#                                    into kernels/tuning.py); on an H100: session 70's check and the tall tile on
#                                    zero points, printed
#   bash dev/session71.sh post71     the variant library of branch wgmma-post (g128 scales after the MMA at <= 32
#                                    tokens; carry ".gpu/variants/wgmma_post.so" too): its tests, then its schedules
#                                    against the library's at 9-32 tokens
#   bash dev/session71.sh post72     post71 on every shape of issue 19 at 9-32 tokens, then the cells the variant
#                                    would take ($OUT/tuning_post.py: its cells merged over this card's; session 71's
#                                    A/B found some of main's cells two waves under the variant)
#   bash dev/session71.sh postsan    compute-sanitizer on the variant
#   bash dev/session71.sh wo71       issue 19's table through the dispatcher (after first71's cells are merged)
#   bash dev/session71.sh w8a8all    issue 18's table
cd "$(dirname "$0")/.."
s71_stages=("$@")
set --
LOG=${LOG:-session71.log}
source dev/gpu_setup.sh
eval "$(sed -n '/^wgtests()/,/^}/p;/^wgab()/,/^}/p' dev/session64.sh)"
eval "$(sed -n '/^abtable()/,/^}/p' dev/session70.sh)"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
merge() {  # $1: a dev/wgmma_ab.py JSON; its cells into kernels/tuning.py for this card, a copy to $OUT
  python3 dev/wgmma_cells.py "$1" --merge && cp kernels/tuning.py "$OUT/tuning.py"
  git diff --stat kernels/tuning.py
}
first71() {
  echo "GPU $GPU"
  case "$GPU" in
    *H200*)
      WT_TIMEOUT=100 wgtests
      step "every schedule, tall too, issue 19's shapes at 9-128 tokens"
      timeout -k 10 "${F71_TIMEOUT:-300}" python3 dev/wgmma_ab.py --tall --tokens 9,16,32,64,128 \
        --shapes 4096x4096,4096x6144,14336x4096,4096x14336,8192x8192,4096x28672,8192x28672,28672x8192 \
        --json "$OUT/ab_h200.json" 2>&1 | grep -v "^USDT" | tail -60
      merge "$OUT/ab_h200.json" ;;
    *)
      bash dev/session70.sh check70
      step "tall schedules on zero points, 16-64 tokens"
      timeout -k 10 150 python3 dev/wgmma_ab.py --tall --asym --tokens 16,32,64 \
        --shapes 4096x4096,4096x6144,4096x14336,8192x8192 --json "$OUT/ab_asym.json" 2>&1 | grep -v "^USDT" | tail -30
      ;;  # printed, not merged: a cell holds for both, measured on symmetric weights (warpgroup_mm.for_weight)
  esac
}
post71() {
  local lib=$PWD/.gpu/variants/wgmma_post.so shapes=${P71_SHAPES:-4096x4096,4096x6144,8192x8192,4096x14336}
  echo "GPU $GPU"
  step "wgmma post-scale variant: tests"
  QTOOL_WGMMA_LIBRARY=$lib gputests tests_post "${P71_TT:-150}" tests/test_wgmma_gpu.py -k "${P71_K:-}"
  step "the variant's schedules, then the library's, 9-32 tokens"
  QTOOL_WGMMA_LIBRARY=$lib timeout -k 10 "${P71_AT:-120}" python3 dev/wgmma_ab.py --tall --tokens "${P71_TOKENS:-9,16,32}" --shapes $shapes \
    --json "$OUT/ab_post.json" > /dev/null 2>&1; abtable "$OUT/ab_post.json"
  timeout -k 10 "${P71_AT:-120}" python3 dev/wgmma_ab.py --tall --tokens "${P71_TOKENS:-9,16,32}" --shapes $shapes \
    --json "$OUT/ab_lib.json" > /dev/null 2>&1; abtable "$OUT/ab_lib.json"
}
one71() {  # the least device time: the variant's A/B, then on an H200 its own cells
  P71_TT=90 P71_K="g128 or plan or tall" P71_SHAPES=4096x4096,8192x8192,4096x14336 post71
  case "$GPU" in *H200*)
    step "every schedule, tall too, the 8B shapes at 9-128 tokens"
    timeout -k 10 200 python3 dev/wgmma_ab.py --tall --tokens 9,16,32,64,128 \
      --shapes 4096x4096,4096x6144,14336x4096,4096x14336,8192x8192,4096x28672 --json "$OUT/ab_h200.json" > /dev/null 2>&1
    abtable "$OUT/ab_h200.json"; merge "$OUT/ab_h200.json" ;;
  esac
}
tiny71() {  # the variant's tests on g128 and its A/B on two shapes at 16 / 32 tokens (~150 s)
  P71_TT=80 P71_K="g128" P71_SHAPES=4096x4096,8192x8192 P71_TOKENS=16,32 post71
}
post72() {
  P71_AT=240 P71_SHAPES=4096x4096,4096x6144,14336x4096,4096x14336,8192x8192,4096x28672,3072x3072 P71_TOKENS=9,16,32 post71
  step "the variant's cells (merged into a copy: \$OUT/tuning_post.py)"
  cp kernels/tuning.py /tmp/tuning_main.py
  python3 dev/wgmma_cells.py "$OUT/ab_post.json" --merge && cp kernels/tuning.py "$OUT/tuning_post.py"
  cp /tmp/tuning_main.py kernels/tuning.py
}
postsan() {  # compute-sanitizer memcheck and racecheck on the variant (dev/san_wgmma.py: g128 at K = 1024 takes
  # its group loop; ~300 s)
  QTOOL_WGMMA_LIBRARY=$PWD/.gpu/variants/wgmma_post.so sanitize wgpost dev/san_wgmma.py
}
wo71() {  # issue 19's table: W4 g128 sym / asym, W8 per channel, W3, W2
  step "issue 19: every weight-only format, shape and M"
  timeout -k 15 "${WO_TIMEOUT:-420}" python3 benchmarks/bench_kernels.py \
    --formats w4a16-g128,w4a16-g128-asym,w8a16-channel,w3a16-g128,w2a16-g64 --tokens 1,16,32,64,128,256,4096 \
    --json "$OUT/wo_table.json" > /tmp/wo_table.txt 2>&1
  echo "exit $?"; tail -80 /tmp/wo_table.txt
}
for s in "${s71_stages[@]}"; do
  if declare -F "$s" > /dev/null; then "$s"; else bash dev/session55.sh "$s"; fi
done
