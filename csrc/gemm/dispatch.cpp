#include "gemm/dispatch.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <thread>

namespace shardcore::gemm {
namespace {

std::vector<const Family*> detect() {
  std::vector<const Family*> out;
#if defined(SHARDCORE_X86)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) out.push_back(&avx512bf16_family());
  if (avx512) out.push_back(&avx512_family());
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    out.push_back(&avx2_family());
#endif
  out.push_back(&generic_family());
  return out;
}

std::vector<std::string> all_names() {
  return {"avx512bf16", "avx512", "avx2", "generic"};
}

struct Selection {
  const Family* family = nullptr;
  std::string error;
  std::string reason;
};

// Multiply-add rate of a family's instruction for dtype, best of three short runs (~1 ms each).
double quick_rate(const Family& f, DType dtype) {
  double best = 0;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const double flops = f.multiply_add_loop(dtype, 100'000);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, flops / s);
  }
  return best;
}

Selection select() {
  Selection s;
  const char* env = std::getenv("SHARDCORE_KERNEL");
  const std::string want = env ? env : "";
  if (want.empty() || want == "auto") {
    s.family = available_families().front();
    s.reason = "best family this CPU supports";
#if defined(SHARDCORE_X86)
    if (std::string(s.family->name) == "avx512bf16") {
      // vdpbf16ps does twice the FMA's flops per instruction, but its throughput differs by core:
      // on Zen4 it runs at the FMA's rate (2x the flops), on Sapphire Rapids at half of it (1x
      // the flops of one FMA port, 0.5x of two), where widening bf16 to float32 for the FMA
      // kernel is faster (measured 0.60x vs 0.93x of our float32 GEMM there). So measure.
      const double dot = quick_rate(*s.family, DType::bf16);
      const double fma = quick_rate(*s.family, DType::f32);
      const double ratio = dot / fma;
      char buf[160];
      if (ratio < 1.25) {
        s.family = &avx512_family();
        std::snprintf(buf, sizeof buf,
                      "vdpbf16ps measured %.2fx the FMA's flop rate (< 1.25x): bf16 widened to "
                      "float32 instead", ratio);
      } else {
        std::snprintf(buf, sizeof buf, "vdpbf16ps measured %.2fx the FMA's flop rate", ratio);
      }
      s.reason = buf;
    }
#endif
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
  const auto names = all_names();
  std::string avail;
  for (const Family* f : available_families()) avail += std::string(avail.empty() ? "" : ", ") + f->name;
  if (std::find(names.begin(), names.end(), name) != names.end())
    throw std::invalid_argument("kernel '" + name + "' is not supported by this CPU (available: " +
                                avail + ")");
  throw std::invalid_argument("unknown kernel '" + name +
                              "' (expected auto, avx512bf16, avx512, avx2 or generic; available "
                              "here: " + avail + ")");
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
}  // namespace

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

}  // namespace shardcore::gemm
