// Prints csrc/cuda/drs_launch.h's decisions for the queries on stdin, one per
// line: "planes size elem_bytes static_smem per_block per_block_optin" ->
// "path threads dynamic_smem needs_optin chunks chunk_len planes_per_launch
// max_plane_size" (path: plane or chunk). Built and run by
// tests/test_drs_launch.py with the host compiler; no CUDA needed.
#include <cstdint>
#include <iostream>

#include "cuda/drs_launch.h"

int main() {
  namespace drs = wsss_fast::cuda::drs;
  int64_t planes, size;
  size_t elem, static_smem, per_block, optin;
  while (std::cin >> planes >> size >> elem >> static_smem >> per_block >> optin) {
    const drs::SmemLimits limits{per_block, optin};
    const drs::Launch l = drs::plan_launch(planes, size, elem, static_smem, limits);
    std::cout << (l.path == drs::Path::kPlane ? "plane" : "chunk") << ' ' << l.threads << ' '
              << l.dynamic_smem << ' ' << l.needs_optin << ' ' << l.chunk.chunks << ' '
              << l.chunk.chunk_len << ' ' << l.planes_per_launch << ' '
              << drs::max_plane_size(elem, static_smem, limits) << '\n';
  }
  return 0;
}
