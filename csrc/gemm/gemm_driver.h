// The BLIS-style loops around a register micro-kernel, written once and instantiated by every ISA
// translation unit with its own micro-kernel (so that the loops are compiled with that unit's
// flags and the kernel inlines). Contains no intrinsics.
//
// A micro-kernel type UK provides:
//   MR, NR        register tile (see tiles.h)
//   KSTEP         k values consumed per packed step (1; 2 for bf16 dot-product kernels)
//   KPAD          K is zero-padded to a multiple of KPAD in packed W (KSTEP, or 32 where the
//                 panels are shared with the AMX kernel, whose steps are 32 deep)
//   XP, WT        element types of packed X (float, or uint32 = a bf16 k-pair) and packed W
//   kRoundX       X is rounded to bfloat16 when packed (every bf16-weight kernel, so that they all
//                 compute the same products: both operands bf16, products exact in float32)
//   kernel<ROWS>  the micro-kernel for a panel of ROWS <= MR rows, contract in each ISA unit.
//
// Packed W: panel p holds columns [p*NR, p*NR+NR) over the whole (padded) K, contiguous:
//   KSTEP 1: element (k, j) at p*Kp*NR + k*NR + j
//   KSTEP 2: element (k, j) at p*Kp*NR + (k/2)*2*NR + 2*j + (k%2)   (k-pairs per column)
// (Kp = K rounded up to KPAD), so the KC x NR sliver of a k-block starting at pc begins at
// p*Kp*NR + pc*NR, and the whole
// matrix is one stream in (panel, k) order — the order the small-M loop reads it.
//
// Everything here has internal linkage (anonymous namespace) and uses no standard-library
// function templates: each ISA unit gets its own copy compiled with its flags, and no copy can be
// merged with another unit's (the linker keeps one copy of a shared inline function, possibly the
// AVX-512 one, for every caller).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "gemm/gemm.h"

namespace shardcore::gemm::driver {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }


inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t ceil_div(int64_t v, int64_t m) { return (v + m - 1) / m; }

// Tuning hook for blocking sweeps on a new CPU: the environment variable `var` = "KC,MC,NC"
// replaces those three of `t` (read once per kernel, at its first call; MR/NR are compiled in).
// Values that are not positive multiples of `multiple` leave `t` as it is. kernel_info() still
// reports the table's values. Variables: SHARDCORE_TILES_F32 (the FMA kernels' float32 weights),
// SHARDCORE_TILES_AMX (the AMX tile loops).
inline Tiles tiles_override(const char* var, Tiles t, int multiple) {
  const char* v = std::getenv(var);
  long kc = 0, mc = 0, nc = 0;
  if (v && std::sscanf(v, "%ld,%ld,%ld", &kc, &mc, &nc) == 3 && kc > 0 && mc > 0 && nc > 0 &&
      kc % multiple == 0 && mc % multiple == 0 && nc % t.nr == 0) {
    t.kc = static_cast<int>(kc);
    t.mc = static_cast<int>(mc);
    t.nc = static_cast<int>(nc);
  }
  return t;
}

template <class UK>
size_t packed_bytes(int64_t K, int64_t N) {
  return static_cast<size_t>(ceil_div(N, UK::NR) * round_up(K, UK::KPAD) * UK::NR) *
         sizeof(typename UK::WT);
}

template <class UK>
void pack_w(const void* src_v, int64_t K, int64_t N, int64_t sk, int64_t sn, void* dst_v) {
  using WT = typename UK::WT;
  const WT* src = static_cast<const WT*>(src_v);
  WT* dst = static_cast<WT*>(dst_v);
  constexpr int NR = UK::NR;
  static_assert(UK::KPAD % UK::KSTEP == 0);
  const int64_t Kp = round_up(K, UK::KPAD);
  const int64_t panels = ceil_div(N, NR);
  for (int64_t p = 0; p < panels; ++p) {
    WT* panel = dst + p * Kp * NR;
    for (int64_t k = 0; k < Kp; ++k) {
      for (int j = 0; j < NR; ++j) {
        const int64_t n = p * NR + j;
        const WT v = (k < K && n < N) ? src[k * sk + n * sn] : WT(0);
        if constexpr (UK::KSTEP == 1) {
          panel[k * NR + j] = v;
        } else {
          panel[(k / 2) * 2 * NR + 2 * j + (k % 2)] = v;
        }
      }
    }
  }
}

// X[row, k] as the float the kernel multiplies (rounded to bf16 for bf16-weight kernels).
template <bool kRoundX>
inline float x_value(const RunArgs& a, int64_t row, int64_t k) {
  if (a.x_dtype == DType::bf16) return bf16_to_f32(static_cast<const uint16_t*>(a.x)[row * a.K + k]);
  const float v = static_cast<const float*>(a.x)[row * a.K + k];
  return kRoundX ? bf16_to_f32(f32_to_bf16(v)) : v;
}

inline uint16_t x_bf16(const RunArgs& a, int64_t row, int64_t k) {
  if (k >= a.K) return 0;
  if (a.x_dtype == DType::bf16) return static_cast<const uint16_t*>(a.x)[row * a.K + k];
  return f32_to_bf16(static_cast<const float*>(a.x)[row * a.K + k]);
}

// Packs rows [r0, r0+rows) x k [pc, pc+kc) with the rows of one panel interleaved per k step.
template <class UK>
void pack_x_panel(const RunArgs& a, int64_t r0, int rows, int64_t pc, int64_t kc,
                  typename UK::XP* dst) {
  for (int r = 0; r < rows; ++r) {
    if constexpr (UK::KSTEP == 1) {
      for (int64_t k = 0; k < kc; ++k) dst[k * rows + r] = x_value<UK::kRoundX>(a, r0 + r, pc + k);
    } else {
      for (int64_t s = 0; s < kc / 2; ++s) {
        const uint32_t lo = x_bf16(a, r0 + r, pc + 2 * s);
        const uint32_t hi = x_bf16(a, r0 + r, pc + 2 * s + 1);
        dst[s * rows + r] = lo | (hi << 16);
      }
    }
  }
}

template <class UK>
using KernelFn = void (*)(int64_t ksteps, const typename UK::XP* xp, const typename UK::WT* wp,
                          float* c, int64_t ldc, int ncols, const float* bias, bool first);

template <class UK>
struct KernelTable {
  KernelFn<UK> fn[UK::MR];
};

template <class UK, size_t... I>
constexpr KernelTable<UK> kernel_table(std::index_sequence<I...>) {
  return {{&UK::template kernel<static_cast<int>(I) + 1>...}};
}

// Splits `rows` into ceil(rows / MR) panels whose sizes differ by at most one, so that an edge
// never runs a 1-row kernel beside full ones (M = 16 on MR = 12 becomes 8 + 8, not 12 + 4).
inline int panel_rows(int64_t rows, int mr, int64_t i) {
  const int64_t n = ceil_div(rows, mr);
  return static_cast<int>(rows / n + (i < rows % n ? 1 : 0));
}

// Loops, outermost first: jc (NC columns), pc (KC deep), ic (MC rows, X packed here),
// jr (NR-column panels of W), ir (row panels of X) -> micro-kernel.
// Bytes of packed-X scratch run() needs for `rows` rows (the caller allocates it, 64-aligned).
template <class UK>
size_t scratch_bytes(int64_t rows, int64_t K, const Tiles& t) {
  const int64_t Kp = round_up(K, UK::KPAD);
  const bool small = rows <= kSmallM;
  const int64_t KC = small ? Kp : min64(t.kc, Kp);
  const int64_t MC = small ? rows : min64(t.mc, rows);
  return sizeof(typename UK::XP) * static_cast<size_t>(MC * (KC / UK::KSTEP));
}

template <class UK>
void run(const RunArgs& a, int64_t row_begin, int64_t row_end, int64_t panel_begin,
         int64_t panel_end, void* scratch, const Tiles& t) {
  using XP = typename UK::XP;
  using WT = typename UK::WT;
  constexpr int NR = UK::NR;
  static constexpr auto kernels = kernel_table<UK>(std::make_index_sequence<UK::MR>{});
  const int64_t rows_total = row_end - row_begin;
  if (rows_total <= 0 || panel_end <= panel_begin) return;
  const int64_t Kp = round_up(a.K, UK::KPAD);
  // Small M: one k-block and one row block, so every panel of W is read once, in memory order.
  const bool small = rows_total <= kSmallM;
  const int64_t KC = small ? Kp : t.kc;
  const int64_t MC = small ? rows_total : t.mc;
  const int64_t NCp = max64(1, t.nc / NR);
  XP* const xbuf = static_cast<XP*>(scratch);
  const WT* w = static_cast<const WT*>(a.w);

  for (int64_t jc = panel_begin; jc < panel_end; jc += NCp) {
    const int64_t jc_end = min64(panel_end, jc + NCp);
    for (int64_t pc = 0; pc < Kp; pc += KC) {
      const int64_t kc = min64(KC, Kp - pc);
      const int64_t ksteps = kc / UK::KSTEP;
      for (int64_t ic = row_begin; ic < row_end; ic += MC) {
        const int64_t mc = min64(MC, row_end - ic);
        const int64_t npanels = ceil_div(mc, UK::MR);
        int64_t r = ic;
        XP* xp = xbuf;
        for (int64_t i = 0; i < npanels; ++i) {
          const int rows = panel_rows(mc, UK::MR, i);
          pack_x_panel<UK>(a, r, rows, pc, kc, xp);
          r += rows;
          xp += rows * ksteps;
        }
        for (int64_t p = jc; p < jc_end; ++p) {
          const WT* wsl = w + p * Kp * NR + pc * NR;
          const int ncols = static_cast<int>(min64(NR, a.N - p * NR));
          const float* bias = a.bias ? a.bias + p * NR : nullptr;
          r = ic;
          xp = xbuf;
          for (int64_t i = 0; i < npanels; ++i) {
            const int rows = panel_rows(mc, UK::MR, i);
            kernels.fn[rows - 1](ksteps, xp, wsl, a.c + r * a.ldc + p * NR, a.ldc, ncols, bias,
                              pc == 0);
            r += rows;
            xp += rows * ksteps;
          }
        }
      }
    }
  }
}

// The Impl entries for one micro-kernel and its row of the tile table.
template <class UK, const Tiles& T>
struct ImplOf {
  static const Tiles& tiles() {
    static const Tiles t = sizeof(typename UK::WT) == 4 && !UK::kRoundX
                               ? tiles_override("SHARDCORE_TILES_F32", T, UK::KSTEP)
                               : T;
    return t;
  }
  static void run_impl(const RunArgs& a, int64_t rb, int64_t re, int64_t pb, int64_t pe,
                       void* scratch) {
    run<UK>(a, rb, re, pb, pe, scratch, tiles());
  }
  static size_t scratch_impl(int64_t rows, int64_t K) {
    return scratch_bytes<UK>(rows, K, tiles());
  }
  static constexpr Impl make(const char* name, DType w_dtype) {
    return Impl{name, w_dtype, T, &packed_bytes<UK>, &pack_w<UK>, &scratch_impl, &run_impl};
  }
};

}  // namespace
}  // namespace shardcore::gemm::driver
