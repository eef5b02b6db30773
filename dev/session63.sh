#!/usr/bin/env bash
# The device calls of session 63 (BENCHMARKS.md "session 63"). Carry [".gpu/w8a8", ".gpu/ext", ".gpu/extB",
# ".gpu/extC", ".gpu/extD"]: the Hopper libraries now travel xz-packed (dev/prebuild_sm90.sh, 32 -> 3 MB), so four
# builds of the extension fit the 64 MiB. extB: PREBUILD_CACHE=/tmp/qtool_prebuild_cacheB OUTDIR=.gpu/extB
# QTOOL_NVCC_EXTRA=-DQTOOL_SPLIT_NARROW32=1 bash dev/prebuild_ext.sh; extC / extD the same with cacheC / cacheD and
# -DQTOOL_SPLIT_REG_RING=4 / 8.
#   auto     call 1: on an H200, issue 19's 8B goals and decode cells (dev/session62.sh's h200, the first H200 figures
#            since session 58); on an H100, session 62's prepared A/B (narrow32: the narrow 8-warp block at 17-32
#            tokens), regring below, and Nsight Compute on the split variant at 32 tokens (ncu32)
#   regring  the 16-warp split block with its codes' ring in registers, 4 chunks deep (extC) and 8 deep (extD,
#            -DQTOOL_SPLIT_REG_RING=8), against the default (the cp.async ring, 8 deep) on the shapes that block
#            serves at 9-16 tokens, each in its own process, the split tests on extC first
#   tables   issue 18's and 19's whole tables (dev/session55.sh tables; on an H200)
cd "$(dirname "$0")/.."
s63_stages=("$@")
set --
source dev/session62.sh  # gpu_setup.sh, second_build, split_ab_in, narrow32, ncu32, h200
RR_EXTRA=-DQTOOL_SPLIT_REG_RING=4
regring() {
  second_build /tmp/qc_rr "$RR_EXTRA" .gpu/extC
  QTOOL_KERNELS_CACHE=/tmp/qc_rr QTOOL_NVCC_EXTRA=$RR_EXTRA gputests regringtests "${RT_TIMEOUT:-120}" \
    tests/test_split_gpu.py
  local tokens=${SA_TOKENS:-9,16} shapes=${SA_SHAPES:-4096x6144,14336x4096,4096x14336,8192x8192}
  split_ab_in a "" "" "$tokens" "$shapes" regring
  split_ab_in c /tmp/qc_rr "$RR_EXTRA" "$tokens" "$shapes" regring
  [ -d .gpu/extD ] || return 0  # the same 8 chunks deep (extD: cacheD, -DQTOOL_SPLIT_REG_RING=8)
  second_build /tmp/qc_rr8 -DQTOOL_SPLIT_REG_RING=8 .gpu/extD
  split_ab_in d /tmp/qc_rr8 -DQTOOL_SPLIT_REG_RING=8 "$tokens" "$shapes" regring
}
auto() {
  case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
    *H200*) h200 ;;
    *) narrow32; regring; ncu32 ;;
  esac
}
tables() { bash dev/session55.sh tables; }
for stage in "${s63_stages[@]}"; do "$stage"; done
[ ${#s63_stages[@]} -eq 0 ] || step "done"
