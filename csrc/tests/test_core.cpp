// Test driver for the C++ core without Python: ranks run as threads of one process, each with its
// own shardcore::Communicator on one segment (rank 0 creates it, the others attach), and every
// result is compared with a scalar reference computed here from all ranks' inputs.
//
// Sections: conversions (float16 / bfloat16 against an exact reference), kernel (reduce and
// reduce_many, dispatched and portable, against the reference and each other), copy (copy_bytes
// at every alignment and length up to 300 bytes, streaming or not), collectives on
// 1..8 ranks (every all_reduce algorithm, op and dtype, sizes 0, 1, primes and larger than the
// 256-byte slot; traffic counters against the model; bitwise identical results on every rank),
// errors (mismatch on every rank, timeouts, closed peers, bad arguments), p2p (FIFO order,
// mismatches), and regressions (bugs found here, kept as checks). No framework: CHECK
// records a failure and carries on; the exit status is 1 if anything failed.
//
// Usage: shardcore_core_tests [--quick] [--ranks=N,...] [--shared-mapping|--separate-mappings]
//                             [section...]
// --quick: fewer sizes, world sizes 1, 2, 3, 8 and the full op matrix only for ring and auto
// (what CTest and the sanitizer builds run). --shared-mapping (default under TSan): see the
// mmap wrapper at the end of this file.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/copy.h"
#include "comm/dtypes.h"
#include "comm/reduce.h"
#include "comm/rendezvous.h"
#include "comm/symmetric.h"

using namespace shardcore;

// ---------------------------------------------------------------------------------------------
// Checks

namespace {

std::atomic<long> g_failures{0};
std::atomic<long> g_checks{0};
std::mutex g_print_mu;
thread_local std::string g_ctx;  // what the current thread is testing, printed with a failure
constexpr long kMaxPrinted = 40;

std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string strf(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

void record_failure(const char* file, int line, const std::string& what) {
  long k = ++g_failures;
  if (k > kMaxPrinted) return;
  std::lock_guard<std::mutex> lock(g_print_mu);
  std::fprintf(stderr, "FAIL %s:%d [%s] %s\n", file, line, g_ctx.c_str(), what.c_str());
  if (k == kMaxPrinted) std::fprintf(stderr, "(further failures are counted, not printed)\n");
}

#define CHECK(cond, ...)                                                          \
  do {                                                                            \
    g_checks.fetch_add(1, std::memory_order_relaxed);                             \
    if (!(cond)) record_failure(__FILE__, __LINE__, #cond " " + strf(__VA_ARGS__)); \
  } while (0)

// Runs `body`, which must throw E; `check` then inspects the exception.
template <typename E, typename F>
void expect_throw(const char* file, int line, const char* what, F body,
                  std::function<void(const E&)> check = nullptr) {
  try {
    body();
  } catch (const E& e) {
    if (check) check(e);
    return;
  } catch (const std::exception& e) {
    record_failure(file, line, strf("%s threw the wrong exception: %s", what, e.what()));
    return;
  }
  record_failure(file, line, strf("%s did not throw", what));
}
#define EXPECT_THROW(E, body, ...) \
  expect_throw<E>(__FILE__, __LINE__, #body, [&] { body; }, ##__VA_ARGS__)

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// splitmix64: a tiny, seedable generator; every rank regenerates every rank's input from the seed.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  long double uniform(long double lo, long double hi) {
    return lo + (hi - lo) * (long double)(next() >> 11) / (long double)(1ull << 53);
  }
  int64_t range(int64_t lo, int64_t hi) { return lo + int64_t(next() % uint64_t(hi - lo + 1)); }
};

uint64_t mix(std::initializer_list<uint64_t> parts) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint64_t p : parts) h = (h ^ p) * 0x100000001b3ull + (h >> 29);
  return h;
}

// ---------------------------------------------------------------------------------------------
// Exact reference for binary floating-point formats with `p` stored mantissa bits and `w`
// exponent bits (float16: 10/5, bfloat16: 7/8, float32: 23/8, float64: 52/11). Works on the
// value as an integer significand times a power of two, so it shares nothing with the bit
// tricks of csrc/comm/reduce.h.

uint64_t ref_round(long double x, int p, int w) {
  const uint64_t sign = std::signbit(x) ? uint64_t(1) << (p + w) : 0;
  const uint64_t inf = ((uint64_t(1) << w) - 1) << p;
  if (std::isnan(x)) return sign | inf | (uint64_t(1) << (p - 1));
  if (std::isinf(x)) return sign | inf;
  long double a = std::fabs(x);
  if (a == 0) return sign;
  const int bias = (1 << (w - 1)) - 1, emin = 1 - bias;
  int e;
  long double f = std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)
  // long double has a 64-bit significand on x86-64: M is exact.
  const uint64_t M = uint64_t(std::ldexp(f, 64));
  const int qe = std::max(e - 1, emin) - p;  // exponent of the result's quantum (ulp)
  const int drop = qe - (e - 64);            // low bits of M below the quantum (> 0 here)
  uint64_t N;
  bool up;
  if (drop > 64) {
    N = 0;
    up = false;
  } else if (drop == 64) {
    N = 0;
    up = M > (uint64_t(1) << 63);  // exactly half rounds to even (zero)
  } else {
    N = M >> drop;
    const uint64_t rem = M & ((uint64_t(1) << drop) - 1), half = uint64_t(1) << (drop - 1);
    up = rem > half || (rem == half && (N & 1));
  }
  N += up;
  if (N == 0) return sign;
  int q = qe;
  if (N >> (p + 1)) {  // rounding carried into the next binade
    N >>= 1;
    q += 1;
  }
  if (N >> p) {
    const int64_t biased = q + p + bias;
    if (biased >= (1 << w) - 1) return sign | inf;
    return sign | (uint64_t(biased) << p) | (N - (uint64_t(1) << p));
  }
  return sign | N;  // subnormal
}

long double ref_decode(uint64_t bits, int p, int w) {
  const bool neg = (bits >> (p + w)) & 1;
  const uint64_t ef = (bits >> p) & ((uint64_t(1) << w) - 1);
  const uint64_t mf = bits & ((uint64_t(1) << p) - 1);
  const int bias = (1 << (w - 1)) - 1;
  long double v;
  if (ef == (uint64_t(1) << w) - 1)
    v = mf ? std::numeric_limits<long double>::quiet_NaN() : std::numeric_limits<long double>::infinity();
  else if (ef == 0)
    v = std::ldexp((long double)mf, 1 - bias - p);
  else
    v = std::ldexp((long double)(mf | (uint64_t(1) << p)), int(ef) - bias - p);
  return neg ? -v : v;
}

uint32_t f32_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float f32_from(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// ---------------------------------------------------------------------------------------------
// Element types as the tests see them

struct TypeInfo {
  DType dt;
  const char* name;
  size_t esz;
  int p, w;  // float format (0 for integers)
  bool is_int() const { return p == 0; }
};
const TypeInfo kTypes[] = {
    {DType::kFloat32, "float32", 4, 23, 8},  {DType::kFloat64, "float64", 8, 52, 11},
    {DType::kBFloat16, "bfloat16", 2, 7, 8}, {DType::kFloat16, "float16", 2, 10, 5},
    {DType::kInt32, "int32", 4, 0, 0},       {DType::kInt64, "int64", 8, 0, 0},
};
const RedOp kOps[] = {RedOp::kSum, RedOp::kMax, RedOp::kMin, RedOp::kProd};

void store_bits(const TypeInfo& t, void* p, uint64_t bits) { std::memcpy(p, &bits, t.esz); }  // LE
uint64_t load_bits(const TypeInfo& t, const void* p) {
  uint64_t b = 0;
  std::memcpy(&b, p, t.esz);
  return b;
}
void store_float(const TypeInfo& t, void* p, long double v) { store_bits(t, p, ref_round(v, t.p, t.w)); }
long double load_float(const TypeInfo& t, const void* p) { return ref_decode(load_bits(t, p), t.p, t.w); }
int64_t load_int(const TypeInfo& t, const void* p) {
  uint64_t b = load_bits(t, p);
  return t.esz == 4 ? int64_t(int32_t(uint32_t(b))) : int64_t(b);
}

// Integer reduction with two's-complement wrap-around (what NumPy does), in the type's width.
int64_t int_combine(const TypeInfo& t, RedOp op, int64_t a, int64_t b) {
  const uint64_t mask = t.esz == 4 ? 0xffffffffull : ~0ull;
  uint64_t r;
  switch (op) {
    case RedOp::kSum: r = (uint64_t(a) + uint64_t(b)) & mask; break;
    case RedOp::kProd: r = (uint64_t(a) * uint64_t(b)) & mask; break;
    case RedOp::kMax: return std::max(a, b);
    default: return std::min(a, b);
  }
  return t.esz == 4 ? int64_t(int32_t(uint32_t(r))) : int64_t(r);
}

long double float_combine(RedOp op, long double a, long double b) {
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<long double>::quiet_NaN();
  switch (op) {
    case RedOp::kSum: return a + b;
    case RedOp::kProd: return a * b;
    case RedOp::kMax: return std::max(a, b);
    default: return std::min(a, b);
  }
}

// How inputs are drawn: kExact values make every partial result exactly representable, so the
// result must equal the reference bit for bit whatever the order of reduction; kRandom values
// are compared within a rounding bound; kNaN is kExact with NaNs sprinkled over some ranks.
enum class Mode { kExact, kRandom, kNaN };
const char* mode_name(Mode m) { return m == Mode::kExact ? "exact" : m == Mode::kRandom ? "random" : "nan"; }

std::vector<uint8_t> make_input(const TypeInfo& t, RedOp op, Mode mode, size_t count, int rank,
                                int n, uint64_t seed) {
  std::vector<uint8_t> buf(count * t.esz);
  Rng rng(mix({seed, uint64_t(rank)}));
  static const long double kProdValues[] = {-2, -1, -0.5L, 0.5L, 1, 2};
  for (size_t i = 0; i < count; ++i) {
    void* p = buf.data() + i * t.esz;
    if (t.is_int()) {
      store_bits(t, p, rng.next());  // full range: sums and products wrap
      continue;
    }
    long double v;
    if (mode == Mode::kRandom) {
      v = rng.uniform(-1, 1);
    } else if (op == RedOp::kSum) {
      v = (long double)rng.range(-8, 8);  // |partial sums| <= 64: exact even in bfloat16
    } else if (op == RedOp::kProd) {
      v = kProdValues[rng.range(0, 5)];  // products are powers of two in [2^-8, 2^8]
    } else {
      v = ref_decode(ref_round(rng.uniform(-100, 100), t.p, t.w), t.p, t.w);
      if (v == 0) v = 1;  // +0 and -0 compare equal; which one max returns is unspecified
    }
    store_float(t, p, v);
  }
  if (mode == Mode::kNaN && count) {
    for (size_t i = size_t(rank) % 3; i < count; i += size_t(3 * n + 1))
      store_bits(t, buf.data() + i * t.esz, ref_round(std::numeric_limits<long double>::quiet_NaN(), t.p, t.w));
  }
  return buf;
}

// Checks `out` (count elements) against the reduction of ins[*][offset + i].
void check_reduction(const TypeInfo& t, RedOp op, Mode mode, const std::vector<std::vector<uint8_t>>& ins,
                     size_t offset, size_t count, const uint8_t* out) {
  long bad = 0;
  for (size_t i = 0; i < count && bad < 3; ++i) {
    const size_t at = (offset + i) * t.esz;
    const uint8_t* got = out + i * t.esz;
    if (t.is_int()) {
      int64_t acc = load_int(t, ins[0].data() + at);
      for (size_t r = 1; r < ins.size(); ++r) acc = int_combine(t, op, acc, load_int(t, ins[r].data() + at));
      int64_t g = load_int(t, got);
      if (g != acc) ++bad;
      CHECK(g == acc, "element %zu: got %" PRId64 ", expected %" PRId64, i, g, acc);
      continue;
    }
    long double acc = load_float(t, ins[0].data() + at), mag = std::fabs(acc);
    for (size_t r = 1; r < ins.size(); ++r) {
      long double v = load_float(t, ins[r].data() + at);
      acc = float_combine(op, acc, v);
      mag += std::fabs(v);
    }
    long double g = load_float(t, got);
    bool ok;
    if (std::isnan(acc)) {
      ok = std::isnan(g);
    } else if (mode == Mode::kRandom) {
      // Each of the n-1 combining steps rounds once to the type (unit roundoff 2^-(p+1)).
      long double tol = (long double)ins.size() * (std::ldexp(mag, -t.p) + std::ldexp(1.0L, -24));
      ok = std::fabs(g - acc) <= tol;
    } else {
      ok = load_bits(t, got) == ref_round(acc, t.p, t.w);
    }
    if (!ok) ++bad;
    CHECK(ok, "element %zu: got %.20Lg (bits %" PRIx64 "), expected %.20Lg", i, g, load_bits(t, got), acc);
  }
}

// ---------------------------------------------------------------------------------------------
// Ranks as threads

std::vector<int> g_rank_counts;  // --ranks: the world sizes the collectives run on
double g_timeout_s = 60.0;  // a hang in a test becomes a Timeout instead of a stuck CI job

std::string fresh_name() {
  static std::atomic<int> seq{0};
  return strf("/shardcore-ctest-%d-%d", int(getpid()), ++seq);
}

// A named segment in /dev/shm, or a rank 0 still listening at the communicator's address.
bool segment_exists(const std::string& name) {
  int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd >= 0) close(fd);
  bool retry = false;
  std::string err;
  const UniqueFd listener = connect_to(name, &retry, &err);
  return fd >= 0 || bool(listener);
}

Options small_options() {
  Options o;
  o.slot_bytes = 256;  // the minimum: every size above a few elements is pipelined in chunks
  o.p2p_bytes = 64;  // the minimum: messages stream through many chunks
  o.timeout_s = g_timeout_s;
  return o;
}

// Runs body(comm) on n threads, one communicator each. An unexpected exception is a failure and
// aborts the communicator so the other ranks fail fast instead of waiting for the timeout.
void run_ranks(int n, const Options& opt, const std::function<void(Communicator&)>& body,
               const std::string& what) {
  const std::string name = fresh_name();
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      g_ctx = strf("%s n=%d rank=%d", what.c_str(), n, r);
      try {
        Communicator comm(name, r, n, opt);
        try {
          body(comm);
        } catch (const std::exception& e) {
          record_failure(__FILE__, __LINE__, strf("unexpected exception: %s", e.what()));
          comm.abort(e.what());
        }
      } catch (const std::exception& e) {
        record_failure(__FILE__, __LINE__, strf("cannot connect: %s", e.what()));
      }
    });
  }
  for (auto& t : threads) t.join();
  g_ctx = what;
  CHECK(!segment_exists(name), "segment %s left behind", name.c_str());
}

// A one-shot event between rank threads (the tests that need one rank to stay away).
struct Event {
  std::mutex mu;
  std::condition_variable cv;
  bool set = false;
  void signal() {
    std::lock_guard<std::mutex> l(mu);
    set = true;
    cv.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return set; });
  }
};

// ---------------------------------------------------------------------------------------------
// Traffic model (DESIGN.md): per rank, ring all-reduce sends every block but its successor's
// in the reduce-scatter half and every block but the one two ahead in the all-gather half.

size_t block_len(size_t count, int n, int b) {
  b = ((b % n) + n) % n;
  return count / size_t(n) + (size_t(b) < count % size_t(n) ? 1 : 0);
}

void check_traffic(const Communicator& c, Kind k, uint64_t sent, uint64_t recv) {
  const TrafficCounts& t = c.traffic(k);
  CHECK(t.calls == 1, "%s: %" PRIu64 " calls counted, expected 1", kind_name(k), t.calls);
  CHECK(t.sent == sent, "%s: sent %" PRIu64 " bytes, model says %" PRIu64, kind_name(k), t.sent, sent);
  CHECK(t.recv == recv, "%s: received %" PRIu64 " bytes, model says %" PRIu64, kind_name(k), t.recv, recv);
}

// ---------------------------------------------------------------------------------------------
// Section: conversions

void test_conversions() {
  g_ctx = "conversions";
  // Every float16 pattern widens exactly and narrows back to itself (NaNs stay NaNs of the same
  // sign; their payload is not kept).
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_f32(uint16_t(h));
    long double ref = ref_decode(h, 10, 5);
    bool nan = std::isnan(ref);
    if (nan) {
      CHECK(std::isnan(f) && std::signbit(f) == bool(h & 0x8000), "f16_to_f32(%04x) = %a", h, double(f));
      uint16_t back = f32_to_f16(f);
      CHECK((back & 0x7c00) == 0x7c00 && (back & 0x3ff) && (back & 0x8000) == (h & 0x8000),
            "f32_to_f16(f16_to_f32(%04x)) = %04x is not a NaN of the same sign", h, back);
    } else {
      CHECK(f32_bits(f) == uint32_t(ref_round(ref, 23, 8)), "f16_to_f32(%04x) = %a, expected %La", h,
            double(f), ref);
      CHECK(f32_to_f16(f) == h, "f32_to_f16(f16_to_f32(%04x)) = %04x", h, f32_to_f16(f));
    }
    float b = bf16_to_f32(uint16_t(h));
    long double bref = ref_decode(h, 7, 8);
    if (std::isnan(bref)) {
      CHECK(std::isnan(b), "bf16_to_f32(%04x) is not NaN", h);
      CHECK(f32_to_bf16(b) == (h | 0x40), "f32_to_bf16(bf16_to_f32(%04x)) = %04x, expected the quiet NaN %04x",
            h, f32_to_bf16(b), h | 0x40);
    } else {
      CHECK(f32_bits(b) == uint32_t(ref_round(bref, 23, 8)), "bf16_to_f32(%04x) = %a", h, double(b));
      CHECK(f32_to_bf16(b) == h, "f32_to_bf16(bf16_to_f32(%04x)) = %04x", h, f32_to_bf16(b));
    }
  }

  // float32 -> float16 / bfloat16 round to nearest, ties to even, against ref_round.
  long checked = 0;
  auto check_one = [&](float x) {
    ++checked;
    if (std::isnan(x)) {
      uint16_t h = f32_to_f16(x), b = f32_to_bf16(x);
      CHECK((h & 0x7c00) == 0x7c00 && (h & 0x3ff), "f32_to_f16(NaN %08x) = %04x", f32_bits(x), h);
      CHECK((b & 0x7f80) == 0x7f80 && (b & 0x7f), "f32_to_bf16(NaN %08x) = %04x", f32_bits(x), b);
      return;
    }
    uint16_t want_h = uint16_t(ref_round(x, 10, 5)), want_b = uint16_t(ref_round(x, 7, 8));
    uint16_t got_h = f32_to_f16(x), got_b = f32_to_bf16(x);
    CHECK(got_h == want_h, "f32_to_f16(%a = %08x) = %04x, expected %04x", double(x), f32_bits(x), got_h, want_h);
    CHECK(got_b == want_b, "f32_to_bf16(%a = %08x) = %04x, expected %04x", double(x), f32_bits(x), got_b, want_b);
  };
  // Ties and their neighbours: the midpoint of every pair of adjacent finite values of both
  // formats (exact in float32), one float32 ulp either side of it, and the values themselves.
  for (int fmt = 0; fmt < 2; ++fmt) {
    const int p = fmt ? 7 : 10, w = fmt ? 8 : 5;
    for (uint32_t h = 0; h < 0x8000; ++h) {
      long double a = ref_decode(h, p, w), b = ref_decode(h + 1, p, w);
      if (std::isnan(a) || std::isinf(a) || std::isnan(b)) continue;
      for (float s : {1.0f, -1.0f}) {
        float lo = s * float(a);
        float mid = s * float((a + b) / 2);
        if (!std::isinf(b)) {
          CHECK((long double)mid == s * (a + b) / 2, "midpoint not exact");
          check_one(mid);
          check_one(std::nextafter(mid, 0.0f));
          check_one(std::nextafter(mid, s * INFINITY));
        }
        check_one(lo);
      }
    }
  }
  // Special and boundary values.
  for (float x : {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 65504.0f, 65519.996f, 65520.0f,
                  65536.0f, 1e-8f, 2.9802322e-8f /* 2^-25: a tie with zero */, 5.9604645e-8f,
                  6.1035156e-5f /* smallest normal half */, 6.0975552e-5f /* largest subnormal half */,
                  3.4028235e38f, 1.1754944e-38f, 1e-45f /* smallest float32 subnormal */,
                  3.3895314e38f /* bfloat16 max */, 3.3961775e38f /* bfloat16 overflow tie */})
    check_one(x);
  for (uint32_t bits : {0x7f800001u, 0x7fc00000u, 0xffbfffffu, 0x00000001u, 0x807fffffu, 0x7f7fffffu,
                        0x477fefffu, 0x477ff000u, 0x477ff001u, 0x33000000u, 0x33000001u, 0x32ffffffu,
                        0x387fc000u, 0x387fe000u, 0x387fffffu, 0x7f7f8000u, 0x7f7f7fffu})
    check_one(f32_from(bits));
  // Random float32 bit patterns (mostly far outside float16's range) and random values inside it.
  Rng rng(12345);
  for (int i = 0; i < 200000; ++i) check_one(f32_from(uint32_t(rng.next())));
  for (int i = 0; i < 200000; ++i) {
    uint32_t exp = uint32_t(rng.range(127 - 27, 127 + 16));  // 2^-27 .. 2^16
    check_one(f32_from((uint32_t(rng.next()) & 0x807fffffu) | (exp << 23)));
  }
  g_ctx = "conversions";
  CHECK(checked > 400000, "only %ld values checked", checked);
}

// Half-precision reduce kernels directly (no communicator): one rounding per element.
void test_reduce_kernel() {
  g_ctx = "reduce kernel";
  Rng rng(99);
  for (const TypeInfo& t : kTypes) {
    for (RedOp op : kOps) {
      const size_t count = 1000;
      std::vector<uint8_t> a = make_input(t, op, Mode::kRandom, count, 0, 2, rng.next());
      std::vector<uint8_t> b = make_input(t, op, Mode::kRandom, count, 1, 2, rng.next());
      for (int portable = 0; portable < 2; ++portable) {
      auto reduce2 = portable ? reduce_generic : reduce;
      std::vector<uint8_t> out(count * t.esz);
      reduce2(out.data(), a.data(), b.data(), count, t.dt, op);
      for (size_t i = 0; i < count; ++i) {
        const size_t at = i * t.esz;
        if (t.is_int()) {
          int64_t want = int_combine(t, op, load_int(t, &a[at]), load_int(t, &b[at]));
          CHECK(load_int(t, &out[at]) == want, "%s %s element %zu", t.name, op_name(op), i);
        } else {
          // The exact result of two values rounded once: what every float kernel must give
          // (float32 intermediates are exact enough for the 16-bit types: 24 >= 2 * 11 + 2). A
          // long double holds every exact float32 result, but not every float64 sum or product,
          // so float64's reference is the hardware's correctly rounded double operation.
          long double want = float_combine(op, load_float(t, &a[at]), load_float(t, &b[at]));
          if (t.dt == DType::kFloat64 && (op == RedOp::kSum || op == RedOp::kProd)) {
            double x = double(load_float(t, &a[at])), y = double(load_float(t, &b[at]));
            want = op == RedOp::kSum ? x + y : x * y;
          }
          CHECK(load_bits(t, &out[at]) == ref_round(want, t.p, t.w), "%s %s element %zu: %.20Lg vs %.20Lg",
                t.name, op_name(op), i, load_float(t, &out[at]), want);
        }
      }
      // dst may alias an input.
      std::vector<uint8_t> alias = a;
      reduce2(alias.data(), alias.data(), b.data(), count, t.dt, op);
      CHECK(alias == out, "%s %s: aliased dst differs", t.name, op_name(op));
      }
    }
  }
  // reduce_many's contract: sources combined in order, in the element type; bfloat16 and float16
  // accumulated in float32 (IEEE, in order) and rounded once at the end.
  for (const TypeInfo& t : kTypes) {
    for (RedOp op : kOps) {
      for (int nsrc : {1, 2, 3, 8, 17}) {
        const size_t count = 301;
        std::vector<std::vector<uint8_t>> ins;
        std::vector<const void*> srcs;
        for (int q = 0; q < nsrc; ++q) ins.push_back(make_input(t, op, Mode::kRandom, count, q, nsrc, rng.next()));
        for (auto& v : ins) srcs.push_back(v.data());
        for (int portable = 0; portable < 2; ++portable) {
        auto reduce_n = portable ? reduce_many_generic : reduce_many;
        srcs[0] = ins[0].data();
        std::vector<uint8_t> out(count * t.esz);
        reduce_n(out.data(), srcs.data(), nsrc, count, t.dt, op);
        long bad = 0;
        for (size_t i = 0; i < count && bad < 3; ++i) {
          const size_t at = i * t.esz;
          uint64_t want;
          if (t.is_int()) {
            int64_t acc = load_int(t, &ins[0][at]);
            for (int q = 1; q < nsrc; ++q) acc = int_combine(t, op, acc, load_int(t, &ins[size_t(q)][at]));
            want = uint64_t(acc) & (t.esz == 4 ? 0xffffffffull : ~0ull);
          } else if (t.dt == DType::kFloat64) {
            double acc = double(load_float(t, &ins[0][at]));
            for (int q = 1; q < nsrc; ++q) acc = double(float_combine(op, acc, load_float(t, &ins[size_t(q)][at])));
            if (op == RedOp::kSum || op == RedOp::kProd) {  // the double operation itself
              acc = double(load_float(t, &ins[0][at]));
              for (int q = 1; q < nsrc; ++q) {
                double v = double(load_float(t, &ins[size_t(q)][at]));
                acc = op == RedOp::kSum ? acc + v : acc * v;
              }
            }
            want = ref_round(acc, t.p, t.w);
          } else {
            float acc = float(load_float(t, &ins[0][at]));
            for (int q = 1; q < nsrc; ++q) {
              float v = float(load_float(t, &ins[size_t(q)][at]));
              acc = op == RedOp::kSum ? acc + v : op == RedOp::kProd ? acc * v : float(float_combine(op, acc, v));
            }
            want = ref_round(acc, t.p, t.w);
          }
          bool ok = load_bits(t, &out[at]) == want;
          bad += !ok;
          CHECK(ok, "reduce_many (%s) %s %s nsrc=%d element %zu: bits %" PRIx64 ", expected %" PRIx64,
                portable ? "portable" : reduce_kernel_name(), t.name, op_name(op), nsrc, i, load_bits(t, &out[at]),
                want);
        }
        std::vector<uint8_t> alias = ins[0];
        srcs[0] = alias.data();
        reduce_n(alias.data(), srcs.data(), nsrc, count, t.dt, op);
        CHECK(alias == out, "reduce_many %s %s nsrc=%d: dst aliasing the first source differs", t.name,
              op_name(op), nsrc);
        }
      }
    }
  }
}

// Bit for bit, except that any NaN matches any NaN: the AVX2 kernels keep float16 NaN payloads
// (F16C) where the portable ones return the canonical 0x7e00, and which operand's NaN an addition
// of two NaNs returns depends on the compiler's operand order (reported; see the tools report).
bool same_result(const TypeInfo& t, const uint8_t* a, const uint8_t* b) {
  if (!t.is_int() && std::isnan(load_float(t, a)) && std::isnan(load_float(t, b))) return true;
  return load_bits(t, a) == load_bits(t, b);
}

// The dispatched kernels (AVX2 where the CPU has it) against the portable ones on special values
// (NaNs with payloads, infinities, signed zeros, subnormals, ties) at lengths around the vector
// widths.
void test_kernel_dispatch() {
  g_ctx = strf("kernel dispatch (%s)", reduce_kernel_name());
  Rng rng(7);
  const uint32_t f32_special[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fa00123u, 0x7f800000u,
                                  0xff800000u, 0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu,
                                  0x3f800000u, 0xbf800000u, 0x7f7fffffu, 0x477ff000u, 0x33000000u};
  const uint16_t h16_special[] = {0x7e00, 0xfe00, 0x7c01, 0x7d23, 0x7c00, 0xfc00, 0x0000, 0x8000,
                                  0x0001, 0x83ff, 0x3c00, 0xbc00, 0x7bff, 0x0400};
  const uint16_t bf16_special[] = {0x7fc0, 0xffc0, 0x7f81, 0x7fa3, 0x7f80, 0xff80, 0x0000, 0x8000,
                                   0x0001, 0x807f, 0x3f80, 0xbf80, 0x7f7f, 0x0080};
  auto special = [&](const TypeInfo& t, uint8_t* p) {
    if (t.dt == DType::kFloat32) store_bits(t, p, f32_special[rng.next() % std::size(f32_special)]);
    if (t.dt == DType::kFloat16) store_bits(t, p, h16_special[rng.next() % std::size(h16_special)]);
    if (t.dt == DType::kBFloat16) store_bits(t, p, bf16_special[rng.next() % std::size(bf16_special)]);
  };
  for (const TypeInfo& t : kTypes) {
    for (RedOp op : kOps) {
      for (size_t count : {size_t(1), size_t(7), size_t(8), size_t(9), size_t(31), size_t(32), size_t(33), size_t(200)}) {
        for (int nsrc : {2, 3, 5}) {
          std::vector<std::vector<uint8_t>> ins;
          std::vector<const void*> srcs;
          for (int q = 0; q < nsrc; ++q) {
            ins.push_back(make_input(t, op, Mode::kRandom, count, q, nsrc, rng.next()));
            for (size_t i = 0; i < count; ++i)
              if (rng.next() % 4 == 0) special(t, &ins.back()[i * t.esz]);
          }
          for (auto& v : ins) srcs.push_back(v.data());
          std::vector<uint8_t> fast(count * t.esz), portable(count * t.esz);
          reduce_many(fast.data(), srcs.data(), nsrc, count, t.dt, op);
          reduce_many_generic(portable.data(), srcs.data(), nsrc, count, t.dt, op);
          size_t first = count;
          for (size_t i = 0; i < count && first == count; ++i)
            if (!same_result(t, &fast[i * t.esz], &portable[i * t.esz])) first = i;
          CHECK(first == count, "reduce_many %s %s nsrc=%d count=%zu: element %zu is %" PRIx64
                " (inputs %" PRIx64 ", %" PRIx64 "), the portable kernel gives %" PRIx64, t.name, op_name(op),
                nsrc, count, first, load_bits(t, &fast[first * t.esz]), load_bits(t, &ins[0][first * t.esz]),
                load_bits(t, &ins[1][first * t.esz]), load_bits(t, &portable[first * t.esz]));
          if (nsrc == 2) {
            reduce(fast.data(), srcs[0], srcs[1], count, t.dt, op);
            reduce_generic(portable.data(), srcs[0], srcs[1], count, t.dt, op);
            first = count;
            for (size_t i = 0; i < count && first == count; ++i)
              if (!same_result(t, &fast[i * t.esz], &portable[i * t.esz])) first = i;
            CHECK(first == count, "reduce %s %s count=%zu: element %zu is %" PRIx64 " (inputs %" PRIx64
                  ", %" PRIx64 "), the portable kernel gives %" PRIx64, t.name, op_name(op), count, first,
                  load_bits(t, &fast[first * t.esz]), load_bits(t, &ins[0][first * t.esz]),
                  load_bits(t, &ins[1][first * t.esz]), load_bits(t, &portable[first * t.esz]));
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Section: copy_bytes (comm/copy.h), with and without streaming stores: destination offsets
// 0..63 and source offsets 0..15 at every length 0..300 (the streaming path's unaligned head, 64-byte body and
// tail, and the short copies that skip it), then a few MiB at odd offsets. The bytes around the
// destination must stay untouched.

void test_copy_bytes() {
  constexpr size_t kPad = 64, kMaxLen = 300, kAlign = 64;
  std::vector<uint8_t> src(kMaxLen + 2 * kAlign + kPad), dst(kMaxLen + 2 * kAlign + 2 * kPad);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(i * 131 + 7);
  for (bool streaming : {false, true}) {
    g_ctx = strf("copy_bytes (streaming=%d)", int(streaming));
    for (size_t da = 0; da < kAlign; ++da) {
      for (size_t sa = 0; sa < 16; ++sa) {  // the loads are 16 bytes wide and unaligned
        for (size_t len = 0; len <= kMaxLen; ++len) {
          std::fill(dst.begin(), dst.end(), uint8_t(0xa5));
          copy_bytes(dst.data() + kPad + da, src.data() + sa, len, streaming);
          bool ok = std::memcmp(dst.data() + kPad + da, src.data() + sa, len) == 0;
          for (size_t i = 0; ok && i < dst.size(); ++i)
            ok = (i >= kPad + da && i < kPad + da + len) || dst[i] == 0xa5;
          CHECK(ok, "dst offset %zu, src offset %zu, %zu bytes", da, sa, len);
        }
      }
    }
    for (size_t len : {size_t(3) << 20, (size_t(4) << 20) + 37, (size_t(9) << 20) - 5}) {
      std::vector<uint8_t> big_src(len + 16), big_dst(len + 32, 0x5a);
      for (size_t i = 0; i < big_src.size(); ++i) big_src[i] = uint8_t((i >> 8) ^ (i * 29));
      copy_bytes(big_dst.data() + 3, big_src.data() + 11, len, streaming);
      CHECK(std::memcmp(big_dst.data() + 3, big_src.data() + 11, len) == 0, "%zu bytes", len);
      CHECK(big_dst[2] == 0x5a && big_dst[len + 3] == 0x5a, "%zu bytes: wrote outside", len);
    }
  }
  // The default threshold, where no override is set (0 turns streaming off).
  g_ctx = "should_stream";
  if (!std::getenv("SHARDCORE_NT_MIN_BYTES")) {
    CHECK(!should_stream(0) && !should_stream((size_t(8) << 20) - 1), "below 8 MiB");
    CHECK(should_stream(size_t(8) << 20), "at 8 MiB");
    CHECK(!should_stream((size_t(1) << 20) - 1, kStreamMinGatherBytes), "gathered, below 1 MiB");
    CHECK(should_stream(size_t(1) << 20, kStreamMinGatherBytes), "gathered, at 1 MiB");
  }
}

// ---------------------------------------------------------------------------------------------
// Section: collectives on n ranks

struct RankRecord {
  std::vector<uint8_t> identical;  // outputs every rank must have bit for bit
  std::vector<uint64_t> ar_sent;   // all_reduce bytes sent, per call
  std::vector<uint64_t> ar_expected_total;  // what all ranks together send, per call
};

const Algo kAllReduceAlgos[] = {Algo::kAuto, Algo::kRing, Algo::kOneShot, Algo::kTwoShot, Algo::kSymmetric};

const size_t kCounts[] = {0, 1, 2, 7, 13, 61, 257, 1031};  // 1031 halves: > 256 B per block at n=8
const size_t kRows[] = {0, 1, 2, 7, 13, 61, 257};
const size_t kOpaqueSizes[] = {1, 2, 3, 4, 8, 12};

void collectives_on_rank(Communicator& c, int n, RankRecord& rec, bool quick, const SymmetricSegment* sym) {
  const int r = c.rank();
  const std::string base = g_ctx;
  uint64_t cfg = 0;
  // all_reduce: every algorithm x dtype x op x size, exact data (bitwise) and random data
  // (rounding bound). Symmetric runs in place on a symmetric segment (one per rank thread).
  for (Algo algo : kAllReduceAlgos) {
  for (const TypeInfo& t : kTypes) {
    for (RedOp op : kOps) {
      for (Mode mode : {Mode::kExact, Mode::kRandom, Mode::kNaN}) {
        if (t.is_int() && mode != Mode::kExact) continue;
        if (!t.is_int() && mode == Mode::kRandom && op != RedOp::kSum) continue;
        for (size_t count : kCounts) {
          if (mode == Mode::kNaN && count != 61) continue;
          if (quick && count > 61 && count != 1031) continue;
          // Quick: the full matrix on the ring and auto; the other algorithms share reduce_many,
          // whose arithmetic the kernel section checks for every dtype and op.
          if (quick && algo != Algo::kRing && algo != Algo::kAuto &&
              (mode == Mode::kNaN || op == RedOp::kMin || op == RedOp::kProd))
            continue;
          const size_t bytes = count * t.esz;
          const bool fits_one_shot = bytes <= kInlineBytes || bytes <= c.slot_bytes();
          ++cfg;
          g_ctx = base + strf(" all_reduce %s %s %s %s count=%zu", algo_name(algo), t.name, op_name(op),
                              mode_name(mode), count);
          if (algo == Algo::kOneShot && !fits_one_shot) {
            std::vector<uint8_t> buf(bytes);
            EXPECT_THROW(std::invalid_argument, c.all_reduce(buf.data(), buf.data(), count, t.dt, op, algo));
            continue;
          }
          std::vector<std::vector<uint8_t>> ins;
          for (int q = 0; q < n; ++q) ins.push_back(make_input(t, op, mode, count, q, n, cfg));
          std::vector<uint8_t> buf = ins[size_t(r)], out(bytes, 0xcd);
          const bool in_place = cfg % 2 == 0 || algo == Algo::kSymmetric;
          char* x = reinterpret_cast<char*>(buf.data());
          if (algo == Algo::kSymmetric) {  // this rank's input sits at an odd offset in its region
            x = sym->mine() + 64;
            if (bytes) std::memcpy(x, buf.data(), bytes);
          }
          c.reset_traffic();
          Algo used = algo == Algo::kSymmetric
                          ? c.all_reduce(x, x, count, t.dt, op, algo, sym)
                          : c.all_reduce(x, in_place ? x : reinterpret_cast<char*>(out.data()), count, t.dt, op, algo);
          if (algo == Algo::kSymmetric && bytes) std::memcpy(buf.data(), x, bytes);
          const std::vector<uint8_t>& res = in_place ? buf : out;
          if (!in_place) CHECK(buf == ins[size_t(r)], "the input was modified");
          if (algo == Algo::kAuto)
            CHECK(n == 1 || used != Algo::kRing || bytes > c.two_shot_max(), "auto chose %s for %zu bytes",
                  algo_name(used), bytes);
          else
            CHECK(used == algo, "asked for %s, ran %s", algo_name(algo), algo_name(used));
          check_reduction(t, op, mode, ins, 0, count, res.data());
          rec.identical.insert(rec.identical.end(), res.begin(), res.end());
          // Per rank: the ring sends every block but its successor's in the reduce-scatter half
          // and every block but the one two ahead in the all-gather half; two-shot and symmetric
          // send the other ranks' blocks of their input and their own reduced block to everyone
          // (per chunk); one-shot sends its whole input to everyone.
          const uint64_t e = t.esz;
          uint64_t sent = 0, recv = 0;
          if (n > 1 && count > 0) {
            if (used == Algo::kRing) {
              sent = (2 * count - block_len(count, n, r + 1) - block_len(count, n, r + 2)) * e;
              recv = (2 * count - block_len(count, n, r) - block_len(count, n, r + 1)) * e;
            } else if (used == Algo::kOneShot) {
              sent = recv = uint64_t(n - 1) * bytes;
            } else {
              const size_t chunk = used == Algo::kSymmetric ? count : c.slot_bytes() / t.esz;
              for (size_t lo = 0; lo < count; lo += chunk) {
                const size_t len = std::min(chunk, count - lo), mine = block_len(len, n, r);
                sent += (len - mine + uint64_t(n - 1) * mine) * e;
              }
              recv = sent;
            }
          }
          check_traffic(c, Kind::kAllReduce, sent, recv);
          CHECK(c.traffic(Kind::kAllReduce).algo_calls[size_t(used)] == 1, "%s not counted", algo_name(used));
          rec.ar_sent.push_back(c.traffic(Kind::kAllReduce).sent);
          rec.ar_expected_total.push_back(used == Algo::kOneShot ? uint64_t(n) * uint64_t(n - 1) * bytes
                                                                 : 2 * uint64_t(n - 1) * bytes);
        }
      }
    }
  }
  }
  // reduce_scatter: rank r gets block r of the reduction of n*m elements.
  for (const TypeInfo& t : kTypes) {
    for (RedOp op : kOps) {
      for (size_t m : kRows) {
        if (quick && m > 13 && m != 257) continue;
        const Mode mode = t.is_int() || op != RedOp::kSum || m % 2 ? Mode::kExact : Mode::kRandom;
        ++cfg;
        g_ctx = base + strf(" reduce_scatter %s %s %s m=%zu", t.name, op_name(op), mode_name(mode), m);
        std::vector<std::vector<uint8_t>> ins;
        for (int q = 0; q < n; ++q) ins.push_back(make_input(t, op, mode, m * size_t(n), q, n, cfg));
        std::vector<uint8_t> out(m * t.esz, 0xcd);
        c.reset_traffic();
        c.reduce_scatter(ins[size_t(r)].data(), out.data(), m, t.dt, op);
        check_reduction(t, op, mode, ins, m * size_t(r), m, out.data());
        const uint64_t bytes = uint64_t(n - 1) * m * t.esz;
        check_traffic(c, Kind::kReduceScatter, n == 1 || m == 0 ? 0 : bytes, n == 1 || m == 0 ? 0 : bytes);
      }
    }
  }
  // Data movement: opaque elements of any size.
  auto pattern = [](int rank, size_t i, uint64_t salt) { return uint8_t(mix({salt, uint64_t(rank), i})); };
  for (size_t esz : kOpaqueSizes) {
    for (size_t m : kRows) {
      if (quick && m > 13 && m != 257) continue;
      ++cfg;
      const size_t block = m * esz;
      const uint64_t bytes = n == 1 ? 0 : uint64_t(n - 1) * block;
      bool ok = true;
      for (Algo algo : {Algo::kAuto, Algo::kRing, Algo::kFlat}) {
        ++cfg;
        g_ctx = base + strf(" all_gather %s esz=%zu m=%zu", algo_name(algo), esz, m);
        std::vector<uint8_t> out(size_t(n) * block, 0xcd), in(block);
        for (size_t i = 0; i < block; ++i) in[i] = pattern(r, i, cfg);
        c.reset_traffic();
        Algo used;
        if (cfg % 2) {  // in place: the input already sits in this rank's block of the output
          std::copy(in.begin(), in.end(), out.begin() + long(size_t(r) * block));
          used = c.all_gather(out.data() + size_t(r) * block, out.data(), m, DType::kOther, esz, Kind::kAllGather, algo);
        } else {
          used = c.all_gather(in.data(), out.data(), m, DType::kOther, esz, Kind::kAllGather, algo);
        }
        CHECK(algo == Algo::kAuto ? (used == Algo::kRing || used == Algo::kFlat) : used == algo, "ran %s",
              algo_name(used));
        ok = true;
        for (int q = 0; q < n; ++q)
          for (size_t i = 0; i < block; ++i) ok &= out[size_t(q) * block + i] == pattern(q, i, cfg);
        CHECK(ok, "wrong result");
        rec.identical.insert(rec.identical.end(), out.begin(), out.end());
        // Ring: forwards (n-1) blocks; flat: its block is read by n-1 peers. Both (n-1)/n of the
        // full buffer, as in the model.
        check_traffic(c, Kind::kAllGather, bytes, bytes);
        CHECK(c.traffic(Kind::kAllGather).algo_calls[size_t(used)] == 1, "%s not counted", algo_name(used));
      }

      g_ctx = base + strf(" all_to_all esz=%zu m=%zu", esz, m);
      ++cfg;
      std::vector<uint8_t> a2a_in(size_t(n) * block), a2a_out(size_t(n) * block, 0xcd);
      for (size_t i = 0; i < a2a_in.size(); ++i) a2a_in[i] = pattern(r, i, cfg);
      c.reset_traffic();
      c.all_to_all(a2a_in.data(), a2a_out.data(), m, DType::kOther, esz);
      ok = true;  // block q of the output is block r of rank q's input
      for (int q = 0; q < n; ++q)
        for (size_t i = 0; i < block; ++i)
          ok &= a2a_out[size_t(q) * block + i] == pattern(q, size_t(r) * block + i, cfg);
      CHECK(ok, "wrong result");
      check_traffic(c, Kind::kAllToAll, bytes, bytes);

      for (int root = 0; root < n; ++root) {
        if (quick && root > 1 && root != n - 1) continue;
        ++cfg;
        g_ctx = base + strf(" broadcast esz=%zu m=%zu root=%d", esz, m, root);
        std::vector<uint8_t> buf(block, 0xcd);
        if (r == root)
          for (size_t i = 0; i < block; ++i) buf[i] = pattern(root, i, cfg);
        c.reset_traffic();
        c.broadcast(buf.data(), m, DType::kOther, esz, root);
        ok = true;
        for (size_t i = 0; i < block; ++i) ok &= buf[i] == pattern(root, i, cfg);
        CHECK(ok, "wrong result");
        const uint64_t b = n == 1 ? 0 : block;
        check_traffic(c, Kind::kBroadcast, r == root ? b : 0, r == root ? 0 : b);
      }
    }
  }
  // all_to_allv: random row counts (zeros included), rows of 1 or 3 elements of 2 or 4 bytes.
  for (int trial = 0; trial < (quick ? 3 : 8); ++trial) {
    ++cfg;
    const size_t row = trial % 2 ? 3 : 1, esz = trial % 3 ? 4 : 2, rb = row * esz;
    g_ctx = base + strf(" all_to_allv trial=%d row=%zu esz=%zu", trial, row, esz);
    auto counts_of = [&](int src) {  // rows src sends to each dst
      Rng g(mix({cfg, uint64_t(src)}));
      std::vector<int64_t> v(static_cast<size_t>(n));
      for (auto& x : v) x = trial == 0 ? 0 : g.range(0, 3) == 0 ? 0 : g.range(1, trial * 20);
      return v;
    };
    std::vector<std::vector<int64_t>> M;
    for (int q = 0; q < n; ++q) M.push_back(counts_of(q));
    std::vector<uint8_t> in;
    for (int d = 0; d < n; ++d)
      for (size_t i = 0; i < size_t(M[size_t(r)][size_t(d)]) * rb; ++i) in.push_back(pattern(r, size_t(d) << 32 | i, cfg));
    c.reset_traffic();
    std::vector<int64_t> recv_counts = c.all_to_allv_counts(M[size_t(r)], row, DType::kOther, esz);
    size_t total = 0;
    bool ok = recv_counts.size() == size_t(n);
    for (int q = 0; q < n && ok; ++q) {
      ok &= recv_counts[size_t(q)] == M[size_t(q)][size_t(r)];
      total += size_t(M[size_t(q)][size_t(r)]);
    }
    CHECK(ok, "wrong receive counts");
    std::vector<uint8_t> out(total * rb, 0xcd);
    c.all_to_allv_data(in.data(), out.data(), int64_t(total));
    size_t at = 0;
    uint64_t sent = 0, received = 0;
    for (int q = 0; q < n; ++q) {
      const size_t len = size_t(M[size_t(q)][size_t(r)]) * rb;
      for (size_t i = 0; i < len; ++i) ok &= out[at + i] == pattern(q, size_t(r) << 32 | i, cfg);
      at += len;
      if (q != r) {
        sent += uint64_t(M[size_t(r)][size_t(q)]) * rb;
        received += len;
      }
    }
    CHECK(ok, "wrong result");
    check_traffic(c, Kind::kAllToAllV, sent, received);
    if (n > 1) check_traffic(c, Kind::kInternal, uint64_t(n) * 8, uint64_t(n - 1) * uint64_t(n) * 8);
  }
  g_ctx = base + " barrier";
  c.reset_traffic();
  c.barrier();
  check_traffic(c, Kind::kBarrier, 0, 0);
  g_ctx = base;
}

void test_collectives(bool quick) {
  // Region size: the largest all_reduce input (1031 float64) plus the 64-byte offset.
  const size_t sym_bytes = 1031 * 8 + 64;
  std::vector<int> sizes = g_rank_counts;
  if (sizes.empty()) sizes = quick ? std::vector<int>{1, 2, 3, 8} : std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8};
  for (int n : sizes) {
    std::vector<RankRecord> recs(static_cast<size_t>(n));
    run_ranks(n, small_options(), [&](Communicator& c) {
      // A collective allocation: rank 0 creates memory without a name and hands it out.
      SymmetricSegment sym(c, sym_bytes);
      collectives_on_rank(c, n, recs[size_t(c.rank())], quick, &sym);
    }, "collectives");
    g_ctx = strf("collectives n=%d", n);
    for (int q = 1; q < n; ++q)
      CHECK(recs[size_t(q)].identical == recs[0].identical, "rank %d's results differ from rank 0's", q);
    // Summed over ranks, ring, two-shot and symmetric all-reduce send 2(n-1) times the buffer
    // (DESIGN.md's traffic model), one-shot n(n-1) times.
    const std::vector<uint64_t>& want = recs[0].ar_expected_total;
    std::vector<uint64_t> total(want.size(), 0);
    for (const auto& rr : recs) {
      CHECK(rr.ar_sent.size() == total.size(), "ranks ran different numbers of all_reduce");
      for (size_t i = 0; i < std::min(total.size(), rr.ar_sent.size()); ++i) total[i] += rr.ar_sent[i];
    }
    for (size_t i = 0; i < total.size(); ++i)
      CHECK(total[i] == want[i], "all_reduce #%zu: ranks sent %" PRIu64 " bytes in all, model says %" PRIu64, i,
            total[i], want[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Section: point to point

void test_point_to_point() {
  // FIFO per ordered pair: messages of every size (0, within one chunk, streaming through many
  // chunks) arrive in order with the right contents, while other pairs talk at the same time.
  const int n = 4;
  const size_t sizes[] = {0, 1, 5, 64, 65, 128, 129, 1000, 3, 4096};
  run_ranks(n, small_options(), [&](Communicator& c) {
    const int r = c.rank();
    auto fill = [](int src, size_t k, size_t len) {
      std::vector<uint8_t> v(len);
      for (size_t i = 0; i < len; ++i) v[i] = uint8_t(mix({uint64_t(src), k, i}));
      return v;
    };
    // Pairs (0,1) and (2,3): the even rank sends all, then the odd one receives all.
    uint64_t sent = 0, received = 0;
    if (r % 2 == 0) {
      for (size_t k = 0; k < std::size(sizes); ++k) {
        auto v = fill(r, k, sizes[k]);
        c.send(v.data(), sizes[k], DType::kUInt8, 1, r + 1, int64_t(k) - 3);
        sent += sizes[k];
      }
    } else {
      for (size_t k = 0; k < std::size(sizes); ++k) {
        std::vector<uint8_t> got(sizes[k], 0xcd);
        c.recv(got.data(), sizes[k], DType::kUInt8, 1, r - 1, int64_t(k) - 3);
        CHECK(got == fill(r - 1, k, sizes[k]), "message %zu of %zu bytes", k, sizes[k]);
        received += sizes[k];
      }
    }
    CHECK(c.traffic(Kind::kSend).sent == sent, "send bytes %" PRIu64, c.traffic(Kind::kSend).sent);
    CHECK(c.traffic(Kind::kRecv).recv == received, "recv bytes %" PRIu64, c.traffic(Kind::kRecv).recv);
    CHECK(c.traffic(Kind::kSend).calls == (r % 2 ? 0 : std::size(sizes)), "send calls");
    // A ring shift of eager messages (<= two 64-byte chunks): everyone sends, then receives.
    std::vector<double> mine(16), got(16);
    for (size_t i = 0; i < mine.size(); ++i) mine[i] = r * 100.0 + double(i);
    c.send(mine.data(), 16, DType::kFloat64, 8, (r + 1) % n, 7);
    c.recv(got.data(), 16, DType::kFloat64, 8, (r + n - 1) % n, 7);
    CHECK(got[3] == ((r + n - 1) % n) * 100.0 + 3, "ring shift got %g", got[3]);
    c.barrier();
  }, "p2p");

  // send and recv on two threads of one communicator (the documented concurrency): every rank
  // streams messages to its successor on one thread while receiving from its predecessor on
  // another; done on one thread, the long messages would deadlock.
  for (int n : {2, 3}) {
    for (bool bad_tag : {false, true}) {
      run_ranks(n, small_options(), [&](Communicator& c) {
        const int r = c.rank(), to = (r + 1) % n, from = (r + n - 1) % n;
        const int kMessages = 24;
        auto msg = [](int src, int k) {
          std::vector<uint8_t> v(size_t(k % 5 == 0 ? 0 : 40 * k + 1));
          for (size_t i = 0; i < v.size(); ++i) v[i] = uint8_t(mix({uint64_t(src), uint64_t(k), i}));
          return v;
        };
        const std::string ctx = g_ctx;
        uint64_t sent = 0, received = 0;
        bool send_failed = false;
        std::thread sender([&] {
          g_ctx = ctx + " sender";
          try {
            for (int k = 0; k < kMessages; ++k) {
              auto v = msg(r, k);
              c.send(v.data(), v.size(), DType::kUInt8, 1, to, k);
              sent += v.size();
            }
          } catch (const Mismatch&) {
            send_failed = true;
          }
        });
        const int bad_at = 7;  // a 281-byte message: the sender cannot run more than 2 chunks ahead
        bool recv_failed = false;
        try {
          for (int k = 0; k < kMessages; ++k) {
            auto want = msg(from, k);
            std::vector<uint8_t> got(want.size(), 0xcd);
            c.recv(got.data(), got.size(), DType::kUInt8, 1, from, bad_tag && k == bad_at ? -1 : k);
            CHECK(got == want, "message %d", k);
            received += got.size();
          }
        } catch (const Mismatch&) {
          recv_failed = true;
        }
        sender.join();
        if (bad_tag) {
          // Every receiver sees a bad tag or the abort; every sender blocks on a stalled mailbox.
          CHECK(recv_failed && send_failed, "recv failed: %d, send failed: %d", recv_failed, send_failed);
        } else {
          CHECK(!recv_failed && !send_failed, "unexpected mismatch");
          CHECK(c.traffic(Kind::kSend).sent == sent && c.traffic(Kind::kSend).calls == uint64_t(kMessages),
                "send counted %" PRIu64 " bytes", c.traffic(Kind::kSend).sent);
          CHECK(c.traffic(Kind::kRecv).recv == received && c.traffic(Kind::kRecv).calls == uint64_t(kMessages),
                "recv counted %" PRIu64 " bytes", c.traffic(Kind::kRecv).recv);
          c.barrier();
        }
      }, strf("p2p two threads%s", bad_tag ? " bad tag" : ""));
    }
  }

  // A mismatched tag, count or dtype fails the receiver with Mismatch, and every other rank's next
  // call with Mismatch too.
  for (int which = 0; which < 3; ++which) {
    run_ranks(3, small_options(), [&](Communicator& c) {
      int32_t v[4] = {1, 2, 3, 4};
      if (c.rank() == 0) c.send(v, 4, DType::kInt32, 4, 1, 5);
      if (c.rank() == 1) {
        EXPECT_THROW(Mismatch,
                     (which == 0   ? c.recv(v, 4, DType::kInt32, 4, 0, 6)
                      : which == 1 ? c.recv(v, 3, DType::kInt32, 4, 0, 5)
                                   : c.recv(v, 4, DType::kFloat32, 4, 0, 5)),
                     [](const Mismatch& e) { CHECK(contains(e.what(), "send/recv mismatch"), "%s", e.what()); });
      } else {
        EXPECT_THROW(Mismatch, c.barrier());
      }
      EXPECT_THROW(Mismatch, c.barrier());  // the communicator stays broken
    }, strf("p2p mismatch %d", which));
  }
}

// ---------------------------------------------------------------------------------------------
// Section: the error model

void test_errors() {
  // A collective mismatch is a Mismatch on every rank, naming both calls.
  for (int n : {2, 3, 5}) {
    for (int which = 0; which < 7; ++which) {
      run_ranks(n, small_options(), [&](Communicator& c) {
        const int r = c.rank();
        const bool odd = r == n - 1;  // the last rank calls something else
        float buf[8] = {};
        auto call = [&] {
          switch (which) {
            case 0: c.all_reduce(buf, buf, odd ? 5 : 6, DType::kFloat32, RedOp::kSum, Algo::kAuto); break;
            case 1: c.all_reduce(buf, buf, 4, odd ? DType::kInt32 : DType::kFloat32, RedOp::kSum, Algo::kAuto); break;
            case 2: c.all_reduce(buf, buf, 4, DType::kFloat32, odd ? RedOp::kMax : RedOp::kSum, Algo::kAuto); break;
            case 3: odd ? c.barrier() : c.broadcast(buf, 4, DType::kFloat32, 4, 0); break;
            case 4: c.broadcast(buf, 4, DType::kFloat32, 4, odd ? 1 : 0); break;
            case 5: c.all_gather(buf, buf, 1, DType::kOther, odd ? 3 : 4); break;
            default: c.all_reduce(buf, buf, 4, DType::kFloat32, RedOp::kSum, odd ? Algo::kTwoShot : Algo::kRing); break;
          }
        };
        EXPECT_THROW(Mismatch, call(), [&](const Mismatch& e) {
          CHECK(contains(e.what(), "mismatch") && contains(e.what(), "but rank"), "message: %s", e.what());
        });
        EXPECT_THROW(Mismatch, c.barrier());
      }, strf("mismatch case %d", which));
    }
  }

  // A wait past the deadline is a Timeout naming the peer and the collective; the rank that
  // stayed away then learns that the communicator was aborted.
  Options quick_timeout = small_options();
  quick_timeout.timeout_s = 0.3;
  for (int which = 0; which < 2; ++which) {
    Event timed_out;
    run_ranks(2, quick_timeout, [&](Communicator& c) {
      if (c.rank() == 0) {
        float x[3] = {1, 2, 3};
        EXPECT_THROW(Timeout, (which ? c.recv(x, 3, DType::kFloat32, 4, 1, 0) : c.barrier()),
                     [&](const Timeout& e) {
                       CHECK(contains(e.what(), "rank 1") && contains(e.what(), which ? "recv" : "barrier"),
                             "message: %s", e.what());
                     });
        timed_out.signal();
      } else {
        timed_out.wait();
        EXPECT_THROW(PeerFailure, c.barrier(),
                     [](const PeerFailure& e) { CHECK(contains(e.what(), "aborted by rank 0"), "message: %s", e.what()); });
      }
    }, strf("timeout %d", which));
  }

  // A peer that closes its communicator is a PeerFailure for whoever waits on it.
  {
    run_ranks(2, small_options(), [&](Communicator& c) {
      if (c.rank() == 1) {
        c.close();
        EXPECT_THROW(std::runtime_error, c.barrier(),
                     [](const std::runtime_error& e) { CHECK(contains(e.what(), "closed"), "message: %s", e.what()); });
      } else {
        EXPECT_THROW(PeerFailure, c.barrier(),
                     [](const PeerFailure& e) { CHECK(contains(e.what(), "closed its communicator"), "message: %s", e.what()); });
      }
    }, "closed peer");
  }

  // Connecting: a rank waiting for a segment nobody creates, and rank 0 waiting for ranks that
  // never attach, both time out and leave nothing behind.
  {
    g_ctx = "connect timeout";
    Options o = small_options();
    o.timeout_s = 0.2;
    const std::string name = fresh_name();
    EXPECT_THROW(Timeout, Communicator(name, 1, 2, o));
    EXPECT_THROW(Timeout, Communicator(name, 0, 3, o));
    CHECK(!segment_exists(name), "segment left behind");
  }

  // Bad arguments are std::invalid_argument before anything is shared.
  {
    g_ctx = "bad arguments";
    Options o = small_options();
    EXPECT_THROW(std::invalid_argument, Communicator(fresh_name(), 0, 0, o));
    EXPECT_THROW(std::invalid_argument, Communicator(fresh_name(), 2, 2, o));
    EXPECT_THROW(std::invalid_argument, Communicator("no-slash", 0, 1, o));
    Options bad = o;
    bad.slot_bytes = 300;
    EXPECT_THROW(std::invalid_argument, Communicator(fresh_name(), 0, 1, bad));
    bad = o;
    bad.timeout_s = 0;
    EXPECT_THROW(std::invalid_argument, Communicator(fresh_name(), 0, 1, bad));
    run_ranks(2, o, [&](Communicator& c) {
      uint8_t b[16] = {};
      EXPECT_THROW(std::invalid_argument, c.all_reduce(b, b, 4, DType::kOther, RedOp::kSum, Algo::kAuto));
      EXPECT_THROW(std::invalid_argument, c.all_reduce(b, b, 4, DType::kFloat32, RedOp::kNone, Algo::kAuto));
      EXPECT_THROW(std::invalid_argument, c.reduce_scatter(b, b, 1, DType::kBool, RedOp::kSum));
      EXPECT_THROW(std::invalid_argument, c.broadcast(b, 4, DType::kUInt8, 1, 2));
      EXPECT_THROW(std::invalid_argument, c.send(b, 4, DType::kUInt8, 1, c.rank(), 0));
      EXPECT_THROW(std::invalid_argument, c.recv(b, 4, DType::kUInt8, 1, 5, 0));
      EXPECT_THROW(std::invalid_argument, c.all_to_allv_counts({1}, 1, DType::kUInt8, 1));
      EXPECT_THROW(std::invalid_argument, c.all_to_allv_counts({1, -1}, 1, DType::kUInt8, 1));
      // A bad argument on one rank alone: that rank rejects the call, and every rank's throws.
      if (c.rank() == 0) EXPECT_THROW(Rejected, c.broadcast(b, 4, DType::kUInt8, 1, 2));
      else EXPECT_THROW(Rejected, c.broadcast(b, 4, DType::kUInt8, 1, 0));
      // An out of the wrong length on one rank, known after the counts exchange: every rank
      // throws, and nothing breaks.
      uint8_t in[2] = {1, 2}, out[2] = {};
      c.all_to_allv_counts({1, 1}, 1, DType::kUInt8, 1);
      EXPECT_THROW(std::invalid_argument, c.all_to_allv_data(in, out, c.rank() == 1 ? 3 : 2));
      c.barrier();  // none of the above broke the communicator
    }, "bad arguments");
  }
}

// ---------------------------------------------------------------------------------------------
// Section "regressions": bugs found by this driver and the sanitizers, kept as checks.

void test_regressions() {
  // all_to_allv exchanges n int64 counts through one slot: a slot smaller than 8 * n bytes is
  // rejected when the communicator is made (it used to run over into the next rank's slot).
  {
    Options o = small_options();
    for (int r : {0, 1})
      EXPECT_THROW(std::invalid_argument, Communicator("/shardcore-test-regress", r, 65, o));
  }
  // Ring all_gather of elements wider than a slot is moved as bytes (it used to divide by zero).
  run_ranks(2, small_options(), [&](Communicator& c) {
    const size_t esz = 320, m = 2;
    std::vector<uint8_t> in(m * esz, uint8_t(c.rank() + 1)), out(2 * m * esz, 0);
    c.all_gather(in.data(), out.data(), m, DType::kOther, esz, Kind::kAllGather, Algo::kRing);
    CHECK(out[0] == 1 && out[m * esz] == 2, "wrong result");
  }, "all_gather esz > slot_bytes");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// One mapping per segment (for ThreadSanitizer). Each Communicator maps the segment itself, so
// threads that play ranks see the same memory at different addresses, and TSan, which tracks
// addresses, would see neither the synchronisation nor the races between them. With
// --shared-mapping (the default under TSan) the test binary, linked with -Wl,--wrap=mmap and
// --wrap=munmap, hands every rank the first mapping of the same file instead, reference-counted;
// separate processes behave like separate mappings, which is the default elsewhere.

namespace {
bool g_share_mappings = false;
struct SharedMapping {
  dev_t dev;
  ino_t ino;
  void* addr;
  size_t len;
  int prot;
  int refs;
};
std::mutex g_map_mu;
std::vector<SharedMapping> g_maps;
}  // namespace

extern "C" {
void* __real_mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off);
int __real_munmap(void* addr, size_t len);

void* __wrap_mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  struct stat st;
  if (!g_share_mappings || addr || fd < 0 || off != 0 || !(flags & MAP_SHARED) || fstat(fd, &st) != 0)
    return __real_mmap(addr, len, prot, flags, fd, off);
  std::lock_guard<std::mutex> lock(g_map_mu);
  for (SharedMapping& m : g_maps) {
    if (m.dev == st.st_dev && m.ino == st.st_ino && m.len >= len && (m.prot & prot) == prot) {
      ++m.refs;
      return m.addr;
    }
  }
  void* p = __real_mmap(addr, len, prot, flags, fd, off);
  if (p != MAP_FAILED) g_maps.push_back({st.st_dev, st.st_ino, p, len, prot, 1});
  return p;
}

int __wrap_munmap(void* addr, size_t len) {
  {
    std::lock_guard<std::mutex> lock(g_map_mu);
    for (size_t i = 0; i < g_maps.size(); ++i) {
      if (g_maps[i].addr != addr) continue;
      if (--g_maps[i].refs > 0) return 0;
      len = g_maps[i].len;
      g_maps.erase(g_maps.begin() + long(i));
      break;
    }
  }
  return __real_munmap(addr, len);
}
}

int main(int argc, char** argv) {
#if defined(__SANITIZE_THREAD__)
  g_share_mappings = true;
#endif
  // The symmetric all-reduce's 512 KiB chunks would make one chunk of every message below: cut
  // them to 24 bytes so that its pipeline (a post per chunk, copies as chunks appear) runs here,
  // under the sanitizers too.
  setenv("SHARDCORE_SYM_CHUNK_BYTES", "24", 0);
  bool quick = false;
  std::vector<std::string> sections;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--shared-mapping") g_share_mappings = true;
    else if (a == "--separate-mappings") g_share_mappings = false;
    else if (a.rfind("--ranks=", 0) == 0) {
      for (size_t at = 8; at < a.size();) {
        size_t comma = a.find(',', at);
        g_rank_counts.push_back(std::atoi(a.substr(at, comma - at).c_str()));
        at = comma == std::string::npos ? a.size() : comma + 1;
      }
    }
    else if (a == "-h" || a == "--help") {
      std::printf("usage: %s [--quick] [--ranks=1,2,8] [--shared-mapping|--separate-mappings] "
                  "[conversions|kernel|copy|collectives|errors|p2p|regressions]...\n", argv[0]);
      return 0;
    } else sections.push_back(a);
  }
  auto want = [&](const char* s) { return sections.empty() || std::count(sections.begin(), sections.end(), s); };
  struct Section { const char* name; std::function<void()> fn; };
  const Section all[] = {
      {"conversions", test_conversions},
      {"kernel", [] { test_reduce_kernel(); test_kernel_dispatch(); }},
      {"copy", test_copy_bytes},
      {"collectives", [&] { test_collectives(quick); }},
      {"errors", test_errors},
      {"p2p", test_point_to_point},
      {"regressions", test_regressions},
  };
  for (const std::string& s : sections) {
    bool known = false;
    for (const Section& sec : all) known |= s == sec.name;
    if (!known) {
      std::fprintf(stderr, "unknown section '%s'\n", s.c_str());
      return 2;
    }
  }
  std::printf("shardcore core tests (%s mappings%s)\n", g_share_mappings ? "shared" : "separate",
              quick ? ", quick" : "");
  for (const Section& sec : all) {
    if (!want(sec.name)) continue;
    long before = g_failures.load();
    auto t0 = std::chrono::steady_clock::now();
    sec.fn();
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    long failed = g_failures.load() - before;
    std::printf("%-12s %s (%.2f s)\n", sec.name, failed ? strf("FAILED: %ld checks", failed).c_str() : "ok", dt);
    std::fflush(stdout);
  }
  long f = g_failures.load();
  if (f)
    std::printf("FAILED: %ld of %ld checks\n", f, g_checks.load());
  else
    std::printf("all %ld checks passed\n", g_checks.load());
  return f ? 1 : 0;
}
