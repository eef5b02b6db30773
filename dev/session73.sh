#!/usr/bin/env bash
# The device calls of session 73 (BENCHMARKS.md "session 73"); carry [".gpu/w8a8", ".gpu/ext"].
#   bash dev/session73.sh asym73   every schedule (tall, post) with and without zero points on issue 19's shapes at
#                                  9-32 tokens, the H200 table's CUTLASS schedule timed beside them; merged as this
#                                  card's cells, "A | B" where zero points want another route ($OUT/tuning.py: copy
#                                  it into kernels/tuning.py); then the same A/B again on the merged table
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
for s in "${s73_stages[@]}"; do
  if declare -F "$s" > /dev/null; then "$s"; else bash dev/session72.sh "$s"; fi
done
