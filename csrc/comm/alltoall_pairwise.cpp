// Pairwise all-to-all(v): in step s = 1..n-1 rank r sends to r+s and receives from r-s, one
// slot-sized chunk per round, so every rank talks to one peer at a time.
#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "comm/blocks.h"
#include "comm/communicator.h"
#include "comm/copy.h"

namespace shardcore {

Algo Communicator::all_to_all(const void* in, void* out, size_t m, DType dt, size_t esz, Algo algo,
                              const SymmetricSegment* sym_buffer) {
  const size_t block = m * esz;
  const SymmetricPlace place = symmetric_place(sym_buffer, in, size_t(size_) * block);
  // Flat when every block fits one slot (one synchronisation in all), pairwise above: flat in
  // several rounds measured no faster than pairwise's lockstep steps at 4 and 8 ranks on a
  // 16-core Xeon (two alternated runs each way, bench/results/session3/xeon16-a2a).
  if (algo == Algo::kAuto)
    algo = symmetric_gather_auto(place.stride, block, true)   ? Algo::kSymmetric
           : size_t(size_) * block <= slot_bytes_ ? Algo::kFlat
                                                               : Algo::kPairwise;
  if (algo != Algo::kPairwise && algo != Algo::kFlat && algo != Algo::kCma &&
      algo != Algo::kSymmetric)
    reject(Kind::kAllToAll, std::string("all_to_all: algorithm '") + algo_name(algo) +
                                "' does not apply to all_to_all (pairwise, flat, cma or symmetric)");
  if (algo == Algo::kSymmetric && !place.stride)
    reject(Kind::kAllToAll, "all_to_all: the symmetric algorithm needs an input from this "
                                "communicator's empty/zeros");
  const bool sym = algo == Algo::kSymmetric;
  const Desc d = make_desc(Kind::kAllToAll, dt, RedOp::kNone, algo, 0, m, esz, sym ? place.tag : 0);
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  if (algo == Algo::kCma || sym) {
    single_copy_gather(d, src, dst, block, true, Kind::kAllToAll, sym ? place.stride : 0,
                       place.offset);
    return algo;
  }
  if (algo == Algo::kPairwise) {
    enter(d);
    pairwise_all_to_all(src, dst, m, esz);
    return algo;
  }
  flat_all_to_all(src, dst, block, d);
  return algo;
}

// Flat: each round, every rank writes a piece of every peer's block into its slot (the slot
// split in n equal parts), posts it, copies the same piece of its own block, then copies its
// piece out of every peer's slot. When every block fits (n * block <= slot) there is one round,
// written before entering, so the entry doubles as "posted".
void Communicator::flat_all_to_all(const char* in, char* out, size_t block, const Desc& d) {
  const int n = size_, r = rank_;
  const bool stream = should_stream(size_t(n) * block, kStreamMinGatherBytes);
  uint64_t moved = 0;
  if (n == 1 || !block) {
    enter(d);
    if (block) copy_bytes(out, in, block, stream);
    account(Kind::kAllToAll, Algo::kFlat, 0, 0);
    return;
  }
  const bool one_round = size_t(n) * block <= slot_bytes_;
  const size_t piece = one_round ? block : slot_bytes_ / size_t(n);
  if (!one_round) enter(d);
  for (size_t lo = 0; lo < block; lo += piece) {
    const size_t len = std::min(piece, block - lo);
    const uint64_t t = round_ + 1;
    acquire_slot(t, all_peers_);
    char* mine = slot(r, t);
    for (int p : all_peers_) std::memcpy(mine + size_t(p) * piece, in + size_t(p) * block + lo, len);
    if (one_round) enter(d);
    else publish_posted(t);
    copy_bytes(out + size_t(r) * block + lo, in + size_t(r) * block + lo, len, stream);
    for (int s = 1; s < n; ++s) {  // peers in the order r+1, r+2, ...: spread the readers
      const int p = (r + s) % n;
      if (!one_round) wait_geq(posted(p), t, p);
      copy_bytes(out + size_t(p) * block + lo, slot(p, t) + size_t(r) * piece, len, stream);
    }
    publish_consumed(t);
    round_ += 1;
    moved += uint64_t(n - 1) * len;
  }
  account(Kind::kAllToAll, Algo::kFlat, moved, moved);
}

// Pairwise steps through the slots; a large output is written with non-temporal stores, as in
// the flat all-gather. The rank's own block is copied chunk by chunk in the first step, after its
// chunk is posted: that fills the time until the first peer's chunk arrives.
void Communicator::pairwise_all_to_all(const char* in, char* out, size_t m, size_t esz) {
  const int n = size_, r = rank_;
  const size_t block = m * esz;
  const bool stream = should_stream(size_t(n) * block, kStreamMinGatherBytes);
  if (n == 1 && block) copy_bytes(out, in, block, stream);
  uint64_t sent = 0, received = 0;
  if (n > 1 && m > 0) {
    const size_t nchunks = ceil_div(block, slot_bytes_);
    for (size_t c = 0; c < nchunks; ++c) {
      const size_t lo = c * slot_bytes_;
      const size_t bytes = std::min(slot_bytes_, block - lo);
      for (int s = 1; s < n; ++s) {
        const uint64_t t = round_ + uint64_t(s);
        const int to = (r + s) % n, from = (r - s + n) % n;
        one_peer_[0] = to;
        acquire_slot(t, one_peer_);
        std::memcpy(slot(r, t), in + size_t(to) * block + lo, bytes);
        publish_posted(t);
        // This chunk of the rank's own block, while the first peer copies into its slot.
        if (s == 1) copy_bytes(out + size_t(r) * block + lo, in + size_t(r) * block + lo, bytes, stream);
        wait_geq(posted(from), t, from);
        copy_bytes(out + size_t(from) * block + lo, slot(from, t), bytes, stream);
        publish_consumed(t);
        sent += bytes;
        received += bytes;
      }
      round_ += uint64_t(n - 1);
    }
  }
  account(Kind::kAllToAll, Algo::kPairwise, sent, received);
}

std::vector<int64_t> Communicator::all_to_allv_counts(const std::vector<int64_t>& send_counts,
                                                      size_t row_elems, DType dt, size_t esz) {
  const int n = size_, r = rank_;
  if (send_counts.size() != size_t(n))
    reject(Kind::kAllToAllV, "all_to_allv: need one send count per rank");
  for (int64_t v : send_counts)
    if (v < 0) reject(Kind::kAllToAllV, "all_to_allv: send counts must be >= 0");
  // root = 0 marks the counts phase, root = 1 the data phase of the same call.
  enter(make_desc(Kind::kAllToAllV, dt, RedOp::kNone,
             Algo::kPairwise, 0, row_elems, esz));
  allv_matrix_.assign(size_t(n) * n, 0);
  std::copy(send_counts.begin(), send_counts.end(), allv_matrix_.begin() + size_t(r) * n);
  if (n > 1) {
    const uint64_t t = round_ + 1;
    acquire_slot(t, all_peers_);
    std::memcpy(slot(r, t), send_counts.data(), size_t(n) * sizeof(int64_t));
    publish_posted(t);
    for (int p : all_peers_) {
      wait_geq(posted(p), t, p);
      std::memcpy(&allv_matrix_[size_t(p) * n], slot(p, t), size_t(n) * sizeof(int64_t));
    }
    publish_consumed(t);
    round_ += 1;
    account(Kind::kInternal, Algo::kPairwise, uint64_t(n) * 8, uint64_t(n - 1) * n * 8);
  }
  allv_row_bytes_ = row_elems * esz;
  allv_row_elems_ = row_elems;
  allv_dtype_ = dt;
  allv_esz_ = esz;
  std::vector<int64_t> recv(static_cast<size_t>(n), 0);
  for (int p = 0; p < n; ++p) recv[size_t(p)] = allv_matrix_[size_t(p) * n + r];
  return recv;
}

void Communicator::all_to_allv_data(const void* in_v, void* out_v, int64_t out_rows) {
  const int n = size_, r = rank_;
  if (allv_matrix_.size() != size_t(n) * n)
    throw std::logic_error("all_to_allv_data called without all_to_allv_counts");
  auto M = [&](int src, int dst) { return size_t(allv_matrix_[size_t(src) * n + dst]); };
  // Whether `out` holds what this rank receives is known only now, after the counts exchange,
  // when every peer is committed to the data phase: each rank says so in its entry, and all
  // give up together where any `out` is wrong (one error, the lowest such rank's, everywhere).
  int64_t need = 0;
  for (int p = 0; p < n; ++p) need += int64_t(M(p, r));
  const int64_t check[3] = {out_rows != need, out_rows, need};
  const uint64_t k = enter(make_desc(Kind::kAllToAllV, allv_dtype_, RedOp::kNone,
                                     Algo::kPairwise, 1, allv_row_elems_, allv_esz_),
                           check, sizeof(check));
  for (int p = 0; p < n; ++p) {
    int64_t theirs[3];
    std::memcpy(theirs, p == r ? reinterpret_cast<const char*>(check) : entry_payload(p, k),
                sizeof(theirs));
    if (theirs[0])
      throw std::invalid_argument("all_to_allv: rank " + std::to_string(p) + "'s out has " +
                                  std::to_string(theirs[1]) + " rows, but it receives " +
                                  std::to_string(theirs[2]));
  }
  const char* in = static_cast<const char*>(in_v);
  char* out = static_cast<char*>(out_v);
  const size_t rb = allv_row_bytes_;
  std::vector<size_t> send_off(size_t(n) + 1, 0), recv_off(size_t(n) + 1, 0);
  for (int j = 0; j < n; ++j) {
    send_off[size_t(j) + 1] = send_off[size_t(j)] + M(r, j) * rb;
    recv_off[size_t(j) + 1] = recv_off[size_t(j)] + M(j, r) * rb;
  }
  if (M(r, r) != 0 && rb != 0) std::memcpy(out + recv_off[size_t(r)], in + send_off[size_t(r)], M(r, r) * rb);
  uint64_t sent = 0, received = 0;
  for (int s = 1; s < n && rb; ++s) {
    // Every rank computes the same number of rounds for this step from the shared matrix.
    size_t longest = 0;
    for (int i = 0; i < n; ++i) longest = std::max(longest, M(i, (i + s) % n) * rb);
    const size_t nchunks = ceil_div(longest, slot_bytes_);
    const int to = (r + s) % n, from = (r - s + n) % n;
    const size_t out_bytes = M(r, to) * rb, in_bytes = M(from, r) * rb;
    for (size_t c = 0; c < nchunks; ++c) {
      const uint64_t t = round_ + 1;
      const size_t lo = c * slot_bytes_;
      const size_t ob = lo < out_bytes ? std::min(slot_bytes_, out_bytes - lo) : 0;
      const size_t ib = lo < in_bytes ? std::min(slot_bytes_, in_bytes - lo) : 0;
      one_peer_[0] = to;
      acquire_slot(t, one_peer_);
      if (ob) std::memcpy(slot(r, t), in + send_off[size_t(to)] + lo, ob);
      publish_posted(t);
      wait_geq(posted(from), t, from);
      if (ib) std::memcpy(out + recv_off[size_t(from)] + lo, slot(from, t), ib);
      publish_consumed(t);
      round_ += 1;
      sent += ob;
      received += ib;
    }
  }
  account(Kind::kAllToAllV, Algo::kPairwise, sent, received);
}

}  // namespace shardcore
