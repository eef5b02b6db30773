#!/usr/bin/env bash
# The device calls of session 63 (BENCHMARKS.md "session 63"). Carry [".gpu/w8a8", ".gpu/ext", ".gpu/extB"] (extB:
# PREBUILD_CACHE=/tmp/qtool_prebuild_cacheB OUTDIR=.gpu/extB QTOOL_NVCC_EXTRA=-DQTOOL_SPLIT_NARROW32=1 bash
# dev/prebuild_ext.sh).
#   auto   call 1: on an H200, issue 19's 8B goals and decode cells (dev/session62.sh h200, the first H200 figures since
#          session 58); on an H100, session 62's prepared A/B and profile instead (dev/session62.sh narrow32 ncu32: the
#          narrow 8-warp block at 17-32 tokens against the default, then Nsight Compute on the default at 32 tokens)
#   tables on an H200: issue 18's and 19's whole tables (dev/session55.sh tables)
cd "$(dirname "$0")/.."
auto() {
  case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
    *H200*) bash dev/session62.sh h200 ;;
    *) bash dev/session62.sh narrow32 ncu32 ;;
  esac
}
tables() { bash dev/session55.sh tables; }
for stage in "$@"; do "$stage"; done
