#include "rdma_client.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>

#include "../common/crc32c.hpp"
#include "../common/error.hpp"
#include "../wire/protocol.hpp"
#include "device_memory.hpp"

namespace memkv::transport {

#if MEMKV_WITH_VERBS

using namespace wire;

// ---- registrations ---------------------------------------------------------------------

void Registrations::add(EntryPtr e) {
  std::unique_lock lk(mu_);
  bytes_ += e->len;
  by_base_[reinterpret_cast<uintptr_t>(e->base)] = std::move(e);
}

bool Registrations::remove(const void* base) {
  std::unique_lock lk(mu_);
  auto it = by_base_.find(reinterpret_cast<uintptr_t>(base));
  if (it == by_base_.end()) return false;
  bytes_ -= it->second->len;
  by_base_.erase(it);  // in-flight transfers still hold the entry
  return true;
}

Registrations::EntryPtr Registrations::find(const void* p, uint64_t n) const {
  std::shared_lock lk(mu_);
  if (by_base_.empty()) return nullptr;
  auto a = reinterpret_cast<uintptr_t>(p);
  auto it = by_base_.upper_bound(a);
  if (it == by_base_.begin()) return nullptr;
  --it;
  const Entry& e = *it->second;
  uintptr_t base = reinterpret_cast<uintptr_t>(e.base);
  if (a - base <= e.len && n <= e.len - (a - base)) return it->second;
  return nullptr;
}

uint64_t Registrations::bytes() const {
  std::shared_lock lk(mu_);
  return bytes_;
}

// ---- staging -------------------------------------------------------------------------

StagingPool::StagingPool(const std::vector<rdma::DevicePtr>& rails, uint64_t total_bytes, uint64_t slot_bytes)
    : slot_bytes_(slot_bytes) {
  if (slot_bytes == 0 || total_bytes < slot_bytes)
    fail(ErrorKind::Config, "RDMA staging: MEMKV_STAGING_SLOT_MB must be at least 1 and at most MEMKV_STAGING_SIZE_MB");
  n_slots_ = static_cast<size_t>(total_bytes / slot_bytes);
  total_ = n_slots_ * slot_bytes;
  void* p = mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED)
    fail(ErrorKind::Config, "RDMA staging: cannot allocate " + std::to_string(total_ >> 20) +
                                " MiB (lower MEMKV_STAGING_SIZE_MB)");
  base_ = static_cast<uint8_t*>(p);
  try {
    for (const rdma::DevicePtr& d : rails)
      mrs_.push_back(std::make_unique<rdma::MemoryRegion>(
          d, base_, total_, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE));
  } catch (...) {
    mrs_.clear();
    munmap(base_, total_);
    throw;
  }
  for (size_t i = n_slots_; i-- > 0;) free_.push_back(i);
}

StagingPool::~StagingPool() {
  mrs_.clear();
  if (base_) munmap(base_, total_);
}

std::vector<size_t> StagingPool::take(size_t n, int timeout_ms) {
  std::unique_lock lk(mu_);
  if (free_.size() < n) {
    ++waits_;
    if (!cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return free_.size() >= n; }))
      fail(ErrorKind::Server, "no RDMA staging slot free within " + std::to_string(timeout_ms) +
                                  " ms (raise MEMKV_STAGING_SIZE_MB, or register the buffers)");
  }
  std::vector<size_t> out(free_.end() - static_cast<std::ptrdiff_t>(n), free_.end());
  free_.resize(free_.size() - n);
  return out;
}

void StagingPool::give(const std::vector<size_t>& slots) {
  if (slots.empty()) return;
  {
    std::lock_guard lk(mu_);
    free_.insert(free_.end(), slots.begin(), slots.end());
  }
  cv_.notify_all();
}

// ---- per-request state -----------------------------------------------------------------

namespace {

// Slots and registrations one request holds until it ends. A request that
// ends by an exception (a timeout, a dead connection) may still have the node
// moving bytes: its queue pair is killed first, so no late WRITE lands in a
// slot or buffer that is reused.
struct Holdings {
  explicit Holdings(rdma::QueuePair* q) : qp(q) {}
  rdma::QueuePair* qp;
  const int exceptions_at_start = std::uncaught_exceptions();
  StagingPool* pool = nullptr;
  std::vector<size_t> slots;
  std::vector<std::unique_ptr<rdma::MemoryRegion>> temp;
  std::vector<Registrations::EntryPtr> pinned;  // explicit registrations in use
  ~Holdings() {
    if (std::uncaught_exceptions() > exceptions_at_start) qp->kill();
    temp.clear();
    if (pool) pool->give(slots);
  }
};

// Places pieces into staging slots first-fit in order; a piece never
// straddles two slots. Returns false when a piece does not fit one slot.
struct SlotPacker {
  uint64_t slot_bytes;
  size_t max_slots;
  size_t slots = 0;
  uint64_t used = 0;  // in the current slot
  bool place(uint64_t n, size_t* slot, uint64_t* off) {
    if (n > slot_bytes) return false;
    if (slots == 0 || used + n > slot_bytes) {
      if (slots == max_slots) return false;
      ++slots;
      used = 0;
    }
    *slot = slots - 1;
    *off = used;
    used += n;
    return true;
  }
};

void put_desc(ByteWriter& w, const void* addr, uint32_t rkey, uint64_t len) {
  w.u64(reinterpret_cast<uint64_t>(addr));
  w.u32(rkey);
  w.u64(len);
}

class RdmaPendingWrite : public PendingWrite {
 public:
  explicit RdmaPendingWrite(rdma::QueuePair* qp) : hold(qp) {}
  Holdings hold;
};

// How one read item lands. Gap-free segments are handled one by one:
// registered ones (or ones registered for this request) are written
// straight, the others land in staging and are copied out. A range with gaps
// lands whole in staging (the bytes between segments are checksummed there).
struct SegmentPlan {
  enum { Direct, Staged, Temp } how = Direct;
  size_t slot = 0;
  uint64_t off = 0;
  Registrations::EntryPtr reg;
};
struct ReadPlan {
  bool whole_staged = false;
  bool on_gpu = false;  // some segment is GPU memory: the host cannot checksum what lands
  size_t slot = 0;
  uint64_t off = 0;
  uint64_t range = 0;
  std::vector<SegmentPlan> segs;  // when not whole_staged: one per segment
};

class RdmaPendingRead : public PendingRead {
 public:
  RdmaPendingRead(const std::vector<ReadTarget>& targets, rdma::QueuePair* qp) : hold(qp), targets_(targets) {}
  void set_plans(std::vector<ReadPlan> plans) { plans_ = std::move(plans); }
  Holdings hold;
  uint64_t reply_data_len(uint64_t) const override { return 0; }
  bool verifies(size_t k) const override { return !plans_[k].on_gpu; }
  uint32_t land(Session&, size_t k, uint64_t, uint64_t len, int) override {
    const ReadTarget& t = targets_[k];
    const ReadPlan& p = plans_[k];
    if (len > p.range) fail(ErrorKind::Protocol, "RDMA read reply is longer than the range asked for");
    const uint64_t stop = t.lo + len;
    uint32_t crc = 0;
    if (p.whole_staged) {
      // The node wrote [lo, lo + len) into the slot: checksum it while
      // copying each segment's part out (hot in cache).
      const uint8_t* src = slot_bytes(p.slot, p.off);
      uint64_t pos = t.lo;
      for (const Segment& g : *t.segs) {
        if (g.offset >= stop) break;
        if (g.offset > pos) crc = crc32c(crc, src + (pos - t.lo), g.offset - pos);
        uint64_t n = std::min(g.len, stop - g.offset);
        crc = crc32c_copy(crc, static_cast<uint8_t*>(g.ptr), src + (g.offset - t.lo), n);
        pos = g.offset + n;
      }
      if (stop > pos) crc = crc32c(crc, src + (pos - t.lo), stop - pos);
      return crc;
    }
    for (size_t j = 0; j < t.segs->size(); ++j) {
      const Segment& g = (*t.segs)[j];
      if (g.offset >= stop) break;
      uint64_t n = std::min(g.len, stop - g.offset);
      const SegmentPlan& sp = p.segs[j];
      if (sp.how == SegmentPlan::Staged)
        crc = crc32c_copy(crc, static_cast<uint8_t*>(g.ptr), slot_bytes(sp.slot, sp.off), n);
      else if (!p.on_gpu)
        crc = crc32c(crc, g.ptr, n);
    }
    return crc;
  }

 private:
  const uint8_t* slot_bytes(size_t slot, uint64_t off) const { return hold.pool->slot(hold.slots[slot]) + off; }
  const std::vector<ReadTarget>& targets_;
  std::vector<ReadPlan> plans_;
};

class RdmaClientMover : public ClientMover {
 public:
  RdmaClientMover(RdmaClient& rc, size_t rail, std::unique_ptr<rdma::QueuePair> qp)
      : rc_(rc), rail_(rail), qp_(std::move(qp)) {}
  const char* name() const override { return "rdma"; }
  bool usable() const override { return !qp_->broken(); }
  // GPU memory goes only where it is registered (Direct); anything else in
  // a GPUDirect request is refused by the client before it reaches here.
  bool carries_device_memory() const override { return true; }

  std::unique_ptr<PendingWrite> send_values(Session& s, uint8_t op, std::vector<uint8_t> meta,
                                            const std::vector<std::vector<struct iovec>>& values,
                                            int timeout_ms) override {
    auto pw = std::make_unique<RdmaPendingWrite>(qp_.get());
    Holdings& hold = pw->hold;
    StagingPool& pool = rc_.staging();
    // Pass 1: registered pieces go as they are; the others are packed into
    // staging slots, or registered for this request when they fit none.
    struct Piece {
      enum { Direct, Staged, Temp } how;
      size_t slot = 0;
      uint64_t off = 0;
      Registrations::EntryPtr reg;
    };
    std::vector<std::vector<Piece>> plan(values.size());
    std::vector<bool> on_gpu(values.size(), false);  // the node checksums it (kSegNodeChecksum)
    SlotPacker packer{pool.slot_bytes(), pool.slots()};
    for (size_t i = 0; i < values.size(); ++i) {
      for (const struct iovec& v : values[i]) {
        Piece p{Piece::Direct};
        if (v.iov_len) {
          p.reg = rc_.find(v.iov_base, v.iov_len);
          if (!p.reg) p.how = packer.place(v.iov_len, &p.slot, &p.off) ? Piece::Staged : Piece::Temp;
          else if (p.reg->device) on_gpu[i] = true;
        }
        plan[i].push_back(std::move(p));
      }
    }
    hold.pool = &pool;
    if (packer.slots) hold.slots = pool.take(packer.slots, timeout_ms);
    // Pass 2: descriptors and staging copies (a fully staged value's CRC
    // is folded into its copy).
    ByteWriter sect;
    std::vector<uint32_t> crcs(values.size(), 0);
    std::vector<bool> deferred(values.size(), false);  // CRC computed after the head is sent
    uint64_t direct = 0, staged = 0, temp = 0;
    const uint32_t staging_rkey = pool.region(rail_).rkey();
    for (size_t i = 0; i < values.size(); ++i) {
      uint32_t nseg = 0;
      for (const struct iovec& v : values[i]) nseg += v.iov_len ? 1 : 0;
      sect.u32(nseg | (on_gpu[i] ? kSegNodeChecksum : 0));
      uint32_t crc = 0;
      for (size_t j = 0; j < values[i].size(); ++j) {
        const struct iovec& v = values[i][j];
        if (!v.iov_len) continue;
        Piece& p = plan[i][j];
        switch (p.how) {
          case Piece::Direct:
            put_desc(sect, v.iov_base, p.reg->per_rail[rail_]->rkey(), v.iov_len);
            hold.pinned.push_back(std::move(p.reg));
            direct += v.iov_len;
            deferred[i] = !on_gpu[i];  // GPU bytes cannot be read here: the seal carries CRC 0
            break;
          case Piece::Staged: {
            uint8_t* dst = pool.slot(hold.slots[p.slot]) + p.off;
            crc = crc32c_copy(crc, dst, static_cast<const uint8_t*>(v.iov_base), v.iov_len);
            put_desc(sect, dst, staging_rkey, v.iov_len);
            staged += v.iov_len;
            break;
          }
          case Piece::Temp:
            hold.temp.push_back(
                std::make_unique<rdma::MemoryRegion>(rc_.rail(rail_), v.iov_base, v.iov_len, IBV_ACCESS_REMOTE_READ));
            put_desc(sect, v.iov_base, hold.temp.back()->rkey(), v.iov_len);
            temp += v.iov_len;
            deferred[i] = true;
            break;
        }
      }
      crcs[i] = on_gpu[i] ? 0 : crc;
    }
    rc_.count(direct, staged, temp, false);
    meta.insert(meta.end(), sect.data().begin(), sect.data().end());
    // The node starts READing as soon as it has the metadata; the seals
    // follow, so checksumming registered memory overlaps the transfer.
    FrameHeader h = s.send_unsealed_head(op, kFlagRdma, meta, static_cast<uint32_t>(values.size()), timeout_ms);
    std::vector<uint8_t> seals;
    seals.reserve(std::min<size_t>(values.size(), 4096) * kSealLen);
    auto flush = [&] {
      if (!seals.empty()) s.sock().send_all(seals.data(), seals.size(), timeout_ms);
      seals.clear();
    };
    constexpr uint64_t kFlushBefore = 256 * 1024;  // a CRC this long is worth a send of the seals before it
    for (size_t i = 0; i < values.size(); ++i) {
      if (deferred[i]) {
        uint64_t n = 0;
        for (const struct iovec& v : values[i]) n += v.iov_len;
        if (n >= kFlushBefore) flush();
        uint32_t crc = 0;
        for (const struct iovec& v : values[i]) crc = crc32c(crc, v.iov_base, v.iov_len);
        crcs[i] = crc;
      }
      seals.resize(seals.size() + kSealLen);
      s.make_seal(h, static_cast<uint32_t>(i), crcs[i], seals.data() + seals.size() - kSealLen);
    }
    flush();
    return pw;
  }

  std::unique_ptr<PendingRead> send_read(Session& s, uint8_t op, std::vector<uint8_t> meta,
                                         const std::vector<ReadTarget>& targets, int timeout_ms) override {
    StagingPool& pool = rc_.staging();
    SlotPacker packer{pool.slot_bytes(), pool.slots()};
    std::vector<ReadPlan> plans(targets.size());
    // Reads of unknown size, and large ranges with gaps, stream over TCP
    // instead (the whole frame).
    bool inline_frame = false;
    for (size_t k = 0; k < targets.size() && !inline_frame; ++k) {
      const ReadTarget& t = targets[k];
      if (!t.segs) {
        inline_frame = true;
        break;
      }
      ReadPlan& p = plans[k];
      uint64_t pos = t.lo;
      bool contiguous = true;
      for (const Segment& g : *t.segs) {
        contiguous &= g.offset == pos;
        pos = g.offset + g.len;
      }
      p.range = pos - t.lo;
      if (!contiguous && gpu_target(*t.segs))
        fail(ErrorKind::Config, "a read into GPU memory must cover its range without gaps (GPUDirect)");
      if (!contiguous) {
        p.whole_staged = packer.place(p.range, &p.slot, &p.off);
        inline_frame = !p.whole_staged;
        continue;
      }
      for (const Segment& g : *t.segs) {
        SegmentPlan sp;
        if (g.len && !(sp.reg = rc_.find(g.ptr, g.len)))
          sp.how = packer.place(g.len, &sp.slot, &sp.off) ? SegmentPlan::Staged : SegmentPlan::Temp;
        if (sp.reg && sp.reg->device) p.on_gpu = true;
        p.segs.push_back(std::move(sp));
      }
    }
    if (inline_frame) {
      rc_.count(0, 0, 0, true);
      return TcpClientMover().send_read(s, op, std::move(meta), targets, timeout_ms);
    }
    auto pr = std::make_unique<RdmaPendingRead>(targets, qp_.get());
    Holdings& hold = pr->hold;
    hold.pool = &pool;
    if (packer.slots) hold.slots = pool.take(packer.slots, timeout_ms);
    const uint32_t staging_rkey = pool.region(rail_).rkey();
    ByteWriter sect;
    uint64_t zero_copy = 0, staged = 0, temp = 0;
    for (size_t k = 0; k < targets.size(); ++k) {
      ReadPlan& p = plans[k];
      if (p.whole_staged) {
        sect.u32(p.range ? 1 : 0);
        if (p.range) put_desc(sect, pool.slot(hold.slots[p.slot]) + p.off, staging_rkey, p.range);
        staged += p.range;
        continue;
      }
      uint32_t nseg = 0;
      for (const Segment& g : *targets[k].segs) nseg += g.len ? 1 : 0;
      sect.u32(nseg);
      for (size_t j = 0; j < p.segs.size(); ++j) {
        const Segment& g = (*targets[k].segs)[j];
        if (!g.len) continue;
        SegmentPlan& sp = p.segs[j];
        switch (sp.how) {
          case SegmentPlan::Direct:
            put_desc(sect, g.ptr, sp.reg->per_rail[rail_]->rkey(), g.len);
            hold.pinned.push_back(std::move(sp.reg));
            zero_copy += g.len;
            break;
          case SegmentPlan::Staged:
            put_desc(sect, pool.slot(hold.slots[sp.slot]) + sp.off, staging_rkey, g.len);
            staged += g.len;
            break;
          case SegmentPlan::Temp:
            hold.temp.push_back(std::make_unique<rdma::MemoryRegion>(
                rc_.rail(rail_), g.ptr, g.len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE));
            put_desc(sect, g.ptr, hold.temp.back()->rkey(), g.len);
            temp += g.len;
            break;
        }
      }
    }
    // The plans' registrations were moved into `hold`; land() needs only how and where.
    pr->set_plans(std::move(plans));
    rc_.count(zero_copy, staged, temp, false);
    meta.insert(meta.end(), sect.data().begin(), sect.data().end());
    s.send_frame(op, 0, meta, nullptr, 0, 0, timeout_ms, kFlagRdma);
    return pr;
  }

 private:
  bool gpu_target(const SegmentList& segs) const {
    for (const Segment& g : segs)
      if (auto r = g.len ? rc_.find(g.ptr, g.len) : nullptr; r && r->device) return true;
    return false;
  }
  RdmaClient& rc_;
  size_t rail_;
  std::unique_ptr<rdma::QueuePair> qp_;  // the node's peer; must live as long as the connection
};

}  // namespace

// ---- the client-wide state -------------------------------------------------------------

namespace {
std::vector<rdma::DevicePtr> open_rails(const std::vector<std::string>& devices) {
  if (devices.empty())
    fail(ErrorKind::Config, "RDMA needs MEMKV_RDMA_DEVICES (e.g. mlx5_0,mlx5_1); visible devices: " +
                                rdma::names_of(rdma::list_devices()));
  std::vector<rdma::DevicePtr> rails;
  for (const std::string& d : devices) rails.push_back(rdma::Device::open(d));
  return rails;
}
}  // namespace

RdmaClient::RdmaClient(const std::vector<std::string>& devices, uint64_t staging_bytes, uint64_t slot_bytes)
    : rails_(open_rails(devices)), staging_(rails_, staging_bytes, slot_bytes) {}

void RdmaClient::register_memory(void* p, uint64_t n) {
  auto e = std::make_shared<Registrations::Entry>();
  e->base = static_cast<uint8_t*>(p);
  e->len = n;
  for (const rdma::DevicePtr& d : rails_)
    e->per_rail.push_back(std::make_unique<rdma::MemoryRegion>(
        d, p, n, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE));
  regs_.add(std::move(e));
}

std::string RdmaClient::register_device_memory(void* p, uint64_t n) {
  auto e = std::make_shared<Registrations::Entry>();
  e->base = static_cast<uint8_t*>(p);
  e->len = n;
  e->device = true;
  std::string how;
  for (const rdma::DevicePtr& d : rails_)
    e->per_rail.push_back(rdma::register_device_memory(
        d, p, n, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE, &how));
  regs_.add(std::move(e));
  return how;
}

bool RdmaClient::unregister_memory(void* p) { return regs_.remove(p); }

void RdmaClient::count(uint64_t zero_copy, uint64_t staged, uint64_t temp, bool inline_frame) {
  std::lock_guard lk(stats_mu_);
  stats_.zero_copy_bytes += zero_copy;
  stats_.staged_bytes += staged;
  stats_.temp_registered_bytes += temp;
  stats_.inline_frames += inline_frame ? 1 : 0;
}

RdmaClientStats RdmaClient::stats() const {
  std::lock_guard lk(stats_mu_);
  RdmaClientStats s = stats_;
  s.staging_waits = staging_.waits();
  s.registered_bytes = regs_.bytes();
  return s;
}

std::unique_ptr<ClientMover> RdmaClient::connect(Session& s, size_t rail, int timeout_ms, std::string* declined) {
  auto qp = std::make_unique<rdma::QueuePair>(this->rail(rail));
  ByteWriter m;
  m.u8(1);  // setup version
  m.u32(static_cast<uint32_t>(rail));
  qp->local_info().write(m);
  s.send_frame(kRdmaConnect, 0, m.data(), nullptr, 0, 0, timeout_ms);
  FrameHeader h;
  std::vector<uint8_t> meta;
  if (!s.recv_frame(&h, &meta, timeout_ms, timeout_ms))
    fail(ErrorKind::Connection, "connection to " + s.sock().peer() + " closed during RDMA setup");
  if (h.op != kRdmaConnect) fail(ErrorKind::Protocol, "reply from " + s.sock().peer() + " answers a different op");
  drain(s, h.data_len, timeout_ms);
  ByteReader r(meta.data(), meta.size());
  if (h.status == kRdmaUnavailable || h.status == kBadRequest) {
    // kBadRequest: a node from before RDMA_CONNECT existed.
    *declined = h.status == kBadRequest ? std::string("the node does not know RDMA_CONNECT (upgrade it)")
                                        : std::string(r.key());
    return nullptr;
  }
  if (h.status != kOk)
    fail(ErrorKind::Server, "RDMA setup with " + s.sock().peer() + " failed: " + status_name(h.status));
  rdma::QpInfo peer = rdma::QpInfo::read(r);
  qp->connect(peer);
  return std::make_unique<RdmaClientMover>(*this, rail % rails_.size(), std::move(qp));
}

#endif

}  // namespace memkv::transport
