#include "rdma_node.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <map>
#include <chrono>
#include <cstring>

#include "../common/crc32c.hpp"
#include "../common/error.hpp"
#include "../common/log.hpp"
#include "../wire/protocol.hpp"

namespace memkv::transport {

#if MEMKV_WITH_VERBS

using namespace wire;

namespace {

// Sanity bounds on what a client may describe (the metadata limit bounds the rest).
constexpr uint32_t kMaxDescsPerItem = 1 << 16;
constexpr uint64_t kBounceBytes = 4ull << 20;

struct Desc {
  uint64_t addr;
  uint32_t rkey;
  uint64_t len;
};

// Appends ops moving local [p, p + n) to/from the descriptor stream `d`,
// starting `at` bytes into it.
void map_ops(std::vector<rdma::RemoteOp>& ops, uint8_t* p, uint32_t lkey, uint64_t n, const std::vector<Desc>& d,
             uint64_t at) {
  uint64_t pos = 0;
  for (const Desc& x : d) {
    if (!n) return;
    if (at >= pos + x.len) {
      pos += x.len;
      continue;
    }
    uint64_t skip = at - pos, take = std::min(x.len - skip, n);
    ops.push_back({p, lkey, x.addr + skip, x.rkey, take});
    p += take;
    n -= take;
    at += take;
    pos += x.len;
  }
}

uint64_t total_of(const std::vector<Desc>& d) {
  uint64_t t = 0;
  for (const Desc& x : d) t += x.len;
  return t;
}

class Bounce {
 public:
  explicit Bounce(rdma::DevicePtr dev) {
    void* p = mmap(nullptr, kBounceBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) fail(ErrorKind::Internal, "cannot allocate an RDMA bounce buffer");
    buf_ = static_cast<uint8_t*>(p);
    try {
      mr_ = std::make_unique<rdma::MemoryRegion>(std::move(dev), buf_, kBounceBytes, IBV_ACCESS_LOCAL_WRITE);
    } catch (...) {
      munmap(buf_, kBounceBytes);
      throw;
    }
  }
  ~Bounce() {
    mr_.reset();
    munmap(buf_, kBounceBytes);
  }
  uint8_t* data() const { return buf_; }
  uint32_t lkey() const { return mr_->lkey(); }

 private:
  uint8_t* buf_ = nullptr;
  std::unique_ptr<rdma::MemoryRegion> mr_;
};

class RdmaNodeMover : public NodeMover {
 public:
  RdmaNodeMover(std::unique_ptr<rdma::QueuePair> qp, const RdmaNode& node, size_t device, rdma::DevicePtr dev,
                std::string peer)
      : qp_(std::move(qp)), node_(node), device_(device), bounce_(std::move(dev)), peer_(std::move(peer)) {}

  void begin(ByteReader& in, uint32_t items, bool) override {
    started_.clear();
    descs_.assign(items, {});
    node_crc_.assign(items, false);
    for (uint32_t i = 0; i < items; ++i) {
      uint32_t n = in.u32();
      node_crc_[i] = (n & kSegNodeChecksum) != 0;
      n &= ~kSegNodeChecksum;
      if (n > kMaxDescsPerItem) fail(ErrorKind::Protocol, "RDMA request describes too many segments for one item");
      descs_[i].reserve(n);
      for (uint32_t j = 0; j < n; ++j) {
        Desc d;
        d.addr = in.u64();
        d.rkey = in.u32();
        d.len = in.u64();
        if (d.len == 0 || d.len > kMaxDataLen) fail(ErrorKind::Protocol, "RDMA segment of invalid length");
        descs_[i].push_back(d);
      }
    }
  }

  uint64_t request_data_len(uint64_t, uint32_t items) const override { return uint64_t{items} * kSealLen; }

  bool pipelined() const override { return true; }

  void start_receive(Session&, uint32_t i, uint8_t* dst, uint64_t size, int timeout_ms) override {
    const std::vector<Desc>& d = item(i);
    if (total_of(d) != size) fail(ErrorKind::Protocol, "RDMA segments do not add up to the value's size");
    const rdma::MemoryRegion* mr = size ? local(dst, size) : nullptr;
    if (!mr) return;  // through the bounce buffer, in receive()
    auto st = std::make_unique<Started>();
    map_ops(st->ops, dst, mr->lkey(), size, d, 0);
    // Each piece is checksummed as it lands, while later ones are in flight.
    Started* raw = st.get();
    st->ticket = qp_->post(true, st->ops, timeout_ms, peer_, [raw](size_t k, uint64_t off, uint64_t len) {
      raw->crc = crc32c(raw->crc, raw->ops[k].local + off, len);
    });
    started_[i] = std::move(st);
  }

  void abandon() override {
    qp_->kill();
    started_.clear();
  }

  uint32_t receive(Session& s, uint32_t i, uint8_t* dst, uint64_t size, int timeout_ms) override {
    if (!started_.count(i)) start_receive(s, i, dst, size, timeout_ms);
    if (auto it = started_.find(i); it != started_.end()) {
      qp_->wait(it->second->ticket, timeout_ms, peer_);
      uint32_t crc = it->second->crc;
      started_.erase(it);
      return crc;
    }
    if (!size) return 0;
    // Value memory outside the registered arena: READ through the bounce
    // buffer a piece at a time.
    const std::vector<Desc>& d = item(i);
    uint32_t crc = 0;
    for (uint64_t off = 0; off < size; off += kBounceBytes) {
      uint64_t n = std::min(kBounceBytes, size - off);
      std::vector<rdma::RemoteOp> ops;
      map_ops(ops, bounce_.data(), bounce_.lkey(), n, d, off);
      qp_->run(true, ops, timeout_ms, peer_);
      crc = crc32c_copy(crc, dst + off, bounce_.data(), n);
    }
    return crc;
  }

  void skip(Session&, uint32_t i, uint64_t, int) override { item(i); }

  bool checksummed_here(uint32_t i) const override { return i < node_crc_.size() && node_crc_[i]; }

  void reply(Session& s, uint8_t op, uint16_t status, const std::vector<uint8_t>& meta,
             const std::vector<struct iovec>& values, int timeout_ms) override {
    if (values.size() > descs_.size()) fail(ErrorKind::Protocol, "RDMA read request lacks its transport section");
    std::vector<rdma::RemoteOp> ops;
    for (size_t k = 0; k < values.size(); ++k) {
      auto* p = static_cast<uint8_t*>(values[k].iov_base);
      uint64_t n = values[k].iov_len;
      if (!n) continue;
      if (total_of(descs_[k]) < n) fail(ErrorKind::Protocol, "RDMA segments are shorter than the range asked for");
      if (const rdma::MemoryRegion* mr = local(p, n)) {
        map_ops(ops, p, mr->lkey(), n, descs_[k], 0);
        continue;
      }
      for (uint64_t off = 0; off < n; off += kBounceBytes) {
        uint64_t m = std::min(kBounceBytes, n - off);
        std::memcpy(bounce_.data(), p + off, m);
        std::vector<rdma::RemoteOp> one;
        map_ops(one, bounce_.data(), bounce_.lkey(), m, descs_[k], off);
        qp_->run(false, one, timeout_ms, peer_);
      }
    }
    if (!ops.empty()) qp_->run(false, ops, timeout_ms, peer_);
    // RC completes a WRITE only once the client's device acknowledged it, so
    // the bytes are in place before the reply that promises them.
    s.send_frame(op, status, meta, nullptr, 0, 0, timeout_ms, kFlagRdma);
  }

 private:
  const std::vector<Desc>& item(uint32_t i) const {
    if (i >= descs_.size()) fail(ErrorKind::Protocol, "RDMA request lacks its transport section");
    return descs_[i];
  }
  const rdma::MemoryRegion* local(const void* p, uint64_t n) const { return node_.local(device_, p, n); }

  std::unique_ptr<rdma::QueuePair> qp_;
  const RdmaNode& node_;
  size_t device_;
  Bounce bounce_;
  std::string peer_;
  std::vector<std::vector<Desc>> descs_;
  std::vector<bool> node_crc_;  // per item: the client sent GPU memory it could not checksum
  // Items whose READs are posted and not yet received.
  struct Started {
    std::vector<rdma::RemoteOp> ops;
    uint64_t ticket = 0;
    uint32_t crc = 0;
  };
  std::map<uint32_t, std::unique_ptr<Started>> started_;
};

}  // namespace

RdmaNode::RdmaNode(const std::vector<std::string>& devices) {
  for (const std::string& d : devices) devices_.push_back(rdma::Device::open(d));
}

RdmaNode::~RdmaNode() {
  if (registrar_.joinable()) registrar_.join();
}

void RdmaNode::add_region_async(std::shared_ptr<Arena> arena) {
  arena_ = std::move(arena);
  registrar_ = std::thread([this] {
    auto t0 = std::chrono::steady_clock::now();
    try {
      for (const rdma::DevicePtr& d : devices_)
        arena_mrs_.push_back(
            std::make_unique<rdma::MemoryRegion>(d, arena_->base(), arena_->size(), IBV_ACCESS_LOCAL_WRITE));
    } catch (const Error& e) {
      log(LogLevel::Warning, std::string("DRAM tier not registered for RDMA (values go through bounce buffers): ") +
                                 e.what());
      return;
    }
    arena_ready_.store(true, std::memory_order_release);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    log(LogLevel::Info, "DRAM tier registered with RDMA device(s) " + devices() + " (" +
                            std::to_string(arena_->size() >> 20) + " MiB in " + std::to_string(ms) + " ms)");
  });
}

const rdma::MemoryRegion* RdmaNode::local(size_t d, const void* p, uint64_t n) const {
  if (!arena_ready_.load(std::memory_order_acquire)) return nullptr;
  const rdma::MemoryRegion& mr = *arena_mrs_[d];
  return mr.covers(p, n) ? &mr : nullptr;
}

std::string RdmaNode::devices() const {
  std::string s;
  for (const auto& d : devices_) s += (s.empty() ? "" : ",") + d->name();
  return s;
}

std::unique_ptr<NodeMover> RdmaNode::accept(Session& s, ByteReader& in, int timeout_ms) {
  uint8_t version = in.u8();
  uint32_t rail = in.u32();
  rdma::QpInfo peer = rdma::QpInfo::read(in);
  in.expect_end();
  ByteWriter out;
  auto decline = [&](const std::string& why) -> std::unique_ptr<NodeMover> {
    out.key(why.substr(0, 1000));
    s.send_frame(kRdmaConnect, kRdmaUnavailable, out.data(), nullptr, 0, 0, timeout_ms);
    return nullptr;
  };
  if (version != 1) return decline("unsupported RDMA setup version " + std::to_string(version));
  size_t d = rail % devices_.size();
  try {
    auto qp = std::make_unique<rdma::QueuePair>(devices_[d]);
    qp->connect(peer);
    rdma::QpInfo mine = qp->local_info();
    auto mover = std::make_unique<RdmaNodeMover>(std::move(qp), *this, d, devices_[d], s.sock().peer());
    mine.write(out);
    out.key(devices_[d]->name());
    s.send_frame(kRdmaConnect, kOk, out.data(), nullptr, 0, 0, timeout_ms);
    return mover;
  } catch (const Error& e) {
    log(LogLevel::Warning, "RDMA setup for " + s.sock().peer() + " on " + devices_[d]->name() + " failed: " + e.what());
    return decline(std::string("RDMA setup on ") + devices_[d]->name() + " failed: " + e.what());
  }
}

#endif

}  // namespace memkv::transport
