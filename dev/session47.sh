#!/usr/bin/env bash
# Session 47's extra device call: the 8B end to end on the routes merged in that session (session46.sh's calls ran
# first: `pdltable pdlbig e2epdl`, `pdlsweep w4table`, `w8a8pdl` with session44.sh's `w8a8table chansweep4k`).
# Carry [".gpu/w8a8", ".gpu/ext"]; nvidia-h200. A W4 run at batches 1 and 16 with prefill 2048 passes 170 s (three
# compiled shapes plus the bf16 half): split it over calls with E2E_BATCHES, as session 47 did.
#   bash dev/session47.sh e2e                                  (fp8-block and int8 at batches 1, 16; W4 first)
#   E2E_SCHEMES=w4a16 E2E_BATCHES=1 E2E_TIMEOUT=250 bash dev/session47.sh e2e
cd "$(dirname "$0")/.."
LOG=session47.log
source dev/gpu_setup.sh
e2e() {  # the 8B, bf16 in the same process: decode at E2E_BATCHES, prefill 1 x E2E_PREFILL
  E2E_TIMEOUT=${E2E_TIMEOUT:-170} bench8b "" "${E2E_SCHEMES:-w4a16 fp8-block w8a8-int8}" "${E2E_BATCHES:-1,16}" \
    "${E2E_PREFILL:-2048}" 9
}
for stage in "$@"; do "$stage"; done
step "done"
