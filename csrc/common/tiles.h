// Tile parameters of the decode stages per token bucket NT (1, 4 or 16), in one place: the
// kernels use them (stages.cuh, littlebit.cuh, popcount.cu) and factorkern._C.tiles() hands the
// same numbers to bench/model.py, which reads the rest (loads in flight, instructions per
// chunk) from the SASS. Plain C++ (host and device).
//
//   rows     rows per lane group: the activations of a step serve `rows` rows (less activation
//            traffic per weight byte), at the price of rows x NT fp32 accumulators;
//   unroll   16-byte chunks of each row whose weight loads are issued together (2:4: 16-column
//            steps of a 128-column chunk; dense: 8-column chunks; signs, LittleBit stage 1:
//            128-column chunks; LittleBit stage 2 loads the next term's chunk instead);
//   q_trips  sign and popcount stages: trips of the runtime loop over the 4 words of a chunk
//            (1: unrolled).
#pragma once

#include <stdint.h>

namespace fk {

// Lanes per row group (device.cuh, RowGroups) for `rows` rows reducing over `chunks` 16-byte
// chunks, k_rows rows per group: the power of two L <= min(32, chunks) that maximizes
//   (lanes busy over the passes: chunks / (ceil(chunks / L) L)) x min(1, work items / 1024),
// the larger L on ties. Short axes get narrow groups (LittleBit stage 2 at r = 256: 2 chunks,
// 2 lanes; sparse_dense's 2:4 stage at k = 2048: 16 lanes) instead of idle lanes, as long as the
// stage keeps ~1024 warp items (one 8-warp CTA per SM of an H100) to spread; a stage with few
// rows keeps wide groups (more items) even if some lanes idle on the last pass.
constexpr int64_t lane_items(int64_t rows, int64_t l, int k_rows) {
  return (rows + (32 / l) * k_rows - 1) / ((32 / l) * k_rows);
}
constexpr int lanes_per_row(int64_t chunks, int64_t rows, int k_rows) {
  int best = 1;
  int64_t best_num = -1, best_den = 1;
  for (int l = 32; l >= 1; l /= 2) {
    if (l > chunks && l > 1) continue;
    const int64_t items = lane_items(rows, l, k_rows);
    const int64_t num = chunks * (items < 1024 ? items : 1024);
    const int64_t den = ((chunks + l - 1) / l) * l;
    if (num * best_den > best_num * den) {  // strictly better: ties keep the larger L
      best = l;
      best_num = num;
      best_den = den;
    }
  }
  return best;
}
// Warp work items of a stage: `rows` rows, k_rows per lane group, 32 / lanes_per_row groups.
constexpr int64_t stage_items(int64_t rows, int64_t chunks, int k_rows) {
  return lane_items(rows, lanes_per_row(chunks, rows, k_rows), k_rows);
}

namespace tiles {

constexpr int kBuckets[3] = {1, 4, 16};

constexpr int sparse24_rows(int nt) { return nt >= 4 ? 2 : 4; }
constexpr int sparse24_batch(int) { return 4; }        // of the 8 steps of a 128-column chunk
constexpr bool sparse24_expand(int nt) { return nt >= 4; }
constexpr int dense_rows(int) { return 4; }
constexpr int dense_unroll(int nt) { return nt >= 16 ? 2 : 4; }
constexpr int sign_rows(int) { return 4; }
constexpr int sign_unroll(int) { return 2; }  // stage 1 only
constexpr int sign_q_trips(int nt) { return nt == 1 ? 1 : 4; }
constexpr int popcount_rows(int) { return 4; }
constexpr int popcount_unroll(int) { return 2; }
constexpr int popcount_q_trips(int nt) { return nt == 1 ? 1 : 4; }

}  // namespace tiles
}  // namespace fk
