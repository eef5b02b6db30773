#!/usr/bin/env bash
# Session 33's last device call: racecheck of the decode attention kernels on a few eager launches
# (dev/san_attention.py; the timing probe's graphs ran past 120 s under racecheck), then the decode step's kernels
# for fp8 and fp8-block at batch 1 (why fp8-block's decode is 1.58x where fp8's is 1.64x).
cd "$(dirname "$0")/.."
LOG=session33b.log
source dev/gpu_setup.sh
for tool in racecheck memcheck; do
  step "compute-sanitizer $tool: dev/san_attention.py"
  timeout -k 10 "${SZ_TIMEOUT:-150}" compute-sanitizer --tool "$tool" --print-limit 20 python3 dev/san_attention.py \
    > "$OUT/san_attention_$tool.txt" 2>&1
  echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|launches done" "$OUT/san_attention_$tool.txt" | tail -4
  [ "$tool" = racecheck ] && [ -n "${SKIP_MEMCHECK:-1}" ] && break
done
for s in fp8 fp8-block; do
  step "decode step profile, $s, batch 1"
  timeout -k 15 "${PF_TIMEOUT:-110}" python3 dev/decode_profile.py --scheme "$s" --top 25 --json "$OUT/profile-$s.json" \
    2>&1 | tail -30
done
step "done"
