#!/usr/bin/env bash
# The device calls of session 66 (BENCHMARKS.md "session 66"): why the wgmma weight-only kernel (first run in session
# 66: right, but 0.4-1.5x bf16 where the routes reach 1.1-2.3x) is slow, from Nsight Compute.
#   bash dev/session66.sh wgncu           carry [".gpu/w8a8", ".gpu/ext"]
#   wgncu    ncu --set full + SASS stalls of the wgmma kernel: W4 g128 4096 x 4096 at 16 / 64 tokens (the plan),
#            8192 x 8192 at 16 tokens, int8 rows 4096 x 4096 at 32 tokens
#   later stages: dev/session64.sh's (wgtests, wgab, wg8ab, wgsan, wgroute, auto)
cd "$(dirname "$0")/.."
s66_stages=("$@")
set --
LOG=${LOG:-session66.log}
source dev/gpu_setup.sh
# session 64's stages without a second setup
eval "$(sed -n '/^wgtests()/,/^}/p;/^wgab()/,/^}/p;/^wg8ab()/,/^}/p;/^wgdiag()/,/^}/p;/^wgsan()/,/^}/p;/^wgroute()/,/^}/p' dev/session64.sh)"
ncu_wg() {  # ncu_wg TAG ARGS...: one profile_wgmma.py call under ncu --set full, its stalls summarized
  local tag=$1; shift
  step "ncu --set full: wgmma $*"
  timeout -k 10 "${NS_TIMEOUT:-90}" ncu --clock-control none --target-processes all --kernel-name-base demangled \
    --kernel-name regex:wo_wgmma_kernel --launch-skip 2 --launch-count 1 --set full --import-source yes \
    -f -o "/tmp/$tag" python3 dev/profile_wgmma.py "$@" > "/tmp/$tag.log" 2>&1
  echo "ncu exit $?"; grep -v "^==PROF==\|^USDT" "/tmp/$tag.log" | tail -3
  ncu --import "/tmp/$tag.ncu-rep" --page details --csv > "$OUT/${tag}_details.csv" 2>&1
  ncu --import "/tmp/$tag.ncu-rep" --page source --csv --print-source sass > "/tmp/${tag}_sass.csv" 2>&1
  xz -T4 -c "/tmp/${tag}_sass.csv" > "$OUT/${tag}_sass.csv.xz"
  grep -E '"(Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per Thread|Issue Slots Busy|Warp Cycles Per Issued Instruction|Dynamic Shared Memory Per Block|Grid Size|Cluster Size)"' \
    "$OUT/${tag}_details.csv" | awk -F'","' '{print $13 " (" $14 "): " $15}' | head -12
  python3 dev/ncu_sass_top.py "/tmp/${tag}_sass.csv" --lines 14 2>&1 | head -40
}
wgncu() {
  ncu_wg wg4k16 --shape 4096x4096 --tokens 16
  ncu_wg wg8k16 --shape 8192x8192 --tokens 16
  ncu_wg wg4k64 --shape 4096x4096 --tokens 64
  ncu_wg wgi8k32 --shape 4096x4096 --tokens 32 --rows
}
wgncu2() {  # the larger token counts, where the kernel trails the routes most
  ncu_wg wg4k128 --shape 4096x4096 --tokens 128
  ncu_wg wg8k64 --shape 8192x8192 --tokens 64
}
capacity() {  # the clusters the GPU holds at once per schedule (the plan's one-wave rule)
  step "wgmma clusters per schedule"
  python3 -c "
import quantize
from qtool_kernels import warpgroup_mm as w
for kind in (0, 1):
    for t in w.TILES:
        print('kind', kind, 'tile', t, '  '.join(f'w{wg}s{s}:{w.max_clusters(0, t, wg, s, kind)}' for wg in w.WARPGROUPS
              if (t, wg) != (128, 4) for s in (1, 2, 3, 4, 6, 8)))" 2>&1 | tail -12
}
grid() {  # the new kernel (depth 8, one wave, no division): its tests, capacities, the schedule grid, ncu
  WT_TIMEOUT=120 wgtests
  capacity
  WA_SHAPES=4096x4096,8192x8192,4096x14336,14336x4096 WA_TOKENS=16,32,64,128 WA_TIMEOUT=150 wgab
  W8_SHAPES=4096x4096,8192x8192 W8_TIMEOUT=80 wg8ab
  ncu_wg wg4k16 --shape 4096x4096 --tokens 16
}
gridsmall() {  # grid on less device time (~120 s): two shapes
  WT_TIMEOUT=100 wgtests
  capacity
  WA_SHAPES=4096x4096,8192x8192 WA_TOKENS=16,32,64,128 WA_TIMEOUT=90 wgab
  W8_SHAPES=4096x4096 W8_TIMEOUT=45 wg8ab
  NS_TIMEOUT=60 ncu_wg wg4k16 --shape 4096x4096 --tokens 16
}
gridtiny() {  # the least device time (~60 s): the tests, capacities, the grid on 4096 x 4096
  WT_TIMEOUT=60 wgtests
  capacity
  WA_SHAPES=4096x4096 WA_TOKENS=16,32,64,128 WA_TIMEOUT=50 wgab
}
for s in "${s66_stages[@]}"; do
  if declare -F "$s" > /dev/null; then "$s"; else bash dev/session64.sh "$s"; fi
done
