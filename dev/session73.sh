#!/usr/bin/env bash
# The device calls of session 73 (BENCHMARKS.md "session 73"); carry [".gpu/w8a8", ".gpu/ext"].
#   bash dev/session73.sh asym73   every schedule (tall, post) with and without zero points on issue 19's shapes at
#                                  9-32 tokens, the H200 table's CUTLASS schedule timed beside them; merged as this
#                                  card's cells, "A | B" where zero points want another route ($OUT/tuning.py: copy
#                                  it into kernels/tuning.py); then the same A/B again on the merged table
#   bash dev/session73.sh ptrs73   branch wgmma-ptrs's library (carry ".gpu/variants/wgmma_ptrs.so" too: build it on
#                                  the branch with dev/variant_lib.sh): the wgmma GPU tests on it, the A/B of both
#                                  libraries twice in turn (every schedule, 16 / 32 tokens), their ratio, sanitizer
#   other stages: dev/session72.sh's (first72, postsan), then session71's and session55's
cd "$(dirname "$0")/.."
s73_stages=("$@")
set --
LOG=${LOG:-session73.log}
source dev/gpu_setup.sh
eval "$(sed -n '/^abtable()/,/^}/p' dev/session70.sh)"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
SHAPES73=4096x4096,4096x6144,14336x4096,4096x14336,8192x8192,4096x28672,8192x28672,28672x8192
asym73() {
  echo "GPU $GPU"
  step "every schedule with and without zero points, 9-32 tokens"
  timeout -k 10 "${A73_TIMEOUT:-200}" python3 dev/wgmma_ab.py --asym --tall --post --tokens 9,16,32 \
    --shapes "$SHAPES73" --json "$OUT/ab_asym.json" > "$OUT/ab_asym.txt" 2>&1
  echo "exit $?"
  python3 dev/wgmma_cells.py "$OUT/ab_asym.json" --merge && cp kernels/tuning.py "$OUT/tuning.py"
  git diff kernels/tuning.py | grep '^[-+] '
  step "the same on the merged table"
  timeout -k 10 "${A73_TIMEOUT:-200}" python3 dev/wgmma_ab.py --asym --tall --post --tokens 9,16,32 \
    --shapes "$SHAPES73" --json "$OUT/ab_asym2.json" > "$OUT/ab_asym2.txt" 2>&1
  echo "exit $?"
  abtable "$OUT/ab_asym2.json"; python3 dev/wgmma_cells.py "$OUT/ab_asym2.json"
}
ptrs73() {
  local lib=$PWD/.gpu/variants/wgmma_ptrs.so shapes=${P73_SHAPES:-4096x4096,4096x6144,4096x14336,8192x8192}
  step "wgmma-ptrs: the wgmma GPU tests on the branch's library"
  QTOOL_WGMMA_LIBRARY=$lib gputests tests_ptrs "${P73_TT:-150}" tests/test_wgmma_gpu.py
  for run in 1 2; do
    for which in main ptrs; do
      step "A/B $run: $which's library, 16-32 tokens"
      if [ "$which" = ptrs ]; then export QTOOL_WGMMA_LIBRARY=$lib; else unset QTOOL_WGMMA_LIBRARY; fi
      timeout -k 10 "${P73_AT:-90}" python3 dev/wgmma_ab.py --tall --post --tokens 16,32 --shapes "$shapes" \
        --json "$OUT/ab_${which}_$run.json" > "$OUT/ab_${which}_$run.txt" 2>&1
      echo "exit $?"
    done
  done
  unset QTOOL_WGMMA_LIBRARY
  python3 dev/lib_ab.py --a "$OUT"/ab_main_*.json --b "$OUT"/ab_ptrs_*.json
  QTOOL_WGMMA_LIBRARY=$lib sanitize wgptrs dev/san_wgmma.py
}
for s in "${s73_stages[@]}"; do
  if declare -F "$s" > /dev/null; then "$s"; else bash dev/session72.sh "$s"; fi
done
