#include "rdma.hpp"

#include <poll.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <thread>

#include "../common/error.hpp"
#include "../common/hmac.hpp"

namespace memkv::rdma {

void QpInfo::write(ByteWriter& w) const {
  w.bytes(gid, sizeof(gid));
  w.u32(qpn);
  w.u32(psn);
  w.u16(lid);
  w.u8(mtu);
  w.u8(link_layer);
}

QpInfo QpInfo::read(ByteReader& r) {
  QpInfo q;
  std::memcpy(q.gid, r.raw(sizeof(q.gid)), sizeof(q.gid));
  q.qpn = r.u32();
  q.psn = r.u32();
  q.lid = r.u16();
  q.mtu = r.u8();
  q.link_layer = r.u8();
  return q;
}

std::string names_of(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
  return s.empty() ? "none" : s;
}

#if MEMKV_WITH_VERBS

namespace {

std::string sysfs_line(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}

// RoCE needs a GID whose type and address the peer can route to: prefer a
// RoCE v2 GID carrying an IPv4 address (routable, what RoCE fabrics use),
// then any RoCE v2 GID, then index 0 (InfiniBand, or RoCE v1 only).
int choose_gid_index(const Verbs& v, ibv_context* ctx, const std::string& dev, int table_len) {
  int v2 = -1;
  for (int i = 0; i < table_len && i < 256; ++i) {
    ibv_gid g{};
    if (v.query_gid(ctx, 1, i, &g) != 0) continue;
    bool zero = true;
    for (uint8_t b : g.raw) zero &= b == 0;
    if (zero) continue;
    std::string type =
        sysfs_line("/sys/class/infiniband/" + dev + "/ports/1/gid_attrs/types/" + std::to_string(i));
    if (type.find("v2") == std::string::npos) continue;
    static const uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(g.raw, v4_prefix, sizeof(v4_prefix)) == 0) return i;
    if (v2 < 0) v2 = i;
  }
  return v2 >= 0 ? v2 : 0;
}

}  // namespace

std::vector<std::string> list_devices() {
  std::vector<std::string> out;
  const Verbs* v = verbs(nullptr);
  if (!v) return out;
  int n = 0;
  ibv_device** list = v->get_device_list(&n);
  if (!list) return out;
  for (int i = 0; i < n; ++i) out.emplace_back(v->get_device_name(list[i]));
  v->free_device_list(list);
  return out;
}

std::shared_ptr<Device> Device::open(const std::string& name) {
  std::string why;
  const Verbs* v = verbs(&why);
  if (!v) fail(ErrorKind::Config, "RDMA device " + name + " cannot be used: " + why);
  int n = 0;
  ibv_device** list = v->get_device_list(&n);
  ibv_device* found = nullptr;
  std::vector<std::string> seen;
  for (int i = 0; list && i < n; ++i) {
    seen.emplace_back(v->get_device_name(list[i]));
    if (seen.back() == name) found = list[i];
  }
  std::shared_ptr<Device> d(new Device());
  d->v_ = v;
  d->name_ = name;
  if (found) d->ctx_ = v->open_device(found);
  int open_errno = errno;
  if (list) v->free_device_list(list);
  if (!found)
    fail(ErrorKind::Config, "RDMA device " + name + " not found (visible: " + names_of(seen) +
                                "); check MEMKV_RDMA_DEVICES, and that /dev/infiniband is exposed to this container");
  if (!d->ctx_)
    fail(ErrorKind::Config, "RDMA device " + name + " cannot be opened: " + std::strerror(open_errno) +
                                " (is /dev/infiniband/uverbs* accessible?)");
  ibv_device_attr da{};
  if (v->query_device(d->ctx_, &da) != 0) fail(ErrorKind::Config, "RDMA device " + name + ": query_device failed");
  d->max_rd_atomic_ = std::max(1, std::min(16, std::min(da.max_qp_rd_atom, da.max_qp_init_rd_atom)));
  d->max_qp_wr_ = std::max(16, std::min(256, da.max_qp_wr));
  ibv_port_attr pa{};
  if (v->query_port(d->ctx_, 1, &pa) != 0) fail(ErrorKind::Config, "RDMA device " + name + ": query_port failed");
  if (pa.state != IBV_PORT_ACTIVE)
    fail(ErrorKind::Config, "RDMA device " + name + " port 1 is not active (state " + std::to_string(pa.state) +
                                "); check the link (`rdma link`, `ibv_devinfo`)");
  d->lid_ = pa.lid;
  d->mtu_ = pa.active_mtu;
  d->link_layer_ = pa.link_layer;
  d->gid_index_ = pa.link_layer == IBV_LINK_LAYER_INFINIBAND ? 0 : choose_gid_index(*v, d->ctx_, name, pa.gid_tbl_len);
  if (v->query_gid(d->ctx_, 1, d->gid_index_, &d->gid_) != 0)
    fail(ErrorKind::Config, "RDMA device " + name + ": cannot read GID " + std::to_string(d->gid_index_));
  d->pd_ = v->alloc_pd(d->ctx_);
  if (!d->pd_) fail(ErrorKind::Config, "RDMA device " + name + ": cannot allocate a protection domain");
  return d;
}

Device::~Device() {
  if (pd_) v_->dealloc_pd(pd_);
  if (ctx_) v_->close_device(ctx_);
}

MemoryRegion::MemoryRegion(DevicePtr dev, void* addr, uint64_t len, int access) : dev_(std::move(dev)) {
  // A zero-length registration is refused by some providers: register a byte.
  mr_ = dev_->v().reg_mr(dev_->pd(), addr, len ? len : 1, access);
  if (!mr_)
    fail(ErrorKind::Connection, "cannot register " + std::to_string(len) + " bytes with RDMA device " + dev_->name() +
                                    ": " + std::strerror(errno) + " (raise the locked-memory limit: ulimit -l / "
                                    "LimitMEMLOCK, or docker --ulimit memlock=-1)");
}

MemoryRegion::~MemoryRegion() {
  if (mr_) dev_->v().dereg_mr(mr_);
}

QueuePair::QueuePair(DevicePtr dev) : dev_(std::move(dev)) {
  const Verbs& v = dev_->v();
  depth_ = dev_->max_qp_wr();
  channel_ = v.create_comp_channel(dev_->ctx());
  if (!channel_) fail(ErrorKind::Connection, "RDMA device " + dev_->name() + ": cannot create a completion channel");
  cq_ = v.create_cq(dev_->ctx(), depth_, nullptr, channel_, 0);
  if (!cq_) fail(ErrorKind::Connection, "RDMA device " + dev_->name() + ": cannot create a completion queue");
  ibv_qp_init_attr ia{};
  ia.send_cq = cq_;
  ia.recv_cq = cq_;
  ia.qp_type = IBV_QPT_RC;
  ia.cap.max_send_wr = depth_;
  ia.cap.max_recv_wr = 1;
  ia.cap.max_send_sge = 1;
  ia.cap.max_recv_sge = 1;
  qp_ = v.create_qp(dev_->pd(), &ia);
  if (!qp_) fail(ErrorKind::Connection, "RDMA device " + dev_->name() + ": cannot create a queue pair: " + std::strerror(errno));
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_INIT;
  a.pkey_index = 0;
  a.port_num = dev_->port();
  a.qp_access_flags = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
  if (v.modify_qp(qp_, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) != 0)
    fail(ErrorKind::Connection, "RDMA device " + dev_->name() + ": queue pair INIT failed");
  random_bytes(reinterpret_cast<uint8_t*>(&psn_), sizeof(psn_));
  psn_ &= 0xffffff;
}

QueuePair::~QueuePair() {
  if (!posted_.empty()) kill();  // nothing may land in memory that outlives us
  const Verbs& v = dev_->v();
  if (qp_) v.destroy_qp(qp_);
  if (cq_) v.destroy_cq(cq_);
  if (channel_) v.destroy_comp_channel(channel_);
}

QpInfo QueuePair::local_info() const {
  QpInfo q;
  std::memcpy(q.gid, dev_->gid().raw, sizeof(q.gid));
  q.qpn = qp_->qp_num;
  q.psn = psn_;
  q.lid = dev_->lid();
  q.mtu = static_cast<uint8_t>(dev_->mtu());
  q.link_layer = dev_->link_layer();
  return q;
}

void QueuePair::connect(const QpInfo& peer) {
  const Verbs& v = dev_->v();
  if (peer.link_layer != dev_->link_layer())
    fail(ErrorKind::Connection, "RDMA device " + dev_->name() + " cannot reach the peer's device: link layers differ "
                                "(InfiniBand vs Ethernet/RoCE)");
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_RTR;
  a.path_mtu = static_cast<ibv_mtu>(std::min<int>(peer.mtu, dev_->mtu()));
  a.dest_qp_num = peer.qpn;
  a.rq_psn = peer.psn;
  a.max_dest_rd_atomic = static_cast<uint8_t>(dev_->max_rd_atomic());
  a.min_rnr_timer = 12;
  a.ah_attr.port_num = dev_->port();
  a.ah_attr.dlid = peer.lid;
  if (dev_->link_layer() != IBV_LINK_LAYER_INFINIBAND || peer.lid == 0) {
    a.ah_attr.is_global = 1;
    std::memcpy(a.ah_attr.grh.dgid.raw, peer.gid, sizeof(peer.gid));
    a.ah_attr.grh.sgid_index = static_cast<uint8_t>(dev_->gid_index());
    a.ah_attr.grh.hop_limit = 64;
  }
  if (v.modify_qp(qp_, &a,
                  IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                      IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER) != 0)
    fail(ErrorKind::Connection, "RDMA device " + dev_->name() + ": queue pair RTR failed: " + std::strerror(errno));
  ibv_qp_attr b{};
  b.qp_state = IBV_QPS_RTS;
  // 4.096 us * 2^14 = 67 ms per try, 7 tries: a peer that died fails the
  // transfer in about half a second, well inside any op timeout.
  b.timeout = 14;
  b.retry_cnt = 7;
  b.rnr_retry = 7;
  b.sq_psn = psn_;
  b.max_rd_atomic = static_cast<uint8_t>(dev_->max_rd_atomic());
  if (v.modify_qp(qp_, &b,
                  IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                      IBV_QP_MAX_QP_RD_ATOMIC) != 0)
    fail(ErrorKind::Connection, "RDMA device " + dev_->name() + ": queue pair RTS failed: " + std::strerror(errno));
}

void QueuePair::fail_transfer(const std::string& peer, bool read, const std::string& why) {
  kill();
  fail(ErrorKind::Connection,
       std::string("RDMA ") + (read ? "READ from " : "WRITE to ") + peer + " over " + dev_->name() + " " + why);
}

void QueuePair::kill() {
  if (!broken_) {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_ERR;
    dev_->v().modify_qp(qp_, &a, IBV_QP_STATE);
    broken_ = true;
  }
  // In the error state every outstanding work request completes (flushed):
  // wait for them, so nothing lands in our memory after we return.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  ibv_wc wc[16];
  while (!posted_.empty() && std::chrono::steady_clock::now() < deadline) {
    int n = ibv_poll_cq(cq_, 16, wc);
    if (n < 0) break;
    for (int i = 0; i < n && !posted_.empty(); ++i) posted_.pop_front();
    if (n == 0) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  posted_.clear();
}

void QueuePair::reap_some(int timeout_ms, const std::string& peer) {
  const Verbs& v = dev_->v();
  const bool read = posted_.front().read;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  // Spin briefly (completions of small transfers come within microseconds),
  // then sleep on the completion channel so a waiting node takes no core
  // from the rest of the machine.
  auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
  ibv_wc wc[16];
  bool armed = false;
  for (;;) {
    int n = ibv_poll_cq(cq_, 16, wc);
    if (n < 0) fail_transfer(peer, read, "failed: polling the completion queue failed");
    for (int i = 0; i < n; ++i) {
      if (wc[i].status != IBV_WC_SUCCESS)
        fail_transfer(peer, read, std::string("failed: ") + v.wc_status_str(wc[i].status));
      Posted p = std::move(posted_.front());
      posted_.pop_front();
      if (p.on_done && *p.on_done) (*p.on_done)(p.op, p.off, p.len);
    }
    if (n > 0) return;
    auto now = std::chrono::steady_clock::now();
    if (now < spin_until) continue;
    if (now >= deadline) fail_transfer(peer, read, ": no completion within " + std::to_string(timeout_ms) + " ms");
    if (!armed) {
      // Arm, then poll once more before sleeping: a completion that landed
      // before arming raises no event.
      if (ibv_req_notify_cq(cq_, 0) != 0) fail_transfer(peer, read, "failed: cannot arm the completion queue");
      armed = true;
      continue;
    }
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count());
    struct pollfd pfd {channel_->fd, POLLIN, 0};
    if (::poll(&pfd, 1, std::max(1, std::min(left, 100))) > 0) {
      ibv_cq* ev_cq = nullptr;
      void* ctx = nullptr;
      if (v.get_cq_event(channel_, &ev_cq, &ctx) == 0) v.ack_cq_events(ev_cq, 1);
      armed = false;
    }
  }
}

uint64_t QueuePair::post(bool read, const std::vector<RemoteOp>& ops, int timeout_ms, const std::string& peer,
                         OnDone on_done) {
  if (broken_) fail(ErrorKind::Connection, "RDMA queue pair to " + peer + " over " + dev_->name() + " already failed");
  const uint64_t ticket = ++next_ticket_;
  auto cb = std::make_shared<OnDone>(std::move(on_done));
  for (size_t k = 0; k < ops.size(); ++k) {
    const RemoteOp& op = ops[k];
    for (uint64_t off = 0; off < op.len; off += kMaxWrBytes) {
      while (static_cast<int>(posted_.size()) >= depth_) reap_some(timeout_ms, peer);
      uint64_t n = std::min(kMaxWrBytes, op.len - off);
      ibv_sge sge{};
      sge.addr = reinterpret_cast<uint64_t>(op.local + off);
      sge.length = static_cast<uint32_t>(n);
      sge.lkey = op.lkey;
      ibv_send_wr wr{};
      wr.opcode = read ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE;
      wr.send_flags = IBV_SEND_SIGNALED;
      wr.sg_list = &sge;
      wr.num_sge = 1;
      wr.wr.rdma.remote_addr = op.remote + off;
      wr.wr.rdma.rkey = op.rkey;
      ibv_send_wr* bad = nullptr;
      if (int rc = ibv_post_send(qp_, &wr, &bad); rc != 0)
        fail_transfer(peer, read, std::string(": posting failed: ") + std::strerror(rc));
      posted_.push_back({ticket, k, off, n, read, cb});
    }
  }
  return ticket;
}

void QueuePair::wait(uint64_t ticket, int timeout_ms, const std::string& peer) {
  while (!posted_.empty() && posted_.front().ticket <= ticket) reap_some(timeout_ms, peer);
}

#else

std::vector<std::string> list_devices() { return {}; }

#endif

}  // namespace memkv::rdma
