// The amx-reference family: the AMX kernel's own loops and packing (amx_loops.h) with the tile
// instructions replaced by a portable model of their documented semantics, so that everything
// but the instructions themselves is tested on any CPU. Slow (scalar tile multiplies); chosen
// only by name (kernel="amx-reference" or SHARDCORE_KERNEL), never automatically.
//
// The model follows Intel's pseudo-code for AMX-BF16 (SDM vol. 2, TDPBF16PS; ISA extensions
// reference, TILELOADD/TILESTORED/TILEZERO/LDTILECFG): per thread, eight tiles of up to 16 rows
// of 64 bytes, shaped by the configuration; a load fills `rows` rows of `colsb` bytes and zeroes
// the rest; tdpbf16ps adds, for each C[m][n] and k in order, the two products
// A[m][2k]*B[k][2n] and A[m][2k+1]*B[k][2n+1] one after the other in float32 (round to nearest
// even), with subnormal inputs and results taken as zero. A product of two bf16 is exact in
// float32, so the model's only roundings are those additions.
#include <cstdint>
#include <cstring>

#include "gemm/gemm.h"

namespace shardcore::gemm {
namespace {
namespace model {

struct Tiles {
  uint8_t rows[8];
  uint16_t colsb[8];
  alignas(64) unsigned char data[8][16][64];
};
thread_local Tiles tiles;  // tile state is per thread, as on the hardware

inline float flush(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) == 0) u &= 0x80000000u;  // subnormal -> signed zero
  std::memcpy(&v, &u, 4);
  return v;
}

inline void config(const void* cfg) {
  const auto* b = static_cast<const unsigned char*>(cfg);
  for (int t = 0; t < 8; ++t) {
    tiles.rows[t] = b[48 + t];
    std::memcpy(&tiles.colsb[t], b + 16 + 2 * t, 2);
  }
  std::memset(tiles.data, 0, sizeof tiles.data);
}

inline void zero(int t) { std::memset(tiles.data[t], 0, sizeof tiles.data[t]); }

inline void load(int t, const void* p, int64_t stride) {
  zero(t);
  for (int r = 0; r < tiles.rows[t]; ++r)
    std::memcpy(tiles.data[t][r], static_cast<const unsigned char*>(p) + r * stride,
                tiles.colsb[t]);
}

inline void store(int t, void* p, int64_t stride) {
  for (int r = 0; r < tiles.rows[t]; ++r)
    std::memcpy(static_cast<unsigned char*>(p) + r * stride, tiles.data[t][r], tiles.colsb[t]);
}

inline float bf16_at(int t, int row, int i) {
  uint16_t h;
  std::memcpy(&h, tiles.data[t][row] + 2 * i, 2);
  return flush(bf16_to_f32(h));
}

inline void dp(int c, int a, int b) {
  const int pairs = tiles.colsb[a] / 4, cols = tiles.colsb[c] / 4;
  for (int m = 0; m < tiles.rows[c]; ++m) {
    float acc[16];
    std::memcpy(acc, tiles.data[c][m], 64);
    for (int k = 0; k < pairs; ++k) {
      const float a0 = bf16_at(a, m, 2 * k), a1 = bf16_at(a, m, 2 * k + 1);
      for (int n = 0; n < cols; ++n) {
        acc[n] = flush(acc[n] + a0 * bf16_at(b, k, 2 * n));
        acc[n] = flush(acc[n] + a1 * bf16_at(b, k, 2 * n + 1));
      }
    }
    std::memcpy(tiles.data[c][m], acc, 64);
  }
}

}  // namespace model
}  // namespace
}  // namespace shardcore::gemm

#define SC_TILE_CONFIG(cfg) ::shardcore::gemm::model::config(cfg)
#define SC_TILE_ZERO(t) ::shardcore::gemm::model::zero(t)
#define SC_TILE_LOAD(t, p, stride) ::shardcore::gemm::model::load(t, p, stride)
#define SC_TILE_STORE(t, p, stride) ::shardcore::gemm::model::store(t, p, stride)
#define SC_TILE_DP(c, a, b) ::shardcore::gemm::model::dp(c, a, b)
#define SC_TILE_RELEASE() ((void)0)
#include "gemm/amx_loops.h"

namespace shardcore::gemm {
namespace {

// The single-row path of the amx family (vdpbf16ps there) on the same panels: k-pairs summed
// into one float32 accumulator per column.
struct RowKernel {
  static constexpr int MR = 1, NR = amx::NR, KSTEP = 2, KPAD = 32;
  static constexpr bool kRoundX = true;
  using XP = uint32_t;
  using WT = uint16_t;

  template <int ROWS>
  static void kernel(int64_t ksteps, const uint32_t* xp, const uint16_t* wp, float* c,
                     int64_t ldc, int ncols, const float* bias, bool first) {
    (void)ldc;
    float acc[NR];
    for (int j = 0; j < NR; ++j)
      acc[j] = first ? (bias && j < ncols ? bias[j] : 0.0f) : (j < ncols ? c[j] : 0.0f);
    for (int64_t s = 0; s < ksteps; ++s) {
      const float x0 = bf16_to_f32(static_cast<uint16_t>(xp[s])),
                  x1 = bf16_to_f32(static_cast<uint16_t>(xp[s] >> 16));
      for (int j = 0; j < NR; ++j) {
        acc[j] += x0 * bf16_to_f32(wp[s * 2 * NR + 2 * j]);
        acc[j] += x1 * bf16_to_f32(wp[s * 2 * NR + 2 * j + 1]);
      }
    }
    for (int j = 0; j < ncols; ++j) c[j] = acc[j];
  }
};

void run_bf16(const RunArgs& a, int64_t rb, int64_t re, int64_t pb, int64_t pe, void* scratch) {
  if (a.M < kAmxMinRows) {
    driver::run<RowKernel>(a, rb, re, pb, pe, scratch, kTilesAmxRowBF16);
  } else {
    amx::run(a, rb, re, pb, pe, scratch, amx::tiles());
  }
}

size_t scratch_bf16(int64_t rows, int64_t K) {
  const size_t row = driver::scratch_bytes<RowKernel>(rows, K, kTilesAmxRowBF16);
  const size_t tiles = amx::scratch_bytes(rows, K, amx::tiles());
  return row > tiles ? row : tiles;
}

constexpr Impl kBF16{"amx-reference",
                     DType::bf16,
                     kTilesAmxBF16,
                     &driver::packed_bytes<RowKernel>,
                     &driver::pack_w<RowKernel>,
                     &scratch_bf16,
                     &run_bf16};

}  // namespace

const Family& amx_reference_family() {
  static const Family family{"amx-reference", generic_family().f32, &kBF16,
                            generic_family().multiply_add_loop};
  return family;
}

}  // namespace shardcore::gemm
