#!/usr/bin/env bash
# The device calls of session 72 (BENCHMARKS.md "session 72"); carry [".gpu/w8a8", ".gpu/ext"].
#   bash dev/session72.sh first72   the wgmma tests (the post-scale form's too), then every schedule, the tall tile's
#                                   and the post-scale form's on issue 19's shapes at 9-32 tokens, merged as this
#                                   card's cells ($OUT/tuning.py: copy it into kernels/tuning.py); on an H200 also
#                                   64-128 tokens
#   bash dev/session72.sh postsan   compute-sanitizer memcheck and racecheck on the post-scale form
#   other stages: dev/session71.sh's (wo71: issue 19's table), then dev/session55.sh's
cd "$(dirname "$0")/.."
s72_stages=("$@")
set --
LOG=${LOG:-session72.log}
source dev/gpu_setup.sh
eval "$(sed -n '/^wgtests()/,/^}/p' dev/session64.sh)"
eval "$(sed -n '/^abtable()/,/^}/p' dev/session70.sh)"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
SHAPES72=4096x4096,4096x6144,14336x4096,4096x14336,8192x8192,4096x28672,8192x28672,28672x8192
merge() {  # $1: a dev/wgmma_ab.py JSON; its cells into kernels/tuning.py for this card, a copy to $OUT
  python3 dev/wgmma_cells.py "$1" --merge && cp kernels/tuning.py "$OUT/tuning.py"
  git diff --stat kernels/tuning.py
}
first72() {
  echo "GPU $GPU"
  WT_TIMEOUT=${WT_TIMEOUT:-120} wgtests
  step "every schedule, the tall tile's and the post-scale form's, issue 19's shapes at 9-32 tokens"
  timeout -k 10 "${F72_TIMEOUT:-240}" python3 dev/wgmma_ab.py --tall --post --tokens 9,16,32 --shapes "$SHAPES72" \
    --json "$OUT/ab_small.json" > "$OUT/ab_small.txt" 2>&1
  abtable "$OUT/ab_small.json"; merge "$OUT/ab_small.json"
  case "$GPU" in *H200*)
    step "every schedule and the tall tile's at 64-128 tokens"
    timeout -k 10 "${F72_TIMEOUT2:-150}" python3 dev/wgmma_ab.py --tall --tokens 64,128 --shapes "$SHAPES72" \
      --json "$OUT/ab_large.json" > "$OUT/ab_large.txt" 2>&1
    abtable "$OUT/ab_large.json"; merge "$OUT/ab_large.json" ;;
  esac
}
postsan() {  # compute-sanitizer memcheck and racecheck: dev/san_wgmma.py, the post-scale form's launches included
  sanitize wgpost dev/san_wgmma.py
}
for s in "${s72_stages[@]}"; do
  if declare -F "$s" > /dev/null; then "$s"; else bash dev/session71.sh "$s"; fi
done
