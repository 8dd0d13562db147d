// TCP movers: value bytes ride inside the frame, checksummed as they are
// copied between the socket and the caller's memory (hot in cache).
#include <algorithm>

#include "../common/crc32c.hpp"
#include "../common/error.hpp"
#include "../wire/protocol.hpp"
#include "mover.hpp"

namespace memkv::transport {

using namespace wire;

namespace {

// Receives and drops n bytes, extending *crc over them when given.
void discard(Session& s, uint64_t n, int timeout_ms, uint32_t* crc) {
  if (!n) return;
  static thread_local std::vector<uint8_t> scratch(1 << 20);
  while (n) {
    size_t c = static_cast<size_t>(std::min<uint64_t>(n, scratch.size()));
    s.sock().recv_exact(scratch.data(), c, timeout_ms);
    if (crc) *crc = crc32c(*crc, scratch.data(), c);
    n -= c;
  }
}

class NoPendingWrite : public PendingWrite {};

class StreamedRead : public PendingRead {
 public:
  explicit StreamedRead(const std::vector<ReadTarget>& t) : targets_(t) {}
  uint64_t reply_data_len(uint64_t value_bytes) const override { return value_bytes; }
  uint32_t land(Session& s, size_t k, uint64_t size, uint64_t len, int timeout_ms) override {
    return land_streamed(s, targets_[k], size, len, timeout_ms);
  }

 private:
  const std::vector<ReadTarget>& targets_;
};

}  // namespace

void drain(Session& s, uint64_t n, int timeout_ms) { discard(s, n, timeout_ms, nullptr); }

uint32_t land_streamed(Session& s, const ReadTarget& t, uint64_t size, uint64_t len, int timeout_ms) {
  uint32_t crc = 0;
  auto fold = [&](const uint8_t* p, size_t m) { crc = crc32c(crc, p, m); };
  if (!t.segs) {
    uint8_t* dst = t.alloc(size, len);
    if (len) s.sock().recv_exact(dst, len, timeout_ms, fold);
    return crc;
  }
  // Object bytes [start, stop) arrive; each lands straight in its segment.
  const uint64_t start = t.lo, stop = t.lo + len;
  uint64_t pos = start;
  for (const Segment& g : *t.segs) {
    if (g.offset >= stop) break;
    discard(s, g.offset - pos, timeout_ms, &crc);
    uint64_t n = std::min(g.len, stop - g.offset);
    if (n) s.sock().recv_exact(g.ptr, n, timeout_ms, fold);
    pos = g.offset + n;
  }
  discard(s, stop - pos, timeout_ms, &crc);
  return crc;
}

std::unique_ptr<PendingWrite> TcpClientMover::send_values(Session& s, uint8_t op, std::vector<uint8_t> meta,
                                                          const std::vector<std::vector<struct iovec>>& values,
                                                          int timeout_ms) {
  s.send_sealed(op, meta, values, timeout_ms);
  return std::make_unique<NoPendingWrite>();
}

std::unique_ptr<PendingRead> TcpClientMover::send_read(Session& s, uint8_t op, std::vector<uint8_t> meta,
                                                       const std::vector<ReadTarget>& targets, int timeout_ms) {
  s.send_frame(op, 0, meta, nullptr, 0, 0, timeout_ms);
  return std::make_unique<StreamedRead>(targets);
}

uint64_t TcpNodeMover::request_data_len(uint64_t value_bytes, uint32_t items) const {
  return value_bytes + uint64_t{items} * kSealLen;
}

uint32_t TcpNodeMover::receive(Session& s, uint32_t, uint8_t* dst, uint64_t size, int timeout_ms) {
  uint32_t crc = 0;
  if (size) s.sock().recv_exact(dst, size, timeout_ms, [&](const uint8_t* p, size_t n) { crc = crc32c(crc, p, n); });
  return crc;
}

void TcpNodeMover::skip(Session& s, uint32_t, uint64_t size, int timeout_ms) { drain(s, size, timeout_ms); }

void TcpNodeMover::reply(Session& s, uint8_t op, uint16_t status, const std::vector<uint8_t>& meta,
                         const std::vector<struct iovec>& values, int timeout_ms) {
  uint64_t total = 0;
  std::vector<struct iovec> iov;
  iov.reserve(values.size());
  for (const struct iovec& v : values) {
    if (!v.iov_len) continue;
    iov.push_back(v);
    total += v.iov_len;
  }
  s.send_frame(op, status, meta, iov.data(), static_cast<int>(iov.size()), total, timeout_ms);
}

}  // namespace memkv::transport
