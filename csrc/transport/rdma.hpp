// RDMA verbs building blocks shared by the client and the node: an opened
// device (context, protection domain, the port and GID used), memory
// registrations, and one reliable-connected queue pair with its completion
// queue. Queue pairs are connected with QpInfo exchanged over the already
// authenticated TCP session, so no queue pair exists for an unauthenticated
// peer.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../common/bytes.hpp"
#include "verbs.hpp"

namespace memkv::rdma {

// The RDMA devices this host shows (from libibverbs; empty when it cannot load).
std::vector<std::string> list_devices();
// "a, b" (or "none"), for messages naming devices.
std::string names_of(const std::vector<std::string>& names);

// What one side of a queue pair tells the other (sent inside MAC'd frames).
struct QpInfo {
  uint8_t gid[16] = {};
  uint32_t qpn = 0;
  uint32_t psn = 0;
  uint16_t lid = 0;
  uint8_t mtu = 0;         // ibv_mtu enum value
  uint8_t link_layer = 0;  // IBV_LINK_LAYER_*
  void write(ByteWriter& w) const;
  static QpInfo read(ByteReader& r);
};

#if MEMKV_WITH_VERBS

class Device {
 public:
  // Opens `name` (port 1). Throws a Config error naming the visible devices
  // when there is no such device, or why it cannot be used.
  static std::shared_ptr<Device> open(const std::string& name);
  ~Device();
  Device(const Device&) = delete;

  const std::string& name() const { return name_; }
  const Verbs& v() const { return *v_; }
  ibv_context* ctx() const { return ctx_; }
  ibv_pd* pd() const { return pd_; }
  uint8_t port() const { return 1; }
  int gid_index() const { return gid_index_; }
  const ibv_gid& gid() const { return gid_; }
  uint16_t lid() const { return lid_; }
  ibv_mtu mtu() const { return mtu_; }
  uint8_t link_layer() const { return link_layer_; }
  int max_rd_atomic() const { return max_rd_atomic_; }
  int max_qp_wr() const { return max_qp_wr_; }

 private:
  Device() = default;
  const Verbs* v_ = nullptr;
  std::string name_;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  int gid_index_ = 0;
  ibv_gid gid_{};
  uint16_t lid_ = 0;
  ibv_mtu mtu_ = IBV_MTU_1024;
  uint8_t link_layer_ = 0;
  int max_rd_atomic_ = 1;
  int max_qp_wr_ = 128;
};
using DevicePtr = std::shared_ptr<Device>;

// One registration of [addr, addr + len) with a device.
class MemoryRegion {
 public:
  // access: IBV_ACCESS_* flags. Throws when the memory cannot be registered.
  MemoryRegion(DevicePtr dev, void* addr, uint64_t len, int access);
  // Takes over a registration made another way (dma-buf, device_memory.hpp).
  MemoryRegion(DevicePtr dev, ibv_mr* mr) : dev_(std::move(dev)), mr_(mr) {}
  ~MemoryRegion();
  MemoryRegion(const MemoryRegion&) = delete;
  uint32_t lkey() const { return mr_->lkey; }
  uint32_t rkey() const { return mr_->rkey; }
  uint8_t* base() const { return static_cast<uint8_t*>(mr_->addr); }
  uint64_t length() const { return mr_->length; }
  bool covers(const void* p, uint64_t n) const {
    auto* b = static_cast<const uint8_t*>(p);
    return b >= base() && n <= length() && static_cast<uint64_t>(b - base()) <= length() - n;
  }
  const Device& device() const { return *dev_; }

 private:
  DevicePtr dev_;
  ibv_mr* mr_ = nullptr;
};

// One RDMA READ or WRITE between local registered memory and a peer's.
struct RemoteOp {
  uint8_t* local = nullptr;
  uint32_t lkey = 0;
  uint64_t remote = 0;
  uint32_t rkey = 0;
  uint64_t len = 0;
};

// A reliable-connected queue pair and its completion queue. Only the node
// posts work (it reads puts from and writes gets into client memory), so a
// client's queue pair only answers and its completion queue stays empty.
class QueuePair {
 public:
  explicit QueuePair(DevicePtr dev);
  ~QueuePair();
  QueuePair(const QueuePair&) = delete;

  QpInfo local_info() const;
  // INIT -> RTR -> RTS against the peer's info.
  void connect(const QpInfo& peer);
  // on_done(op index, offset in the op, length) is called for each work
  // request as it completes, in posting order (RC completes in order), so
  // the caller can checksum landed bytes while the rest are in flight.
  using OnDone = std::function<void(size_t, uint64_t, uint64_t)>;
  // Posts every op (READ when `read`, else WRITE), split into work requests
  // of at most kMaxWrBytes with a bounded number in flight (waiting for
  // earlier ones as needed), and returns a ticket for wait(). `ops` and
  // whatever on_done touches must stay valid until then.
  uint64_t post(bool read, const std::vector<RemoteOp>& ops, int timeout_ms, const std::string& peer,
                OnDone on_done = nullptr);
  // Returns once every work request up to `ticket` has completed. On a failed
  // completion, or when nothing completes for timeout_ms, the queue pair is
  // killed and drained (no later READ or WRITE can touch our memory) and a
  // Connection error names the peer and the device; the connection must be
  // rebuilt.
  void wait(uint64_t ticket, int timeout_ms, const std::string& peer);
  void run(bool read, const std::vector<RemoteOp>& ops, int timeout_ms, const std::string& peer,
           OnDone on_done = nullptr) {
    wait(post(read, ops, timeout_ms, peer, std::move(on_done)), timeout_ms, peer);
  }
  const Device& device() const { return *dev_; }
  // Moves the queue pair to the error state and waits (briefly) for the
  // flushed work requests: the peer's READs and WRITEs of our memory fail
  // from now on, so buffers of a request given up on can be reused.
  void kill();
  bool broken() const { return broken_; }

  static constexpr uint64_t kMaxWrBytes = 1 << 20;

 private:
  struct Posted {
    uint64_t ticket;
    size_t op;
    uint64_t off, len;
    bool read;
    std::shared_ptr<OnDone> on_done;
  };
  // Waits for at least one completion and runs the callbacks of what completed.
  void reap_some(int timeout_ms, const std::string& peer);
  [[noreturn]] void fail_transfer(const std::string& peer, bool read, const std::string& why);
  DevicePtr dev_;
  ibv_comp_channel* channel_ = nullptr;
  ibv_cq* cq_ = nullptr;
  ibv_qp* qp_ = nullptr;
  uint32_t psn_ = 0;
  int depth_ = 64;
  bool broken_ = false;
  std::deque<Posted> posted_;  // in flight, in posting order
  uint64_t next_ticket_ = 0;
};

#endif

}  // namespace memkv::rdma
