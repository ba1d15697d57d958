// The one table of GEMM blocking constants (BLIS names), one row per kernel and weight type.
//
// Vocabulary: C[M,N] = X[M,K] * W[K,N]. The micro-kernel keeps an MR x NR block of C in registers;
// the vector dimension is N (a row of C is contiguous), X values are broadcast.
//   NR  columns of W per packed panel = vector registers per C row * lanes.
//   MR  rows of X per micro-kernel call (MR * NR / lanes accumulator registers).
//   KC  depth of one k-block: the W sliver KC x NR is reused by every micro-kernel of an MC block,
//       so it should sit in L1 (32 KiB L1d) or at worst stream from L2 (2 vector loads per 2*MR
//       FMAs is little L2 bandwidth); and C is read and written K/KC times, so a larger KC saves
//       C traffic, which dominates once C (M x N) falls out of L2/L3 (M = 2048 measured 0.7x
//       NumPy at KC = 128 and 1.0-1.1x at KC = 256 on the Zen4 dev machine).
//   MC  rows of X packed per k-block: the MC x KC packed block is reused for every panel of W, so
//       it should sit in L2 (about half of a 512 KiB Zen3 L2; Zen4/SPR have 1-2 MiB).
//   NC  columns of W per outer block: the KC x NC block of W is re-read for every MC block, so it
//       should fit in L3 (KC * NC elements is 2-4 MiB here).
// Small M (M <= kSmallM, decode) ignores KC/MC: each panel is streamed once over the whole K in
// memory order (see gemm_driver.h), so the loop is bound by the bytes of W.
#pragma once

namespace shardcore::gemm {

struct Tiles {
  int mr, nr, kc, mc, nc;
};

// Rows of X at or below which the small-M (weight-streaming) loop order is used.
constexpr int kSmallM = 16;

// clang-format off
//                                   MR  NR   KC   MC    NC     reason
// generic: 4 x 16 = 64 floats of accumulators (16 SSE registers or spilled on anything smaller);
//   KC*NR*4 = 16 KiB sliver in L1, MC*KC*4 = 128 KiB block in L2.
constexpr Tiles kTilesGenericF32  {  4, 16, 256, 128, 4096 };
//   bf16 weights are widened in the kernel; the sliver is 8 KiB so KC could grow, kept equal.
constexpr Tiles kTilesGenericBF16 {  4, 16, 256, 128, 4096 };
// avx2: 6 rows x 2 ymm = 12 accumulators + 2 W vectors + 1 broadcast = 15 of 16 ymm registers;
//   sliver 256*16*4 = 16 KiB (L1 half); block 240*256*4 = 240 KiB (L2 half on Zen3). KC 384 or
//   512 (with MC 144-240) measured 0.82-0.92x of KC 256 against OpenBLAS-Haswell at M >= 512.
constexpr Tiles kTilesAvx2F32     {  6, 16, 256, 240, 4096 };
//   bf16 sliver is 8 KiB at KC=256; widening costs 2 ops per W vector, amortised over 6 FMAs.
constexpr Tiles kTilesAvx2BF16    {  6, 16, 256, 240, 4096 };
// avx512: 12 rows x 2 zmm = 24 accumulators + 2 W vectors + 1 broadcast (a load-port
//   vbroadcastss) = 27 of 32 zmm; 24 independent chains cover FMA latency 4 x 2 pipes (x3).
//   sliver 256*32*4 = 32 KiB (L1-sized, partly streamed from L2); block 480*256*4 = 480 KiB
//   (half of Zen4's 1 MiB L2). KC 128 lost 30% at M = 2048 to C traffic (see KC above). On the
//   SPR Xeon (2 MiB L2) KC 192-512, MC 240-960 and NC 3072-12288 all measured 1.04-1.48x the
//   time of this row (SHARDCORE_TILES_F32 sweep, 512x4096x11008 and 2048^3), so it stays.
constexpr Tiles kTilesAvx512F32   { 12, 32, 256, 480, 4096 };
//   bf16 weights widened in the kernel: sliver 256*32*2 = 16 KiB at KC=256.
constexpr Tiles kTilesAvx512BF16  { 12, 32, 256, 480, 4096 };
// avx512bf16 (vdpbf16ps): same register tile; one instruction consumes a k-pair at twice the
//   FMA's flops (Zen4), so C traffic per flop doubles and KC doubles: sliver 512*32*2 = 32 KiB;
//   X block as bf16 pairs, 240*512*2 = 240 KiB (measured ~10% faster than KC 256, MC 480).
//   KC must be even.
constexpr Tiles kTilesAvx512DpBF16{ 12, 32, 512, 240, 4096 };
// amx (tdpbf16ps, bf16 weights; see amx_loops.h): a 32 x 32 block of C in 2 x 2 tiles of 16 x 16
//   floats (4 of the 8 tile registers), X as 2 tiles of 16 rows x 32 k, W as 2 tiles of 16
//   k-pairs x 16 columns (the VNNI layout: a panel's packed k-pair row, 32 columns x 2 bf16 =
//   128 B, is what the two B tiles read). One step is 32 deep, so KC, MC and K's padding are
//   multiples of 32. KC 1024, MC 256, NC 1024 (X block 256*1024*2 = 512 KiB and W block
//   1024*1024*2 = 2 MiB, one 64 KiB sliver per panel streamed from L2 while the next one is
//   prefetched): best of a 9-point sweep on the 16-core SPR Xeon (one thread; 128x4096x4096,
//   512x4096x11008, 2048^3), 0.75x the time of the earlier 512/256/4096 at the geometric mean;
//   KC 256 was 1.18x, KC 2048 lost 2.6x at M = 128 (SHARDCORE_TILES_AMX, gemm_driver.h).
constexpr Tiles kTilesAmxBF16     { 32, 32, 1024, 256, 1024 };
//   The AMX family's single-row bf16 path (see kAmxMinRows): the vdpbf16ps kernel on the same
//   panels (K padded to 32); only its small-M loop runs, so only NR matters.
constexpr Tiles kTilesAmxRowBF16  { 12, 32, 512, 240, 4096 };
// clang-format on

// Rows of X from which bf16 runs on AMX tiles. One row (the decode GEMV) is bound by the bytes of
// W on either path; it streams them through the vdpbf16ps kernel, which needs no tile state and
// wastes no 15/16 of a tile multiply.
constexpr int kAmxMinRows = 2;

}  // namespace shardcore::gemm
