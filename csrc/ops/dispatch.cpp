// Choice of the op kernel table: once, by CPU detection and SHARDCORE_OPS_KERNEL.
#include <cstdlib>
#include <stdexcept>

#include "ops/ops.h"

namespace shardcore::ops {
namespace {

std::vector<const Kernels*> detect() {
  std::vector<const Kernels*> out;
#if defined(SHARDCORE_X86)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) out.push_back(&avx512bf16_kernels());
  if (avx512) out.push_back(&avx512_kernels());
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    out.push_back(&avx2_kernels());
#endif
  out.push_back(&generic_kernels());
  return out;
}

const Kernels* find(const std::string& name) {
  for (const Kernels* k : available())
    if (name == k->name) return k;
  return nullptr;
}

std::string names() {
  std::string s;
  for (const Kernels* k : available()) s += std::string(s.empty() ? "" : ", ") + k->name;
  return s;
}

}  // namespace

const std::vector<const Kernels*>& available() {
  static const std::vector<const Kernels*> tables = detect();
  return tables;
}

const Kernels& by_name(const std::string& name) {
  if (name.empty() || name == "auto") return selected();
  if (const Kernels* k = find(name)) return *k;
  if (name == "avx512bf16" || name == "avx512" || name == "avx2")
    throw std::invalid_argument("op kernels '" + name + "' are not supported by this CPU " +
                                "(available: " + names() + ")");
  throw std::invalid_argument("unknown op kernels '" + name +
                              "' (expected auto, avx512bf16, avx512, avx2 or generic; available "
                              "here: " + names() + ")");
}

const Kernels& selected() {
  // A bad SHARDCORE_OPS_KERNEL is reported at every use, not only the first.
  static const std::string want = [] {
    const char* env = std::getenv("SHARDCORE_OPS_KERNEL");
    return std::string(env ? env : "");
  }();
  if (want.empty() || want == "auto") return *available().front();
  try {
    return by_name(want);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("SHARDCORE_OPS_KERNEL: ") + e.what());
  }
}

}  // namespace shardcore::ops
