// Host-only check of what sm90_prefetch.cuh assumes about the mixed-input GEMM's shuffled codes (mixed_mm_sm90.cu
// ShuffledLayout): every code (row r, column c) of an [n, k] weight lies in the 256-code block that starts at code
// (c / 16 * n + r / 16 * 16) * 16, i.e. atoms of 16 rows x 16 k, tiled along the rows first, so one 16-k atom column
// of rows [r0, r0 + R) (r0, R multiples of 16) is one contiguous run of R x 16 codes at (c / 16 * n + r0) * 16.
//   nvcc -std=c++17 -arch=sm_90a -I$CUTLASS/include -I$CUTLASS/tools/util/include [-I<curand include>] \
//     dev/shuffle_layout_check.cu -o /tmp/shuffle_check && /tmp/shuffle_check       (session 45: both widths pass)
#include <cstdio>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/util/mixed_dtype_utils.hpp"

using namespace cute;
using T = cutlass::bfloat16_t;

template <class ValueOrder>
long misplaced(int n, int k) {
  using Atom = decltype(cutlass::compute_memory_reordering_atom<T, Layout<Shape<_1, _1>>, ValueOrder>());
  static_assert(size<0>(Atom{}) == 16 && size<1>(Atom{}) == 16, "the prefetch assumes atoms of 16 x 16 codes");
  const auto layout = tile_to_shape(Atom{}, make_shape(n, k, 1));
  long bad = 0;
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < k; ++c) {
      const long offset = layout(r, c, 0), block = (static_cast<long>(c / 16) * n + r / 16 * 16) * 16;
      bad += offset < block || offset >= block + 256;
    }
  return bad;
}

int main() {
  const long four = misplaced<Layout<Shape<_2, _4>, Stride<_4, _1>>>(512, 256);  // 4-bit: the converter's order
  const long eight = misplaced<Layout<_1>>(512, 256);
  std::printf("codes outside their assumed block: 4-bit %ld, 8-bit %ld\n", four, eight);
  return four != 0 || eight != 0;
}
