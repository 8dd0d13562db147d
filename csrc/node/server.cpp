#include "server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <system_error>

#include "../common/bytes.hpp"
#include "../common/crc32c.hpp"
#include "../common/error.hpp"
#include "../common/log.hpp"
#include "../transport/verbs.hpp"

namespace memkv {

using namespace wire;

namespace {

uint16_t status_of(PutResult r) {
  switch (r) {
    case PutResult::Ok: return kOk;
    case PutResult::TooLarge: return kTooLarge;
    case PutResult::NoSpace: return kNoSpace;
    case PutResult::ShuttingDown: return kShuttingDown;
    case PutResult::BadRange: return kBadRange;
    case PutResult::OverQuota: return kOverQuota;
    default: return kInternal;
  }
}

bool key_ok(const std::string& stored) { return !stored.empty(); }  // see ConnState::scoped

}  // namespace

std::string Node::ConnState::scoped(std::string_view key) const {
  // A leading kTenantMark is how tenants' keys are stored: no client may send one.
  if (key.empty() || key.size() > kMaxKeyLen || key[0] == kTenantMark) return {};
  if (!tenant) return std::string(key);
  std::string out;
  out.reserve(tenant->prefix.size() + key.size());
  out.append(tenant->prefix).append(key);
  return out;
}

void Node::set_tenants(const std::vector<TenantSpec>& specs, std::vector<std::string>* added,
                       std::vector<std::string>* revoked) {
  for (const TenantSpec& t : specs)  // all checked before any is applied
    if (!tenant_name_ok(t.name))
      fail(ErrorKind::Config, "tenant name '" + t.name + "': use 1-" + std::to_string(kMaxTenantLen) +
                                  " of A-Z a-z 0-9 . _ -");
  for (const TenantSpec& t : specs) store_->set_quota(t.name, t.dram_quota, t.disk_quota);
  tenants_.replace(specs, added, revoked);
}

Node::Node(NodeOptions opts) : opts_(std::move(opts)), store_(std::make_unique<Store>(opts_.store)) {}

Node::~Node() { stop(); }

void Node::start() {
  if (!opts_.rdma_devices.empty()) {
#if MEMKV_WITH_VERBS
    std::string why = rdma::verbs_unavailable_reason();
    if (!why.empty()) fail(ErrorKind::Config, "--rdma-devices: " + why);
    rdma_ = std::make_unique<transport::RdmaNode>(opts_.rdma_devices);
#else
    fail(ErrorKind::Config, "--rdma-devices: " + rdma::verbs_unavailable_reason());
#endif
  }
  store_->open();
#if MEMKV_WITH_VERBS
  if (rdma_ && store_->arena()) rdma_->add_region_async(store_->arena());
#endif
  // A deep backlog: a fleet's clients reconnect all at once after a restart.
  listen_fd_ = listen_tcp(opts_.host, opts_.port, 4096, &bound_port_);
  if (opts_.s3_port >= 0) {
    s3::DoorOptions d;
    d.host = opts_.host;
    d.port = static_cast<uint16_t>(opts_.s3_port);
    d.data_dir = opts_.store.data_dir;
    d.io_timeout_ms = opts_.io_timeout_ms;
    d.max_connections = std::min(opts_.max_connections, 1024);  // the door still runs a thread per connection
    door_ = std::make_unique<s3::Door>(d, *store_, tenants_);
    try {
      door_->start();
    } catch (...) {
      ::close(listen_fd_);
      throw;
    }
  }
  ConnectionLoop::Options lo;
  lo.max_connections = opts_.max_connections;
  lo.io_timeout_ms = opts_.io_timeout_ms;
  loop_ = std::make_unique<ConnectionLoop>(static_cast<ConnectionProtocol&>(*this), lo);
  loop_->start(listen_fd_);
  started_ = true;
}

void Node::stop() {
  std::lock_guard<std::mutex> g(stop_mu_);
  if (!started_ || stopped_) return;
  stopped_ = true;
  // Ops in progress finish; waiting connections are closed. The listening
  // socket is closed after the loop is gone: closed under it, its number
  // could be reused by another open meanwhile.
  loop_->stop();
  ::close(listen_fd_);
  listen_fd_ = -1;
  if (door_) door_->stop();
  store_->close();
}

bool Node::key_for(Connection& c, std::string_view tenant, Key32* key) {
  if (tenant.empty()) {
    *key = opts_.auth_key;
    return true;
  }
  ConnState& state = static_cast<NodeConnection&>(c).state;
  state.tenant = tenants_.find(tenant);
  if (state.tenant) *key = state.tenant->key;
  return state.tenant != nullptr;
}

void Node::authenticated(Connection& c) {
  ConnState& state = static_cast<NodeConnection&>(c).state;
  if (state.tenant) ++state.tenant->counters->connections;
}

Node::Incoming Node::prepare_value(Session& s, transport::NodeMover& m, uint32_t index, const std::string& key,
                                   uint64_t size, bool ahead) {
  Incoming in;
  if (!key_ok(key)) {
    in.status = kKeyInvalid;
    return in;
  }
  PutResult pr = store_->reserve(size, key, &in.reservation, !ahead);
  if (pr == PutResult::NoSpace && ahead) {
    in.deferred = true;
    return in;
  }
  if (pr != PutResult::Ok) {
    in.status = status_of(pr);
    return in;
  }
  in.value = store_->make_value(size);
  in.started = &m;  // from here an exception must stop the transfer before the buffer goes
  m.start_receive(s, index, in.value->data, size, opts_.io_timeout_ms);
  return in;
}

uint16_t Node::finish_value(Session& s, transport::NodeMover& m, const FrameHeader& h, uint32_t index,
                            const std::string& key, uint64_t size, Incoming in, TenantCounters* counters) {
  if (counters && in.status == kOverQuota) ++counters->over_quota;
  if (in.status != kOk) {
    m.skip(s, index, size, opts_.io_timeout_ms);
    s.recv_seal(h, index, opts_.io_timeout_ms);  // framing continues; the value is dropped
    return in.status;
  }
  uint32_t crc = m.receive(s, index, in.value->data, size, opts_.io_timeout_ms);
  in.started = nullptr;  // its bytes are all in
  bytes_in_ += size;
  if (counters) counters->bytes_in += size;
  const uint32_t sealed = s.recv_seal(h, index, opts_.io_timeout_ms);
  if (m.checksummed_here(index)) {
    // GPUDirect: the client cannot read its GPU memory, so it seals CRC 0
    // and the CRC computed here, as the bytes landed, becomes the value's.
    if (sealed != 0) {
      ++checksum_failures_;
      return kChecksumMismatch;
    }
    ++node_checksummed_;
  } else if (sealed != crc) {
    ++checksum_failures_;
    return kChecksumMismatch;
  }
  // A put that waited long (for DRAM, or behind durable writes of its
  // batch) may have been given up on by its client (timed out and closed).
  // Publishing it now could overwrite a newer value or undo a delete the
  // client made since: drop it instead. Asked under the store's lock, so a
  // newer put the client sent after closing cannot slip in between.
  const int fd = s.sock().fd();
  auto still_wanted = [fd] {
    struct pollfd pfd {fd, POLLRDHUP, 0};
    return !(::poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)));
  };
  return status_of(store_->commit(key, std::move(in.value), crc, std::move(in.reservation), still_wanted));
}

void Node::handle(Session& s, ConnState& conn, const FrameHeader& h, const std::vector<uint8_t>& meta) {
  const int t = opts_.io_timeout_ms;
  ByteReader in(meta.data(), meta.size());
  ByteWriter out;
  const uint8_t op = h.op;
  Movers& movers = conn.movers;
  TenantCounters* tc = conn.counters();
  if (conn.tenant && conn.tenant->revoked) {
    log(LogLevel::Info, "closing a connection of tenant '" + conn.tenant->name + "': the tenant was revoked");
    fail(ErrorKind::Auth, "tenant revoked");
  }
  if (op < kOpSlots) ++ops_[op];
  if (tc) ++tc->ops;
  auto hit = [&] {
    ++hits_;
    if (tc) ++tc->hits;
  };
  auto miss = [&] {
    ++misses_;
    if (tc) ++tc->misses;
  };
  if ((h.flags & kFlagRdma) && !movers.rdma)
    fail(ErrorKind::Protocol, "RDMA frame on a connection without an RDMA queue pair");
  const bool rdma = (h.flags & kFlagRdma) != 0;
  transport::NodeMover& m = rdma ? *movers.rdma : static_cast<transport::NodeMover&>(movers.tcp);
  auto count_error = [&](uint16_t st) {
    if (st != kOk && st != kNotFound && op < kOpSlots) ++op_errors_[op];
  };
  auto reply = [&](uint16_t st) {
    count_error(st);
    s.send_frame(op, st, out.data(), nullptr, 0, 0, t);
  };
  // A reply whose items bring bytes (GET, BATCH_GET): by the frame's mover.
  auto reply_values = [&](uint16_t st, const std::vector<struct iovec>& values) {
    count_error(st);
    m.reply(s, op, st, out.data(), values, t);
    uint64_t n = 0;
    for (const struct iovec& v : values) n += v.iov_len;
    bytes_out_ += n;
    if (tc) tc->bytes_out += n;
    if (rdma) rdma_bytes_out_ += n;
  };

  switch (op) {
    case kPut: {
      std::string key = conn.scoped(in.key());
      uint64_t size = in.u64();
      in.u32();  // flags
      m.begin(in, 1, false);
      in.expect_end();
      if (size > kMaxDataLen || h.data_len != m.request_data_len(size, 1))
        fail(ErrorKind::Protocol, "put: data length does not match the value size");
      reply(finish_value(s, m, h, 0, key, size, prepare_value(s, m, 0, key, size), tc));
      if (rdma) rdma_bytes_in_ += size;
      return;
    }
    case kGet: {
      std::string key = conn.scoped(in.key());
      uint64_t offset = in.u64();
      uint64_t length = in.u64();
      m.begin(in, 1, true);
      in.expect_end();
      transport::drain(s, h.data_len, t);
      uint32_t crc = 0;
      ValuePtr v = key_ok(key) ? store_->get(key, &crc) : nullptr;
      if (!v) {
        miss();
        reply(key_ok(key) ? kNotFound : kKeyInvalid);
        return;
      }
      if (offset > v->size) {
        reply(kBadRange);
        return;
      }
      uint64_t len = std::min(length, v->size - offset);
      if (offset != 0 || len != v->size) crc = crc32c(0, v->data + offset, len);
      hit();
      out.u64(v->size);
      out.u64(offset);
      out.u32(crc);
      reply_values(kOk, {{v->data + offset, len}});
      return;
    }
    case kExists:
    case kStat: {
      std::string key = conn.scoped(in.key());
      in.expect_end();
      transport::drain(s, h.data_len, t);
      ObjectInfo info;
      if (!key_ok(key) || !store_->info(key, &info)) {
        reply(key_ok(key) ? kNotFound : kKeyInvalid);
        return;
      }
      out.u64(info.size);
      if (op == kStat) {
        out.u32(info.crc);
        out.u8(static_cast<uint8_t>((info.in_dram ? 1 : 0) | (info.on_disk ? 2 : 0)));
        out.u64(info.written_ns);
      }
      reply(kOk);
      return;
    }
    case kDelete: {
      std::string key = conn.scoped(in.key());
      in.expect_end();
      transport::drain(s, h.data_len, t);
      reply(!key_ok(key) ? kKeyInvalid : store_->remove(key) ? kOk : kNotFound);
      return;
    }
    case kPing: {
      in.expect_end();
      transport::drain(s, h.data_len, t);
      out.bytes(opts_.node_id.data(), opts_.node_id.size());
      reply(kOk);
      return;
    }
    case kBatchPut: {
      uint32_t n = in.u32();
      if (n > kMaxBatchItems) fail(ErrorKind::Protocol, "batch_put: too many items");
      std::vector<std::pair<std::string, uint64_t>> items;
      items.reserve(n);
      uint64_t total = 0;
      for (uint32_t i = 0; i < n; ++i) {
        std::string key = conn.scoped(in.key());
        uint64_t size = in.u64();
        if (size > kMaxDataLen - total) fail(ErrorKind::Protocol, "batch_put: value sizes exceed the frame limit");
        total += size;
        items.emplace_back(std::move(key), size);
      }
      m.begin(in, n, false);
      in.expect_end();
      if (m.request_data_len(total, n) != h.data_len)
        fail(ErrorKind::Protocol, "batch_put: data length does not match the value sizes");
      out.u32(n);
      // Over RDMA the next value's READs are posted before this one is
      // checksummed and published, so the link does not idle between values.
      std::optional<Incoming> next;
      for (uint32_t i = 0; i < n; ++i) {
        Incoming cur = next && !next->deferred ? std::move(*next)
                                               : prepare_value(s, m, i, items[i].first, items[i].second);
        next.reset();
        if (m.pipelined() && i + 1 < n)
          next.emplace(prepare_value(s, m, i + 1, items[i + 1].first, items[i + 1].second, true));
        out.u16(finish_value(s, m, h, i, items[i].first, items[i].second, std::move(cur), tc));
      }
      reply(kOk);
      if (rdma) rdma_bytes_in_ += total;
      return;
    }
    case kBatchGet: {
      // Items: key, u64 offset, u64 length (kMissing: to the end).
      uint32_t n = in.u32();
      if (n > kMaxBatchItems) fail(ErrorKind::Protocol, "batch_get: too many items");
      struct Want {
        std::string key;
        uint64_t offset, length;
      };
      std::vector<Want> wants;
      wants.reserve(n);
      for (uint32_t i = 0; i < n; ++i) {
        std::string key = conn.scoped(in.key());
        uint64_t offset = in.u64(), length = in.u64();
        wants.push_back({std::move(key), offset, length});
      }
      m.begin(in, n, true);
      in.expect_end();
      transport::drain(s, h.data_len, t);
      // Every value is pinned (and verified, if it came from a shard) before
      // the sizes are promised: the stream is then full-length or a miss.
      std::vector<ValuePtr> vals(n);
      std::vector<struct iovec> iov(n, {nullptr, 0});
      out.u32(n);
      for (uint32_t i = 0; i < n; ++i) {
        const Want& w = wants[i];
        uint32_t crc = 0;
        if (key_ok(w.key)) vals[i] = store_->get(w.key, &crc);
        if (!vals[i] || w.offset > vals[i]->size) {
          uint16_t st = !key_ok(w.key) ? kKeyInvalid : vals[i] ? kBadRange : kNotFound;
          if (st == kNotFound) miss();
          vals[i].reset();
          out.u16(st);
          out.u64(0);
          out.u64(0);
          out.u32(0);
          continue;
        }
        hit();
        const Value& v = *vals[i];
        uint64_t len = std::min(w.length, v.size - w.offset);
        // A whole value carries its stored checksum; a range gets its own.
        if (w.offset != 0 || len != v.size) crc = crc32c(0, v.data + w.offset, len);
        out.u16(kOk);
        out.u64(v.size);
        out.u64(len);
        out.u32(crc);
        iov[i] = {v.data + w.offset, len};
      }
      reply_values(kOk, iov);
      return;
    }
    case kBatchExists:
    case kBatchDelete: {
      uint32_t n = in.u32();
      if (n > kMaxBatchItems) fail(ErrorKind::Protocol, "batch: too many items");
      std::vector<std::string> keys;
      keys.reserve(n);
      for (uint32_t i = 0; i < n; ++i) keys.push_back(conn.scoped(in.key()));
      in.expect_end();
      transport::drain(s, h.data_len, t);
      out.u32(n);
      for (const std::string& k : keys) {
        if (op == kBatchExists) {
          ObjectInfo info;
          out.u64(key_ok(k) && store_->info(k, &info) ? info.size : kMissing);
        } else {
          out.u16(!key_ok(k) ? kKeyInvalid : store_->remove(k) ? kOk : kNotFound);
        }
      }
      reply(kOk);
      return;
    }
    case kPutPart: {
      std::string key = conn.scoped(in.key());
      uint64_t upload_id = in.u64(), total = in.u64(), offset = in.u64(), len = in.u64();
      m.begin(in, 1, false);
      in.expect_end();
      if (len > kMaxDataLen || h.data_len != m.request_data_len(len, 1))
        fail(ErrorKind::Protocol, "put_part: data length does not match the part length");
      auto refuse = [&](uint16_t st) {
        m.skip(s, 0, len, t);
        s.recv_seal(h, 0, t);
        out.u8(0);
        out.u64(0);
        reply(st);
      };
      if (!key_ok(key)) return refuse(kKeyInvalid);
      Store::PartTarget target;
      PutResult pr = store_->part_begin(key, upload_id, total, offset, len, &target);
      if (pr != PutResult::Ok || target.duplicate) return refuse(status_of(pr));
      uint32_t got = 0;
      bool ok = false;
      try {
        got = m.receive(s, 0, target.buffer->data + offset, len, t);
        bytes_in_ += len;
        if (tc) tc->bytes_in += len;
        if (rdma) rdma_bytes_in_ += len;
        ok = s.recv_seal(h, 0, t) == got;
      } catch (...) {
        bool c;
        uint64_t r;
        store_->part_done(key, upload_id, offset, len, false, &c, &r);
        throw;
      }
      bool complete = false;
      uint64_t remaining = 0;
      pr = store_->part_done(key, upload_id, offset, len, ok, &complete, &remaining);
      if (!ok) ++checksum_failures_;
      out.u8(complete ? 1 : 0);
      out.u64(remaining);
      reply(!ok ? kChecksumMismatch : status_of(pr));
      return;
    }
    case kAbortPart: {
      std::string key = conn.scoped(in.key());
      uint64_t upload_id = in.u64();
      in.expect_end();
      transport::drain(s, h.data_len, t);
      reply(!key_ok(key) ? kKeyInvalid : store_->part_abort(key, upload_id) ? kOk : kNotFound);
      return;
    }
    case kRdmaConnect: {
      transport::drain(s, h.data_len, t);
      if (rdma_ && !movers.rdma) {
        movers.rdma = rdma_->accept(s, in, t);
        if (movers.rdma) ++rdma_connections_;
        return;
      }
      out.key(rdma_ ? "this connection already has a queue pair"
                    : "the node serves no RDMA device (start it with --rdma-devices / MEMKV_RDMA_DEVICES)");
      reply(kRdmaUnavailable);
      return;
    }
    default:
      transport::drain(s, h.data_len, t);
      reply(kBadRequest);
      return;
  }
}

NodeStats Node::stats() {
  NodeStats s;
  s.store = store_->stats();
  for (int i = 0; i < kOpSlots; ++i) {
    s.ops[i] = ops_[i].load();
    s.op_errors[i] = op_errors_[i].load();
  }
  s.bytes_in = bytes_in_;
  s.bytes_out = bytes_out_;
  s.hits = hits_;
  s.misses = misses_;
  if (loop_) {
    ConnectionStats c = loop_->stats();
    s.connections = c.connections;
    s.connections_total = c.connections_total;
    s.auth_failures = c.auth_failures;
    s.protocol_errors = c.protocol_errors;
    s.rejected_connections = c.rejected;
    s.stalled_connections = c.stalled;
    s.worker_threads = c.workers;
  }
  s.checksum_failures = checksum_failures_;
  s.rdma_connections = rdma_connections_;
  s.rdma_bytes_in = rdma_bytes_in_;
  s.rdma_bytes_out = rdma_bytes_out_;
  s.rdma_node_checksummed = node_checksummed_;
  if (door_) s.s3 = door_->stats();
  return s;
}

}  // namespace memkv
