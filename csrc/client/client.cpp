#include "client.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>

#include "../common/bytes.hpp"
#include "../common/crc32c.hpp"
#include "../common/error.hpp"
#include "../common/log.hpp"

namespace memkv {

using namespace wire;

namespace {

// One frame carries at most this many items / bytes, so a huge batch streams
// as several frames spread over the pool's connections.
constexpr size_t kFrameItems = 4096;
constexpr uint64_t kFrameBytes = 64ull << 20;

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

[[noreturn]] void server_error(const std::string& what, const std::string& node, uint16_t st) {
  fail(st == kKeyInvalid ? ErrorKind::KeyTooLong : ErrorKind::Server,
       what + " failed on " + node + ": " + status_name(st));
}

}  // namespace

Client::Client(ClientOptions opts) : opts_(std::move(opts)), router_([&] {
  std::vector<std::string> names;
  for (const ServerAddr& a : opts_.servers) names.push_back(a.name);
  return names;
}()) {
  if (opts_.servers.empty()) fail(ErrorKind::Config, "no MemKV servers configured: set MEMKV_SERVERS=host:port[,host:port...]");
  if (opts_.num_connections < 1) fail(ErrorKind::Config, "num_connections must be at least 1");
  transport_ = std::make_unique<transport::ClientTransport>(opts_.transport);
  for (size_t i = 0; i < opts_.servers.size(); ++i)
    pools_.push_back(std::make_unique<ServerPool>(opts_.servers[i], i, opts_.auth_key, opts_.tenant,
                                                  opts_.num_connections, opts_.connect_timeout_ms,
                                                  opts_.op_timeout_ms, transport_.get()));
}

Client::~Client() {
  pools_.clear();  // connections (and their queue pairs) go before the transport
}

bool Client::register_memory(void* p, uint64_t n) {
#if MEMKV_WITH_VERBS
  if (transport::RdmaClient* r = transport_->rdma()) {
    r->register_memory(p, n);
    return true;
  }
#endif
  (void)p, (void)n;
  return false;
}

bool Client::unregister_memory(void* p) {
#if MEMKV_WITH_VERBS
  if (transport::RdmaClient* r = transport_->rdma()) return r->unregister_memory(p);
#endif
  (void)p;
  return false;
}

std::string Client::register_device_memory(void* p, uint64_t n) {
#if MEMKV_WITH_VERBS
  if (transport::RdmaClient* r = transport_->rdma()) return r->register_device_memory(p, n);
#endif
  (void)p, (void)n;
  return {};
}

bool Client::is_device_registered(const void* p, uint64_t n) const {
#if MEMKV_WITH_VERBS
  if (transport::RdmaClient* r = transport_->rdma()) {
    auto e = r->find(p, n);
    return e && e->device;
  }
#endif
  (void)p, (void)n;
  return false;
}

bool Client::gpudirect_ok(const transport::Connection& c, const Frame& f, const std::vector<SegmentList>& segs,
                          bool read) const {
  if (!c.mover->carries_device_memory()) return false;
  for (uint32_t i : f.items) {
    uint64_t pos = segs[i].empty() ? 0 : segs[i].front().offset;
    for (const Segment& g : segs[i]) {
      if (g.len && !is_device_registered(g.ptr, g.len)) return false;
      if (read && g.offset != pos) return false;
      pos = g.offset + g.len;
    }
  }
  return true;
}

bool Client::is_registered(const void* p, uint64_t n) const {
#if MEMKV_WITH_VERBS
  if (transport::RdmaClient* r = transport_->rdma()) return r->find(p, n) != nullptr;
#endif
  (void)p, (void)n;
  return false;
}

std::string Client::transport_name() const { return transport_->rdma() ? "rdma" : "tcp"; }

void Client::close() {
  for (auto& p : pools_) p->close_idle();
}

void Client::check_key(std::string_view key) const {
  if (key.empty()) fail(ErrorKind::KeyTooLong, "key is empty: MemKV keys are 1 to 512 bytes");
  if (key.size() > kMaxKeyLen)
    fail(ErrorKind::KeyTooLong, "key is " + std::to_string(key.size()) +
                                    " bytes: MemKV keys are 1 to 512 bytes (digest longer keys, e.g. with SHA-256)");
  if (key[0] == '\0')
    fail(ErrorKind::KeyTooLong, "key starts with a NUL byte: nodes reserve that for tenants' keyspaces "
                                "(connect as the tenant with MEMKV_TENANT instead)");
}

// Runs fn on a pooled session. A reused connection that turns out to be
// stale (the node restarted) is retried once on a fresh connection, after
// dropping the pool's other idle ones (stale too). Ops that may be retried
// are safe to apply twice: puts store the same bytes again; a repeated
// delete reports "not found". Multi-part writes are never retried here.
// Nor is an attempt that waited out the op timeout: a stale connection fails
// at once (closed, reset), so that node is unreachable or hung, and a fresh
// connection would only wait again (a partitioned or paused node would cost
// the op its timeout twice, plus a connect).
template <class Fn>
auto Client::with_connection(size_t server, Fn&& fn, bool retry_stale)
    -> decltype(fn(std::declval<transport::Connection&>())) {
  ServerPool& pool = *pools_[server];
  for (int attempt = 0;; ++attempt) {
    if (attempt > 0) pool.close_idle();
    ServerPool::Lease lease = pool.acquire();
    const auto started = std::chrono::steady_clock::now();
    try {
      if constexpr (std::is_void_v<decltype(fn(lease.conn))>) {
        fn(lease.conn);
        pool.release(std::move(lease), true);
        return;
      } else {
        auto r = fn(lease.conn);
        pool.release(std::move(lease), true);
        return r;
      }
    } catch (const Error& e) {
      // 90%: a timeout never fires early; a stale connection fails in microseconds.
      const bool waited_out = std::chrono::steady_clock::now() - started >=
                              std::chrono::milliseconds(opts_.op_timeout_ms) * 9 / 10;
      bool retry = retry_stale && e.kind() == ErrorKind::Connection && lease.reused && attempt == 0 && !waited_out;
      // These leave the framing intact: the connection can be reused.
      bool healthy = e.kind() == ErrorKind::Server || e.kind() == ErrorKind::KeyTooLong ||
                     e.kind() == ErrorKind::Checksum || e.kind() == ErrorKind::Config;
      pool.release(std::move(lease), healthy);
      // Its other idle connections are as dead: the next op connects afresh
      // (one connect timeout) instead of waiting out another op timeout.
      if (waited_out && e.kind() == ErrorKind::Connection) pool.close_idle();
      if (!retry) throw;
    } catch (...) {
      pool.release(std::move(lease), false);
      throw;
    }
  }
}

void Client::recv_response(Session& s, uint8_t op, FrameHeader* h, std::vector<uint8_t>* meta) {
  if (!s.recv_frame(h, meta, opts_.op_timeout_ms, opts_.op_timeout_ms))
    fail(ErrorKind::Connection, "connection to " + s.sock().peer() + " closed or timed out waiting for a reply");
  if (h->op != op) fail(ErrorKind::Protocol, "reply from " + s.sock().peer() + " answers a different op");
}

void Client::put(std::string_view key, const void* data, uint64_t len) {
  check_key(key);
  ByteWriter m;
  m.key(key);
  m.u64(len);
  m.u32(0);  // flags
  std::vector<std::vector<struct iovec>> values{{{const_cast<void*>(data), len}}};
  with_connection(route(key), [&](transport::Connection& c) {
    Session& s = *c.session;
    auto sent = c.mover->send_values(s, kPut, m.data(), values, opts_.op_timeout_ms);
    FrameHeader h;
    std::vector<uint8_t> meta;
    recv_response(s, kPut, &h, &meta);
    if (h.status != kOk) {
      if (h.status == kTooLarge)
        fail(ErrorKind::Server, "put of " + std::to_string(len) + " bytes rejected by " + s.sock().peer() +
                                    ": the node accepts values up to " + std::to_string(s.peer().max_value_bytes) +
                                    " bytes (raise its --dram-capacity/--disk-capacity)");
      server_error("put", s.sock().peer(), h.status);
    }
  });
}

// One GET of the object's first `limit` bytes, landing in `target`.
// Returns the object's size or kItemMissing.
int64_t Client::get_common(std::string_view key, uint64_t limit, const transport::ReadTarget& target) {
  check_key(key);
  ByteWriter m;
  m.key(key);
  m.u64(0);
  m.u64(limit);
  const std::vector<transport::ReadTarget> targets{target};
  return with_connection(route(key), [&](transport::Connection& c) -> int64_t {
    Session& s = *c.session;
    auto pending = c.mover->send_read(s, kGet, m.data(), targets, opts_.op_timeout_ms);
    FrameHeader h;
    std::vector<uint8_t> meta;
    recv_response(s, kGet, &h, &meta);
    if (h.status == kNotFound) return kItemMissing;
    if (h.status != kOk) server_error("get", s.sock().peer(), h.status);
    ByteReader r(meta.data(), meta.size());
    uint64_t size = r.u64();
    r.u64();  // offset
    uint32_t crc = r.u32();
    const uint64_t len = std::min(limit, size);
    if (h.data_len != pending->reply_data_len(len)) fail(ErrorKind::Protocol, "get reply length does not match");
    if (pending->land(s, 0, size, len, opts_.op_timeout_ms) != crc)
      fail(ErrorKind::Checksum, "value read from " + s.sock().peer() + " failed its checksum; the bytes were discarded");
    return static_cast<int64_t>(size);
  });
}

int64_t Client::get_into(std::string_view key, void* buf, uint64_t cap) {
  const SegmentList segs{{0, buf, cap}};
  int64_t size = get_common(key, cap, transport::ReadTarget{0, &segs, nullptr});
  if (size > static_cast<int64_t>(cap))
    fail(ErrorKind::Config, "buffer too small: the value is " + std::to_string(size) + " bytes, the buffer " +
                                std::to_string(cap));
  return size;
}

int64_t Client::get_alloc(std::string_view key, const std::function<uint8_t*(uint64_t)>& alloc) {
  transport::ReadTarget t;
  t.alloc = [&](uint64_t size, uint64_t len) {
    if (len != size) fail(ErrorKind::Protocol, "get reply length does not match the object size");
    return alloc(size);
  };
  return get_common(key, kMissing, t);
}

int64_t Client::exists(std::string_view key) {
  check_key(key);
  ByteWriter m;
  m.key(key);
  return with_connection(route(key), [&](transport::Connection& c) -> int64_t {
    Session& s = *c.session;
    s.send_frame(kExists, 0, m.data(), nullptr, 0, 0, opts_.op_timeout_ms);
    FrameHeader h;
    std::vector<uint8_t> meta;
    recv_response(s, kExists, &h, &meta);
    if (h.status == kNotFound) return kItemMissing;
    if (h.status != kOk) server_error("exists", s.sock().peer(), h.status);
    ByteReader r(meta.data(), meta.size());
    return static_cast<int64_t>(r.u64());
  });
}

bool Client::remove(std::string_view key) {
  check_key(key);
  ByteWriter m;
  m.key(key);
  return with_connection(route(key), [&](transport::Connection& c) -> bool {
    Session& s = *c.session;
    s.send_frame(kDelete, 0, m.data(), nullptr, 0, 0, opts_.op_timeout_ms);
    FrameHeader h;
    std::vector<uint8_t> meta;
    recv_response(s, kDelete, &h, &meta);
    if (h.status == kNotFound) return false;
    if (h.status != kOk) server_error("delete", s.sock().peer(), h.status);
    return true;
  });
}

bool Client::stat(std::string_view key, ObjectStat* out) {
  check_key(key);
  ByteWriter m;
  m.key(key);
  return with_connection(route(key), [&](transport::Connection& c) -> bool {
    Session& s = *c.session;
    s.send_frame(kStat, 0, m.data(), nullptr, 0, 0, opts_.op_timeout_ms);
    FrameHeader h;
    std::vector<uint8_t> meta;
    recv_response(s, kStat, &h, &meta);
    if (h.status == kNotFound) return false;
    if (h.status != kOk) server_error("stat", s.sock().peer(), h.status);
    ByteReader r(meta.data(), meta.size());
    out->size = r.u64();
    out->crc = r.u32();
    uint8_t tier = r.u8();
    out->in_dram = tier & 1;
    out->on_disk = tier & 2;
    out->written_ns = r.u64();
    return true;
  });
}

std::string Client::ping(size_t server) {
  if (server >= pools_.size()) fail(ErrorKind::Config, "no such server index");
  return with_connection(server, [&](transport::Connection& c) -> std::string {
    Session& s = *c.session;
    s.send_frame(kPing, 0, {}, nullptr, 0, 0, opts_.op_timeout_ms);
    FrameHeader h;
    std::vector<uint8_t> meta;
    recv_response(s, kPing, &h, &meta);
    if (h.status != kOk) server_error("ping", s.sock().peer(), h.status);
    return hex(meta.data(), meta.size());
  });
}

bool Client::put_part(std::string_view key, uint64_t upload_id, uint64_t total, uint64_t offset, const void* data,
                      uint64_t len) {
  check_key(key);
  ByteWriter m;
  m.key(key);
  m.u64(upload_id);
  m.u64(total);
  m.u64(offset);
  m.u64(len);
  std::vector<std::vector<struct iovec>> values{{{const_cast<void*>(data), len}}};
  return with_connection(route(key), [&](transport::Connection& c) -> bool {
    Session& s = *c.session;
    auto sent = c.mover->send_values(s, kPutPart, m.data(), values, opts_.op_timeout_ms);
    FrameHeader h;
    std::vector<uint8_t> meta;
    recv_response(s, kPutPart, &h, &meta);
    if (h.status == kBadRange)
      fail(ErrorKind::Server, "put_part rejected by " + s.sock().peer() +
                                  ": the part overlaps another one, lies outside the object, or the upload was "
                                  "aborted");
    if (h.status != kOk) server_error("put_part", s.sock().peer(), h.status);
    ByteReader r(meta.data(), meta.size());
    return r.u8() != 0;
  }, false);
}

void Client::abort_part(std::string_view key, uint64_t upload_id) {
  check_key(key);
  ByteWriter m;
  m.key(key);
  m.u64(upload_id);
  with_connection(route(key), [&](transport::Connection& c) {
    Session& s = *c.session;
    s.send_frame(kAbortPart, 0, m.data(), nullptr, 0, 0, opts_.op_timeout_ms);
    FrameHeader h;
    std::vector<uint8_t> meta;
    recv_response(s, kAbortPart, &h, &meta);
    if (h.status != kOk && h.status != kNotFound) server_error("abort_part", s.sock().peer(), h.status);
  });
}

std::vector<Client::Frame> Client::plan(const std::vector<std::string_view>& keys,
                                        const std::vector<uint64_t>* lens) const {
  std::vector<std::vector<uint32_t>> per_server(pools_.size());
  for (uint32_t i = 0; i < keys.size(); ++i) {
    check_key(keys[i]);
    per_server[route(keys[i])].push_back(i);
  }
  std::vector<Frame> frames;
  for (size_t srv = 0; srv < per_server.size(); ++srv) {
    Frame cur{srv, {}};
    uint64_t bytes = 0;
    for (uint32_t i : per_server[srv]) {
      uint64_t b = lens ? (*lens)[i] : 0;
      if (!cur.items.empty() && (cur.items.size() >= kFrameItems || bytes + b > kFrameBytes)) {
        frames.push_back(std::move(cur));
        cur = Frame{srv, {}};
        bytes = 0;
      }
      cur.items.push_back(i);
      bytes += b;
    }
    if (!cur.items.empty()) frames.push_back(std::move(cur));
  }
  return frames;
}

// Runs frames grouped by node: each node's frames are shared by up to
// num_connections workers, and all nodes proceed in parallel. A node that
// fails marks its remaining frames unavailable at once instead of waiting out
// one timeout per frame.
void Client::execute(const std::vector<Frame>& frames,
                     const std::function<void(transport::Connection&, const Frame&)>& run,
                     const std::function<void(const Frame&)>& unavailable, std::vector<std::string>* errors) {
  std::map<size_t, std::vector<const Frame*>> by_server;
  for (const Frame& f : frames) by_server[f.server].push_back(&f);
  struct ServerJob {
    size_t server;
    std::vector<const Frame*> frames;
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::string error;
  };
  std::vector<std::unique_ptr<ServerJob>> jobs;
  std::vector<std::pair<ServerJob*, int>> workers;
  for (auto& [srv, fs] : by_server) {
    auto j = std::make_unique<ServerJob>();
    j->server = srv;
    j->frames = std::move(fs);
    int n = static_cast<int>(std::min<size_t>(j->frames.size(), static_cast<size_t>(opts_.num_connections)));
    for (int w = 0; w < n; ++w) workers.emplace_back(j.get(), w);
    jobs.push_back(std::move(j));
  }
  auto work = [&](ServerJob* j) {
    for (;;) {
      size_t idx = j->next.fetch_add(1);
      if (idx >= j->frames.size()) return;
      const Frame& f = *j->frames[idx];
      if (j->failed.load()) {
        unavailable(f);
        continue;
      }
      try {
        with_connection(j->server, [&](transport::Connection& c) { run(c, f); });
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::Connection && e.kind() != ErrorKind::Protocol) throw;  // auth errors surface as such
        j->failed = true;
        std::lock_guard<std::mutex> lk(j->mu);
        if (j->error.empty()) j->error = e.what();
        unavailable(f);
      }
    }
  };
  std::vector<std::thread> threads;
  std::exception_ptr first_error;
  std::mutex err_mu;
  auto guarded = [&](ServerJob* j) {
    try {
      work(j);
    } catch (...) {
      std::lock_guard<std::mutex> lk(err_mu);
      if (!first_error) first_error = std::current_exception();
    }
  };
  std::vector<ServerJob*> inline_jobs;
  for (size_t w = 1; w < workers.size(); ++w) {
    try {
      threads.emplace_back(guarded, workers[w].first);
    } catch (const std::system_error&) {  // out of threads: this worker's share runs here instead
      inline_jobs.push_back(workers[w].first);
    }
  }
  if (!workers.empty()) guarded(workers[0].first);
  for (ServerJob* j : inline_jobs) guarded(j);
  for (auto& t : threads) t.join();
  if (first_error) std::rethrow_exception(first_error);
  for (auto& j : jobs)
    if (!j->error.empty()) errors->push_back(j->error);
}

std::string Client::check_tiling(const SegmentList& segs, uint64_t* total) {
  uint64_t pos = 0;
  for (const Segment& g : segs) {
    if (g.offset != pos)
      return g.offset > pos ? "a gap at bytes [" + std::to_string(pos) + ", " + std::to_string(g.offset) + ")"
                            : "overlapping pieces at offset " + std::to_string(g.offset);
    pos += g.len;
  }
  *total = pos;
  return {};
}

void Client::batch_put(const std::vector<std::string_view>& keys, const std::vector<const void*>& data,
                       const std::vector<uint64_t>& lens, std::vector<int>* status, std::vector<std::string>* errors) {
  std::vector<SegmentList> segs(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) segs[i].push_back({0, const_cast<void*>(data[i]), lens[i]});
  batch_put_segments(keys, segs, status, errors);
}

void Client::batch_put_segments(const std::vector<std::string_view>& keys, const std::vector<SegmentList>& segs,
                                std::vector<int>* status, std::vector<std::string>* errors, Memory memory) {
  status->assign(keys.size(), kOk);
  std::vector<uint64_t> totals(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    std::string why = check_tiling(segs[i], &totals[i]);
    if (!why.empty()) fail(ErrorKind::Config, "value for key " + std::string(keys[i]) + " has " + why);
  }
  std::vector<Frame> frames = plan(keys, &totals);
  execute(
      frames,
      [&](transport::Connection& c, const Frame& f) {
        if (memory == Memory::Gpu && !gpudirect_ok(c, f, segs, false)) {
          for (uint32_t i : f.items) (*status)[i] = kStatusNeedsHost;
          return;
        }
        Session& s = *c.session;
        ByteWriter m;
        m.u32(static_cast<uint32_t>(f.items.size()));
        std::vector<std::vector<struct iovec>> values;
        values.reserve(f.items.size());
        for (uint32_t i : f.items) {
          m.key(keys[i]);
          m.u64(totals[i]);
          values.emplace_back();
          for (const Segment& g : segs[i])
            if (g.len) values.back().push_back({g.ptr, g.len});
        }
        auto sent = c.mover->send_values(s, kBatchPut, m.data(), values, opts_.op_timeout_ms);
        FrameHeader h;
        std::vector<uint8_t> meta;
        recv_response(s, kBatchPut, &h, &meta);
        if (h.status != kOk) server_error("batch_put", s.sock().peer(), h.status);
        ByteReader r(meta.data(), meta.size());
        if (r.u32() != f.items.size()) fail(ErrorKind::Protocol, "batch_put reply has the wrong item count");
        for (uint32_t i : f.items) (*status)[i] = r.u16();
      },
      mark_all(status, kStatusUnavailable), errors);
}

void Client::batch_get_into(const std::vector<std::string_view>& keys, const std::vector<void*>& bufs,
                            const std::vector<uint64_t>& caps, std::vector<int64_t>* result,
                            std::vector<std::string>* errors) {
  std::vector<SegmentList> segs(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) segs[i].push_back({0, bufs[i], caps[i]});
  batch_get_segments(keys, segs, result, errors);
  for (size_t i = 0; i < keys.size(); ++i)
    if ((*result)[i] >= 0 && static_cast<uint64_t>((*result)[i]) > caps[i]) (*result)[i] = kItemTooSmall;
}

void Client::batch_get_segments(const std::vector<std::string_view>& keys, const std::vector<SegmentList>& segs,
                                std::vector<int64_t>* result, std::vector<std::string>* errors, Memory memory) {
  result->assign(keys.size(), kItemMissing);
  // Each key asks only for the span its segments cover: [lo, hi).
  std::vector<uint64_t> lo(keys.size(), 0), hi(keys.size(), 0), wanted(keys.size(), 0);
  for (size_t i = 0; i < keys.size(); ++i) {
    uint64_t end = 0;
    for (size_t j = 0; j < segs[i].size(); ++j) {
      const Segment& g = segs[i][j];
      if (j && g.offset < end) fail(ErrorKind::Config, "read segments for key " + std::string(keys[i]) + " overlap");
      end = g.offset + g.len;
    }
    if (!segs[i].empty()) {
      lo[i] = segs[i].front().offset;
      hi[i] = end;
    }
    wanted[i] = hi[i] - lo[i];
  }
  execute(
      plan(keys, &wanted),
      [&](transport::Connection& c, const Frame& f) {
        if (memory == Memory::Gpu && !gpudirect_ok(c, f, segs, true)) {
          for (uint32_t i : f.items) (*result)[i] = kItemNeedsHost;
          return;
        }
        Session& s = *c.session;
        std::vector<transport::ReadTarget> targets;
        targets.reserve(f.items.size());
        for (uint32_t i : f.items) targets.push_back({lo[i], &segs[i], nullptr});
        FrameHeader h;
        std::vector<uint8_t> meta;
        std::unique_ptr<transport::PendingRead> pending;
        ByteReader r = keys_request(
            c, kBatchGet, f, keys, &h, &meta,
            [&](ByteWriter& m, uint32_t i) {
              m.u64(lo[i]);
              m.u64(hi[i] - lo[i]);
            },
            &targets, &pending);
        struct Item {
          uint16_t st;
          uint64_t size, len;
          uint32_t crc;
        };
        std::vector<Item> items(f.items.size());
        uint64_t total = 0;
        for (Item& it : items) {
          it.st = r.u16();
          it.size = r.u64();
          it.len = r.u64();
          it.crc = r.u32();
          if (it.st == kOk) total += it.len;
        }
        if (pending->reply_data_len(total) != h.data_len)
          fail(ErrorKind::Protocol, "batch_get reply length does not match its sizes");
        // Items land in order, each straight in its segments.
        for (size_t k = 0; k < items.size(); ++k) {
          uint32_t i = f.items[k];
          const Item& it = items[k];
          if (it.st != kOk) {
            (*result)[i] = it.st == kNotFound ? kItemMissing : kItemError;
            continue;
          }
          if (it.len > hi[i] - lo[i]) fail(ErrorKind::Protocol, "batch_get reply is longer than the range asked for");
          uint32_t crc = pending->land(s, k, it.size, it.len, opts_.op_timeout_ms);
          bool intact = !pending->verifies(k) || crc == it.crc;  // GPU memory: the link CRC covered it
          (*result)[i] = intact ? static_cast<int64_t>(it.size) : kItemChecksum;
        }
      },
      mark_all(result, kItemUnavailable), errors);
}

// Sends a batch request whose metadata is the frame's keys and returns the
// reply's metadata, checked and positioned after its item count.
ByteReader Client::keys_request(transport::Connection& c, uint8_t op, const Frame& f,
                                const std::vector<std::string_view>& keys, FrameHeader* h, std::vector<uint8_t>* meta,
                                const std::function<void(ByteWriter&, uint32_t)>& per_item,
                                const std::vector<transport::ReadTarget>* targets,
                                std::unique_ptr<transport::PendingRead>* pending) {
  Session& s = *c.session;
  ByteWriter m;
  m.u32(static_cast<uint32_t>(f.items.size()));
  for (uint32_t i : f.items) {
    m.key(keys[i]);
    if (per_item) per_item(m, i);
  }
  if (targets)
    *pending = c.mover->send_read(s, op, m.data(), *targets, opts_.op_timeout_ms);
  else
    s.send_frame(op, 0, m.data(), nullptr, 0, 0, opts_.op_timeout_ms);
  recv_response(s, op, h, meta);
  if (h->status != kOk) server_error(op_name(op), s.sock().peer(), h->status);
  ByteReader r(meta->data(), meta->size());
  if (r.u32() != f.items.size())
    fail(ErrorKind::Protocol, std::string(op_name(op)) + " reply has the wrong item count");
  return r;
}

void Client::batch_exists(const std::vector<std::string_view>& keys, std::vector<int64_t>* result,
                          std::vector<std::string>* errors) {
  result->assign(keys.size(), kItemMissing);
  execute(
      plan(keys, nullptr),
      [&](transport::Connection& c, const Frame& f) {
        FrameHeader h;
        std::vector<uint8_t> meta;
        ByteReader r = keys_request(c, kBatchExists, f, keys, &h, &meta);
        for (uint32_t i : f.items) {
          uint64_t sz = r.u64();
          (*result)[i] = sz == kMissing ? kItemMissing : static_cast<int64_t>(sz);
        }
      },
      mark_all(result, kItemUnavailable), errors);
}

void Client::batch_remove(const std::vector<std::string_view>& keys, std::vector<int>* status,
                          std::vector<std::string>* errors) {
  status->assign(keys.size(), kOk);
  execute(
      plan(keys, nullptr),
      [&](transport::Connection& c, const Frame& f) {
        FrameHeader h;
        std::vector<uint8_t> meta;
        ByteReader r = keys_request(c, kBatchDelete, f, keys, &h, &meta);
        for (uint32_t i : f.items) (*status)[i] = r.u16();
      },
      mark_all(status, kStatusUnavailable), errors);
}

}  // namespace memkv
