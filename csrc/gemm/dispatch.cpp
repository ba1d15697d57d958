#include "gemm/dispatch.h"

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <thread>

#if defined(SHARDCORE_X86)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace shardcore::gemm {
namespace {

// 64-byte-aligned scratch for one thread's packed X.
struct Scratch {
  std::vector<unsigned char> bytes;
  void* get(size_t n) {
    bytes.resize(n + 64);
    const auto addr = reinterpret_cast<uintptr_t>(bytes.data());
    return bytes.data() + ((64 - addr % 64) % 64);
  }
};

// Whether this process may run AMX-BF16 tile code, and if not why.
struct AmxStatus {
  bool cpu = false;     // the CPU reports AMX-TILE and AMX-BF16
  bool usable = false;  // ... and this process may use them
  std::string why;
};

AmxStatus probe_amx() {
#if defined(SHARDCORE_X86) && defined(SHARDCORE_AMX)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return {false, false, "no CPUID leaf 7"};
  if (!(edx & (1u << 24)) || !(edx & (1u << 22))) return {false, false, "the CPU has no AMX-BF16"};
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27)))
    return {true, false, "the OS has not enabled XSAVE"};
  uint32_t xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  (void)xcr0_hi;
  if ((xcr0_lo & (3u << 17)) != (3u << 17))  // XTILECFG, XTILEDATA
    return {true, false, "the OS does not enable the AMX tile state (XCR0)"};
#if defined(__linux__)
  // Linux (5.16+) hands out the 8 KiB tile data state only on request, once per process, for
  // every thread of it; without it the first tile instruction raises SIGILL.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    return {true, false, std::string("Linux refused tile data (arch_prctl(ARCH_REQ_XCOMP_PERM): ") +
                       std::strerror(errno) + ")"};
  return {true, true, "AMX-BF16 tile data granted"};
#else
  return {true, false, "tile data permission is requested only on Linux"};
#endif
#elif defined(SHARDCORE_X86)
  return {false, false, "built without AMX support (the compiler lacks -mamx-bf16)"};
#else
  return {false, false, "not an x86-64 build"};
#endif
}

// The AMX status after the self-check: tile code that computes wrong products is not offered.
AmxStatus checked_amx() {
  AmxStatus s = probe_amx();
#if defined(SHARDCORE_X86) && defined(SHARDCORE_AMX)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx512bf16");
  if (s.usable && !avx512) {
    s.usable = false;
    s.why = "the CPU has AMX-BF16 but not all of AVX-512F/BW/VL/DQ and AVX512_BF16";
  }
  if (s.usable) {
    const std::string bad = check_exact_products(*amx_family().bf16);
    if (!bad.empty()) s.usable = false, s.why = "self-check failed: " + bad;
  }
#endif
  return s;
}

const AmxStatus& amx_status() {
  static const AmxStatus s = checked_amx();
  return s;
}

std::vector<const Family*> detect() {
  std::vector<const Family*> out;
#if defined(SHARDCORE_X86)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma");
  const bool avx512bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
#if defined(SHARDCORE_AMX)
  if (amx_status().usable) out.push_back(&amx_family());
#endif
  if (avx512bf16) out.push_back(&avx512bf16_family());
  if (avx512) out.push_back(&avx512_family());
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    out.push_back(&avx2_family());
#endif
  out.push_back(&generic_family());
  return out;
}

std::vector<std::string> all_names() {
  return {"amx", "avx512bf16", "avx512", "avx2", "generic"};
}

constexpr const char* kReferenceName = "amx-reference";

struct Selection {
  const Family* family = nullptr;
  std::string error;
  std::string reason;
};

#if defined(SHARDCORE_X86)
// Best seconds of a few single-thread runs of a bf16 Impl on a product that sits in L2
// (48 x 512 x 256: the blocked, compute-bound loop; small M is bound by W's bytes either way).
double time_bf16_gemm(const Impl& impl) {
  constexpr int64_t M = 48, K = 512, N = 256;
  std::vector<uint16_t> w(static_cast<size_t>(K * N));
  std::vector<float> x(static_cast<size_t>(M * K)), c(static_cast<size_t>(M * N));
  uint32_t state = 12345;
  auto next = [&state] {  // values in [-1, 1)
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(state >> 8) / 8388608.0f - 1.0f;
  };
  for (auto& v : w) v = f32_to_bf16(next());
  for (auto& v : x) v = next();
  Scratch packed, scratch;
  void* pw = packed.get(impl.packed_bytes(K, N));
  impl.pack(w.data(), K, N, N, 1, pw);
  void* sc = scratch.get(impl.scratch_bytes(M, K));
  const RunArgs a{x.data(), DType::f32, M, K, N, pw, nullptr, c.data(), N};
  const int64_t panels = (N + impl.tiles.nr - 1) / impl.tiles.nr;
  impl.run(a, 0, M, 0, panels, sc);  // warm-up: caches, page faults
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    impl.run(a, 0, M, 0, panels, sc);
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
#endif

Selection select() {
  Selection s;
  const char* env = std::getenv("SHARDCORE_KERNEL");
  const std::string want = env ? env : "";
  if (want.empty() || want == "auto") {
    s.family = available_families().front();
    s.reason = "best family this CPU supports";
    const std::string best = s.family->name;
    if (best == "amx") {
      s.reason = "AMX-BF16 tiles (tdpbf16ps) for bfloat16 from 2 rows, vdpbf16ps for one row, "
                 "AVX-512 FMA for float32";
    }
#if defined(SHARDCORE_X86)
    if (best == "avx512bf16") {
      // vdpbf16ps does twice the FMA's flops per instruction, but its throughput differs by core:
      // on Zen4 it runs at the FMA's instruction rate, on Sapphire Rapids at a quarter of it
      // (0.47-0.51x the FMA's flops in multiply_add_loop, whose 24 accumulators are independent
      // and stay in registers: a throughput, not a dependency chain). What counts is the GEMM,
      // widening included (Zen4 ~1.7x, SPR ~0.65x), so time both bf16 kernels on the same
      // product (about 2 ms) and keep the faster.
      const double dot = time_bf16_gemm(*avx512bf16_family().bf16);
      const double fma = time_bf16_gemm(*avx512_family().bf16);
      const double speed = fma / dot;
      char buf[200];
      if (speed < 1.1) {
        s.family = &avx512_family();
        std::snprintf(buf, sizeof buf,
                      "the vdpbf16ps GEMM measured %.2fx the speed of the widening FMA GEMM "
                      "(< 1.1x): bf16 widened to float32 instead", speed);
      } else {
        std::snprintf(buf, sizeof buf,
                      "the vdpbf16ps GEMM measured %.2fx the speed of the widening FMA GEMM",
                      speed);
      }
      s.reason = buf;
    }
#endif
    if (best != "amx" && amx_status().cpu) s.reason += "; AMX not used: " + amx_status().why;
    return s;
  }
  s.reason = "SHARDCORE_KERNEL=" + want;
  try {
    s.family = &family_by_name(want);
  } catch (const std::invalid_argument& e) {
    s.error = std::string("SHARDCORE_KERNEL: ") + e.what();
  }
  return s;
}

}  // namespace

const std::vector<const Family*>& available_families() {
  static const std::vector<const Family*> families = detect();
  return families;
}

const Family& family_by_name(const std::string& name) {
  for (const Family* f : available_families())
    if (name == f->name) return *f;
  if (name == kReferenceName) return amx_reference_family();
  const auto names = all_names();
  std::string avail;
  for (const Family* f : available_families()) avail += std::string(avail.empty() ? "" : ", ") + f->name;
  if (std::find(names.begin(), names.end(), name) != names.end())
    throw std::invalid_argument("kernel '" + name + "' is not supported by this CPU (available: " +
                                avail + (name == "amx" ? "; AMX: " + amx_status().why : "") + ")");
  throw std::invalid_argument("unknown kernel '" + name +
                              "' (expected auto, amx, avx512bf16, avx512, avx2, generic or "
                              "amx-reference; available here: " + avail + ")");
}

const Selection& selection() {
  static const Selection s = select();
  return s;
}

const Family& selected_family() {
  const Selection& s = selection();
  if (!s.family) throw std::invalid_argument(s.error);
  return *s.family;
}

std::string selection_reason() {
  selected_family();
  return selection().reason;
}

const Impl& impl_for(const Family& f, DType w_dtype) {
  return w_dtype == DType::bf16 ? *f.bf16 : *f.f32;
}

double peak_gflops(const Family& f, DType dtype) {
  // Many short runs (a few ms each): on a shared machine the best one is the least disturbed.
  double best = 0;
  for (int i = 0; i < 30; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const double flops = f.multiply_add_loop(dtype, 500'000);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, flops / s * 1e-9);
  }
  return best;
}


void gemm(const Impl& impl, const void* packed_w, int64_t K, int64_t N, const void* x,
          DType x_dtype, int64_t M, const float* bias, void* out, DType out_dtype, int threads) {
  if (M <= 0 || N <= 0) return;
  std::vector<float> tmp;
  float* c = static_cast<float*>(out);
  if (out_dtype == DType::bf16) {
    tmp.resize(static_cast<size_t>(M * N));
    c = tmp.data();
  }
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) c[i * N + j] = bias ? bias[j] : 0.0f;
  } else {
    const RunArgs a{x, x_dtype, M, K, N, packed_w, bias, c, N};
    const int64_t panels = (N + impl.tiles.nr - 1) / impl.tiles.nr;
    const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, std::max(panels, M)));
    if (t == 1) {
      Scratch scratch;
      impl.run(a, 0, M, 0, panels, scratch.get(impl.scratch_bytes(M, K)));
    } else {
      // Split the panels when there are enough of them (each thread streams its own columns of
      // W once), else the rows.
      const bool by_panels = panels >= t;
      const int64_t total = by_panels ? panels : M;
      auto range = [&](int64_t i) { return total * i / t; };
      auto work = [&](int64_t i) {
        Scratch scratch;
        if (by_panels) {
          impl.run(a, 0, M, range(i), range(i + 1), scratch.get(impl.scratch_bytes(M, K)));
        } else {
          const int64_t rb = range(i), re = range(i + 1);
          impl.run(a, rb, re, 0, panels, scratch.get(impl.scratch_bytes(re - rb, K)));
        }
      };
      // A failure in a worker (out of memory for its scratch) is re-raised here, after the join.
      std::vector<std::exception_ptr> errors(static_cast<size_t>(t));
      auto guarded = [&](int64_t i) {
        try {
          work(i);
        } catch (...) {
          errors[static_cast<size_t>(i)] = std::current_exception();
        }
      };
      std::vector<std::thread> pool;
      pool.reserve(static_cast<size_t>(t - 1));
      for (int64_t i = 1; i < t; ++i) pool.emplace_back(guarded, i);
      guarded(0);
      for (auto& th : pool) th.join();
      for (auto& e : errors)
        if (e) std::rethrow_exception(e);
    }
  }
  if (out_dtype == DType::bf16) {
    uint16_t* o = static_cast<uint16_t*>(out);
    for (int64_t i = 0; i < M * N; ++i) o[i] = f32_to_bf16(c[i]);
  }
}

std::string check_exact_products(const Impl& impl) {
  constexpr int64_t K = 100, N = 40;
  std::vector<uint16_t> w(static_cast<size_t>(K * N));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < N; ++j)
      w[static_cast<size_t>(k * N + j)] = f32_to_bf16(static_cast<float>((k * 5 + j * 11) % 7 - 3));
  std::vector<float> bias(static_cast<size_t>(N));
  for (int64_t j = 0; j < N; ++j) bias[static_cast<size_t>(j)] = static_cast<float>(j % 5 - 2);
  std::vector<unsigned char> packed(impl.packed_bytes(K, N) + 64);
  void* pw = packed.data() + (64 - reinterpret_cast<uintptr_t>(packed.data()) % 64) % 64;
  impl.pack(w.data(), K, N, N, 1, pw);
  for (const int64_t M : {int64_t{1}, int64_t{4}, int64_t{33}}) {
    std::vector<float> x(static_cast<size_t>(M * K)), c(static_cast<size_t>(M * N));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k)
        x[static_cast<size_t>(i * K + k)] = static_cast<float>((i * 7 + k * 3) % 9 - 4);
    gemm(impl, pw, K, N, x.data(), DType::f32, M, bias.data(), c.data(), DType::f32, 1);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        int64_t want = j % 5 - 2;
        for (int64_t k = 0; k < K; ++k)
          want += ((i * 7 + k * 3) % 9 - 4) * ((k * 5 + j * 11) % 7 - 3);
        const float got = c[static_cast<size_t>(i * N + j)];
        if (got != static_cast<float>(want)) {
          char buf[200];
          std::snprintf(buf, sizeof buf,
                        "%s got %g instead of %lld at M=%lld row %lld column %lld",
                        impl.name, static_cast<double>(got), static_cast<long long>(want),
                        static_cast<long long>(M), static_cast<long long>(i),
                        static_cast<long long>(j));
          return buf;
        }
      }
  }
  return "";
}


}  // namespace shardcore::gemm
