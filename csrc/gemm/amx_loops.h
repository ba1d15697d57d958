// The AMX-BF16 GEMM (tdpbf16ps on tile registers): packing of X, the BLIS-style loops and the
// tile micro-kernel, written once against six tile operations that the including unit defines:
//   SC_TILE_CONFIG(cfg)         load the 64-byte tile configuration (ldtilecfg; zeroes all tiles)
//   SC_TILE_ZERO(t)             tilezero
//   SC_TILE_LOAD(t, p, stride)  tileloadd: rows of colsb bytes from p, p + stride, ... (bytes)
//   SC_TILE_STORE(t, p, stride) tilestored
//   SC_TILE_DP(c, a, b)         tdpbf16ps: C[m][n] += A[m][2k] B[k][2n] + A[m][2k+1] B[k][2n+1]
//   SC_TILE_RELEASE()           tilerelease (back to the init state: no tile data to save)
// and optionally SC_ROUND_TO_BF16(src, n, dst), n floats to bf16 (nearest even; subnormals may
// become zero, as tdpbf16ps reads them as zero anyway), else a scalar loop.
// Tile numbers are literals (the intrinsics paste them into the instruction). gemm_amx.cpp maps
// them to the instructions; gemm_amx_reference.cpp to a portable model of their documented
// semantics, so that these loops, the packing and every edge case are tested on any CPU.
//
// Packed W is the vdpbf16ps kernel's layout (gemm_driver.h, KSTEP 2, NR 32) with K padded to 32:
// element (k, j) of panel p at p*Kp*32 + (k/2)*64 + 2*j + (k%2). A k-pair row is 128 bytes; the
// 16 rows of one 32-deep step are 2 KiB, and the B tile of columns 0-15 (16-31) is the first
// (second) 64 bytes of each row: a tile load of 16 rows at stride 128. So the same PackedWeight
// serves the AMX loops and the single-row vdpbf16ps path.
//
// Tile registers: tmm0/tmm1 C rows 0-15 (columns 0-15 / 16-31), tmm2/tmm3 C rows 16-31, tmm4/tmm5
// X rows 0-15 / 16-31 (32 bf16 of k each), tmm6/tmm7 W columns 0-15 / 16-31 (16 k-pairs each).
#pragma once

#include <cstdint>
#include <cstring>

#include "gemm/gemm_driver.h"

#if !defined(SC_TILE_CONFIG) || !defined(SC_TILE_ZERO) || !defined(SC_TILE_LOAD) || \
    !defined(SC_TILE_STORE) || !defined(SC_TILE_DP) || !defined(SC_TILE_RELEASE)
#error "define the SC_TILE_* operations before including amx_loops.h"
#endif

#if !defined(SC_ROUND_TO_BF16)
#define SC_ROUND_TO_BF16(src, n, dst) \
  for (int64_t i_ = 0; i_ < (n); ++i_) (dst)[i_] = f32_to_bf16((src)[i_])
#endif

namespace shardcore::gemm::amx {
namespace {

using driver::ceil_div;
using driver::max64;
using driver::min64;
using driver::round_up;

constexpr int NR = 32;                          // panel width: two 16-column tiles
constexpr int kTileRows = 16;                   // most rows of a tile
constexpr int kStepK = 32;                      // k per tdpbf16ps (16 pairs, 64 bytes of A row)
constexpr int64_t kPairRow = 2 * NR;            // uint16 per packed k-pair row (128 bytes)
constexpr int64_t kStepW = kStepK / 2 * kPairRow;  // uint16 of W per step (2 KiB)
static_assert(kTilesAmxBF16.nr == NR && kTilesAmxBF16.kc % kStepK == 0 &&
              kTilesAmxBF16.mc % (2 * kTileRows) == 0);

// The ldtilecfg operand (palette 1): bytes 16-31 colsb of tiles 0-7 (uint16 each), 48-55 rows.
struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64);

// C and X tiles get `rows` rows (16, or all of a small M), W tiles 16 k-pairs; all 64 bytes wide.
inline TileConfig config_for(int rows) {
  TileConfig c;
  std::memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = static_cast<uint8_t>(t < 6 ? rows : kTileRows);
    c.colsb[t] = 64;
  }
  return c;
}

// The blocking in use: the table's row, or SHARDCORE_TILES_AMX for a sweep (see tiles_override).
inline const Tiles& tiles() {
  static const Tiles t = driver::tiles_override("SHARDCORE_TILES_AMX", kTilesAmxBF16, kStepK);
  return t;
}

// Packs X rows [r0, r0+rows) x k [pc, pc+kc) as bf16 (rounded to nearest even from float32) in
// the order the tile loads read it: groups of R rows, each group kc/32 tiles of R rows x 32 k
// (64 bytes a row, the tile contiguous: R * 64 bytes), so a tile load reads one contiguous run
// that the L2 streamer follows, not R rows 2*kc bytes apart. k >= K and rows [rows, rows_padded)
// are zero; rows_padded is a multiple of R.
inline void pack_x(const RunArgs& a, int64_t r0, int64_t rows, int64_t rows_padded, int R,
                   int64_t pc, int64_t kc, uint16_t* dst) {
  const int64_t kin = max64(0, min64(kc, a.K - pc));
  const int64_t ksteps = kc / kStepK;
  for (int64_t r = 0; r < rows; ++r) {
    uint16_t* d = dst + (r / R) * ksteps * R * kStepK + (r % R) * kStepK;
    for (int64_t s = 0; s < ksteps; ++s, d += R * kStepK) {
      const int64_t n = max64(0, min64(kStepK, kin - s * kStepK));
      if (a.x_dtype == DType::bf16) {
        std::memcpy(d, static_cast<const uint16_t*>(a.x) + (r0 + r) * a.K + pc + s * kStepK, 2 * n);
      } else {
        SC_ROUND_TO_BF16(static_cast<const float*>(a.x) + (r0 + r) * a.K + pc + s * kStepK, n, d);
      }
      if (n < kStepK) std::memset(d + n, 0, 2 * (kStepK - n));
    }
  }
  for (int64_t r = rows; r < rows_padded; ++r) {
    uint16_t* d = dst + (r / R) * ksteps * R * kStepK + (r % R) * kStepK;
    for (int64_t s = 0; s < ksteps; ++s, d += R * kStepK) std::memset(d, 0, 2 * kStepK);
  }
}

// Cache lines that one block() call prefetches into L2 for the blocks after it, spread over its
// k steps (a few per 4 tile multiplies, so that the line-fill buffers never back up): the C rows
// of the next block (tile loads and stores of C rows ldc apart would otherwise each wait for
// memory) and a share of the next panel's W sliver.
struct Prefetch {
  const float* c = nullptr;  // next block's C, c_rows rows at row stride ldc, 128 bytes a row
  int c_rows = 0;
  const uint16_t* w = nullptr;  // w_lines consecutive 64-byte lines
  int64_t w_lines = 0;

  void line(int64_t i, int64_t ldc) const {
    const char* p = i < 2 * c_rows
                        ? reinterpret_cast<const char*>(c + (i / 2) * ldc) + 64 * (i % 2)
                        : reinterpret_cast<const char*>(w) + 64 * (i - 2 * c_rows);
    __builtin_prefetch(p, 1, 2);
  }
};

// Micro-kernel contract (AMX): one block of C, rows x ncols, 1 <= ncols <= 32, in one or two
// tile rows (TWO: R < rows <= 2R, else rows <= R; R = the configured tile rows):
//   xb: packed X of the block (see pack_x): ksteps tiles of R rows x 32 k, each R * 64 bytes
//       contiguous, and for TWO the next group's ksteps tiles right after (rows past `rows` are
//       zero);
//   wb: the panel's sliver, ksteps steps of 16 k-pair rows (128 bytes each);
//   c:  C at row stride ldc; columns >= ncols and rows >= rows are never read or written;
//   first: C = bias + X*W (bias_rows: 16 copies of the panel's 32 bias values, or nullptr for
//          zero), else C += X*W. The C tiles are loaded, accumulated over k in order and stored,
//          so a k-blocked product sums every element in the same order as one unblocked pass.
//   pf: lines to prefetch for later blocks (never read here).
//   Full blocks move C between memory and tiles directly; edge blocks through a 32 x 32 stage.
template <bool TWO>
void block(int64_t ksteps, const uint16_t* xb, int R, const uint16_t* wb, float* c, int64_t ldc,
           int rows, int ncols, const float* bias_rows, bool first, const Prefetch& pf) {
  alignas(64) float stage[2 * kTileRows * NR];
  const bool full = rows == (TWO ? 2 * R : R) && ncols == NR;
  const int64_t cstride = (full ? ldc : NR) * 4;
  float* const cb = full ? c : stage;
  float* const cb2 = cb + R * (full ? ldc : NR);  // second tile row of C
  if (first && bias_rows) {
    SC_TILE_LOAD(0, bias_rows, NR * 4);
    SC_TILE_LOAD(1, bias_rows + 16, NR * 4);
    if constexpr (TWO) {
      SC_TILE_LOAD(2, bias_rows, NR * 4);
      SC_TILE_LOAD(3, bias_rows + 16, NR * 4);
    }
  } else if (first) {
    SC_TILE_ZERO(0);
    SC_TILE_ZERO(1);
    if constexpr (TWO) {
      SC_TILE_ZERO(2);
      SC_TILE_ZERO(3);
    }
  } else {
    if (!full) {
      std::memset(stage, 0, sizeof stage);
      for (int r = 0; r < rows; ++r) std::memcpy(stage + r * NR, c + r * ldc, 4 * ncols);
    }
    SC_TILE_LOAD(0, cb, cstride);
    SC_TILE_LOAD(1, cb + 16, cstride);
    if constexpr (TWO) {
      SC_TILE_LOAD(2, cb2, cstride);
      SC_TILE_LOAD(3, cb2 + 16, cstride);
    }
  }
  const int64_t tile = static_cast<int64_t>(R) * kStepK;  // uint16 per packed X tile
  const uint16_t* xb2 = xb + ksteps * tile;
  const int64_t pf_lines = 2 * pf.c_rows + pf.w_lines;
  const int64_t pf_step = (pf_lines + ksteps - 1) / ksteps;
  int64_t pf_next = 0;
  for (int64_t s = 0; s < ksteps; ++s) {
    const uint16_t* w = wb + s * kStepW;
    SC_TILE_LOAD(4, xb + s * tile, kStepK * 2);
    SC_TILE_LOAD(6, w, kPairRow * 2);
    SC_TILE_LOAD(7, w + 32, kPairRow * 2);
    SC_TILE_DP(0, 4, 6);
    SC_TILE_DP(1, 4, 7);
    if constexpr (TWO) {
      SC_TILE_LOAD(5, xb2 + s * tile, kStepK * 2);
      SC_TILE_DP(2, 5, 6);
      SC_TILE_DP(3, 5, 7);
    }
    for (const int64_t end = min64(pf_lines, pf_next + pf_step); pf_next < end; ++pf_next)
      pf.line(pf_next, ldc);
  }
  SC_TILE_STORE(0, cb, cstride);
  SC_TILE_STORE(1, cb + 16, cstride);
  if constexpr (TWO) {
    SC_TILE_STORE(2, cb2, cstride);
    SC_TILE_STORE(3, cb2 + 16, cstride);
  }
  if (!full)
    for (int r = 0; r < rows; ++r) std::memcpy(c + r * ldc, stage + r * NR, 4 * ncols);
}

inline int64_t padded_k(int64_t K) { return round_up(K, kStepK); }

// Small M (<= kSmallM rows, the decode GEMMs): one k-block and one row block with tiles of
// exactly M rows, so every panel of W is streamed from memory once, in order. No software
// prefetch of W: the hardware streamer follows this one sequential stream, and prefetching 1-4 KiB
// ahead made the same single-stream GEMV 5-20% slower on Zen 4 (only the next panel's C rows are
// prefetched, see Prefetch).
inline bool small_m(int64_t rows) { return rows <= kSmallM; }

inline size_t scratch_bytes(int64_t rows, int64_t K, const Tiles& t) {
  const int64_t Kp = padded_k(K);
  if (small_m(rows)) return static_cast<size_t>(rows * Kp) * 2;
  return static_cast<size_t>(round_up(min64(t.mc, rows), kTileRows) * min64(t.kc, Kp)) * 2;
}

// Loops, outermost first: jc (NC columns), pc (KC deep), ic (MC rows, X packed here), panels of
// 32 columns, blocks of 32 rows -> block<>. Configures the tiles on entry (tile state belongs to
// the calling thread) and releases them on exit.
inline void run(const RunArgs& a, int64_t row_begin, int64_t row_end, int64_t panel_begin,
                int64_t panel_end, void* scratch, const Tiles& t) {
  const int64_t rows_total = row_end - row_begin;
  if (rows_total <= 0 || panel_end <= panel_begin) return;
  const int64_t Kp = padded_k(a.K);
  const bool small = small_m(rows_total);
  const int R = small ? static_cast<int>(rows_total) : kTileRows;
  const int64_t KC = small ? Kp : t.kc;
  const int64_t MC = small ? rows_total : t.mc;
  const int64_t NCp = max64(1, t.nc / NR);
  uint16_t* const xbuf = static_cast<uint16_t*>(scratch);
  const uint16_t* const w = static_cast<const uint16_t*>(a.w);
  alignas(64) float bias_rows[kTileRows * NR];

  const TileConfig cfg = config_for(R);
  SC_TILE_CONFIG(&cfg);
  for (int64_t jc = panel_begin; jc < panel_end; jc += NCp) {
    const int64_t jc_end = min64(panel_end, jc + NCp);
    for (int64_t pc = 0; pc < Kp; pc += KC) {
      const int64_t kc = min64(KC, Kp - pc);
      const int64_t ksteps = kc / kStepK;
      for (int64_t ic = row_begin; ic < row_end; ic += MC) {
        const int64_t mc = min64(MC, row_end - ic);
        const int64_t mc_padded = small ? mc : round_up(mc, kTileRows);
        pack_x(a, ic, mc, mc_padded, R, pc, kc, xbuf);
        const int64_t nblocks = ceil_div(mc, 2 * R);
        for (int64_t p = jc; p < jc_end; ++p) {
          const uint16_t* wsl = w + p * Kp * NR + pc * NR;
          const int ncols = static_cast<int>(min64(NR, a.N - p * NR));
          const float* brows = nullptr;
          if (pc == 0 && a.bias) {
            for (int j = 0; j < NR; ++j) bias_rows[j] = j < ncols ? a.bias[p * NR + j] : 0.0f;
            for (int r = 1; r < kTileRows; ++r)
              std::memcpy(bias_rows + r * NR, bias_rows, sizeof(float) * NR);
            brows = bias_rows;
          }
          // The next panel's sliver (kc lines of 64 bytes), a share per block of this panel;
          // small M streams W once in order, which the hardware prefetcher follows alone.
          const bool next_panel = p + 1 < jc_end;
          const int64_t w_share = small || !next_panel ? 0 : ceil_div(kc, nblocks);
          for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t ib = b * 2 * R;
            const int rows = static_cast<int>(min64(2 * R, mc - ib));
            float* cblk = a.c + (ic + ib) * a.ldc + p * NR;
            const uint16_t* xb = xbuf + ib * kc;
            Prefetch pf;
            if (b + 1 < nblocks) {
              pf.c = cblk + 2 * R * a.ldc;
              pf.c_rows = static_cast<int>(min64(2 * R, mc - ib - 2 * R));
            } else if (next_panel) {
              pf.c = a.c + ic * a.ldc + (p + 1) * NR;
              pf.c_rows = static_cast<int>(min64(2 * R, mc));
            }
            if (w_share > 0) {
              pf.w = wsl + Kp * NR + b * w_share * 32;
              pf.w_lines = max64(0, min64(w_share, kc - b * w_share));
            }
            if (rows > R) {
              block<true>(ksteps, xb, R, wsl, cblk, a.ldc, rows, ncols, brows, pc == 0, pf);
            } else {
              block<false>(ksteps, xb, R, wsl, cblk, a.ldc, rows, ncols, brows, pc == 0, pf);
            }
          }
        }
      }
    }
  }
  SC_TILE_RELEASE();
}

}  // namespace
}  // namespace shardcore::gemm::amx
