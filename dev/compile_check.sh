#!/usr/bin/env bash
# Compile every CUDA and C++ source of the extension on a machine without a GPU (kernels/build.py's docstring
# gives the flags): catches a broken GPU build before a device call does (session 27's review removed a member that
# wo_stream.cu used; CI compiles nothing). nvcc from the `nvidia-cuda-nvcc` wheel or a CUDA toolkit.
#   bash dev/compile_check.sh                 # sm_90, every source, 2 jobs
#   ARCHS="80 90" bash dev/compile_check.sh w8_gemv ops_w8a8
#   QTOOL_NVCC_EXTRA=-DQTOOL_SPLIT_DEPTH=16 bash dev/compile_check.sh wo_split   # a compile-time switch's registers
set -uo pipefail
cd "$(dirname "$0")/.."
ARCHS=${ARCHS:-90}
OUTDIR=${OUTDIR:-/tmp/qtool_compile_check}
mkdir -p "$OUTDIR" /tmp/qtool_shim/c10/cuda/impl
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > /tmp/qtool_shim/c10/cuda/impl/cuda_cmake_macros.h
TI=$(python3 -c "import torch, os; print(os.path.dirname(torch.__file__))")/include
CUDA_INC=$(dirname "$(readlink -f "$(command -v nvcc)")")/../include
[ -f "$CUDA_INC/cuda_runtime.h" ] || CUDA_INC=$(ls -d /usr/local/cuda*/include 2>/dev/null | head -1)
sources=("$@")
[ ${#sources[@]} -eq 0 ] && sources=($(python3 -c "
import re; s = open('kernels/build.py').read(); print(' '.join(f.split('.')[0] for f in eval(re.search(r'SOURCES = (\(.*?\))', s, re.S).group(1))))"))
gencode=(); for a in $ARCHS; do gencode+=("-gencode=arch=compute_$a,code=sm_$a"); done
compile() {
  local f=$1
  if [ -f "kernels/csrc/$f.cu" ]; then
    nvcc -std=c++17 -O3 -lineinfo --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ "${gencode[@]}" -Xptxas -v -Xcompiler -fPIC \
      ${QTOOL_NVCC_EXTRA:-} -Ikernels/csrc -c "kernels/csrc/$f.cu" -o "$OUTDIR/$f.o" > "$OUTDIR/$f.log" 2>&1
  else
    g++ -std=c++20 -O1 -fPIC -D_GLIBCXX_USE_CXX11_ABI=1 -I"$TI" -I"$TI/torch/csrc/api/include" -I"$CUDA_INC" \
      -I/tmp/qtool_shim -Ikernels/csrc -c "kernels/csrc/$f.cpp" -o "$OUTDIR/$f.o" > "$OUTDIR/$f.log" 2>&1
  fi
  local rc=$?
  echo "$f: $([ $rc -eq 0 ] && echo ok || echo FAILED) ($(grep -c 'bytes spill stores' "$OUTDIR/$f.log" 2>/dev/null) kernels;" \
    "$(grep -E '[1-9][0-9]* bytes spill stores' "$OUTDIR/$f.log" | wc -l) spill)"
  [ $rc -eq 0 ] || grep -E "error" "$OUTDIR/$f.log" | head -5
  return $rc
}
export -f compile; export OUTDIR TI CUDA_INC; export GENCODE="${gencode[*]}"
status=0
for f in "${sources[@]}"; do compile "$f" & 
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do wait -n || status=1; done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || status=1; done
exit $status
