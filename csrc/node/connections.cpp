#include "connections.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <system_error>
#include <thread>

#include "../common/error.hpp"
#include "../common/log.hpp"

namespace memkv {

using namespace wire;

namespace {

// Frames up to this size (header, metadata and values) are waited for whole
// before a worker takes them: a small op never blocks a thread on the network.
constexpr uint64_t kInlineFrame = 32 * 1024;  // well under the default receive buffer
constexpr size_t kHandshakeMsg = sizeof(ClientHello);
static_assert(sizeof(ClientAuth) == kHandshakeMsg);
constexpr int kWaitMs = 1000;           // a waiting worker wakes this often (sweeps, retiring)
constexpr int kRetireAfterWaits = 10;   // idle this many waits in a row: the worker retires
constexpr int kStopGraceMs = 5000;      // at stop, ops still waiting on their client after this are cut
constexpr int kMinWorkers = 2;
constexpr int kAcceptBatch = 64;        // connections accepted per listener wake-up
constexpr int kMaxRefusing = 256;       // over-limit clients told so at once; beyond this, just closed
constexpr int64_t kSweepEveryNs = 1'000'000'000;
// A client in a tight loop sends its next request within microseconds of
// our reply: polling that long before parking saves it a wake-up (an IPI on
// VMs) and an epoll round trip per op. Clients that pause get no spin.
constexpr auto kSpin = std::chrono::microseconds(30);
constexpr uint64_t kListenTag = 1, kStopTag = 2;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string peer_name(const struct sockaddr_storage& ss) {
  char host[64] = "?";
  if (ss.ss_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const struct sockaddr_in*>(&ss)->sin_addr, host, sizeof(host));
  else if (ss.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const struct sockaddr_in6*>(&ss)->sin6_addr, host, sizeof(host));
  return std::string("client ") + host;
}

}  // namespace

ConnectionLoop::ConnectionLoop(ConnectionProtocol& protocol, Options opts) : protocol_(protocol), opts_(opts) {}

ConnectionLoop::~ConnectionLoop() { stop(); }

void ConnectionLoop::start(int listen_fd) {
  listen_fd_ = listen_fd;
  fcntl(listen_fd_, F_SETFL, fcntl(listen_fd_, F_GETFL) | O_NONBLOCK);
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epoll_fd_ < 0 || stop_fd_ < 0) fail(ErrorKind::Internal, std::string("epoll/eventfd: ") + std::strerror(errno));
  struct epoll_event ev {};
  ev.events = EPOLLIN;  // level-triggered and never read: every worker sees it
  ev.data.u64 = kStopTag;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, stop_fd_, &ev);
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.u64 = kListenTag;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
  started_ = true;
  for (int i = 0; i < kMinWorkers; ++i) spawn_worker();
}

void ConnectionLoop::stop() {
  std::lock_guard<std::mutex> g(stop_mu_);
  if (!started_ || stopped_) return;
  stopped_ = true;
  stopping_ = true;
  uint64_t one = 1;
  if (::write(stop_fd_, &one, sizeof(one)) < 0) log(LogLevel::Warning, "cannot wake the node's workers");
  // Workers finish the op they are in, then leave; waiting ones leave now.
  // An op still blocked on its client after kStopGraceMs (a client that
  // stopped sending mid-request, or stopped reading a reply) would hold the
  // stop for up to the I/O timeout: its socket is shut down, which ends the
  // op with an error. Shut down under conns_mu_, so no socket is closed (and
  // its number reused) meanwhile.
  const auto grace_end = std::chrono::steady_clock::now() + std::chrono::milliseconds(kStopGraceMs);
  bool cut = false;
  for (;;) {
    std::list<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> ws;
    {
      std::lock_guard<std::mutex> lk(workers_mu_);
      ws.swap(workers_);
    }
    if (ws.empty()) break;
    while (!cut) {
      bool all_done = true;
      for (auto& w : ws) all_done = all_done && w.second->load();
      if (all_done) break;
      if (std::chrono::steady_clock::now() >= grace_end) {
        std::lock_guard<std::mutex> lk(conns_mu_);
        size_t n = 0;
        for (auto& c : conns_)
          if (::shutdown(c->fd(), SHUT_RDWR) == 0) ++n;
        log(LogLevel::Warning, "stopping: " + std::to_string(n) + " connection(s) still mid-op after " +
                                   std::to_string(kStopGraceMs / 1000) + " s were cut");
        cut = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    for (auto& w : ws) w.first.join();
  }
  {
    std::lock_guard<std::mutex> lk(conns_mu_);
    deferred_.clear();
    for (auto& c : conns_)
      if (c->phase != Connection::Phase::Refusing) --live_;
    conns_.clear();
  }
  ::close(epoll_fd_);
  ::close(stop_fd_);
  epoll_fd_ = stop_fd_ = -1;
}

ConnectionStats ConnectionLoop::stats() const {
  ConnectionStats s;
  s.connections = live_;
  s.connections_total = total_;
  s.rejected = rejected_;
  s.auth_failures = auth_failures_;
  s.protocol_errors = protocol_errors_;
  s.stalled = stalled_;
  s.workers = static_cast<uint64_t>(n_workers_.load());
  return s;
}

void ConnectionLoop::spawn_worker() {
  std::lock_guard<std::mutex> lk(workers_mu_);
  if (stopping_) return;
  for (auto it = workers_.begin(); it != workers_.end();) {  // reap retired ones
    if (it->second->load()) {
      it->first.join();
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
  if (n_workers_ >= opts_.max_workers) return;
  ++n_workers_;
  auto done = std::make_shared<std::atomic<bool>>(false);
  try {
    workers_.emplace_back(std::thread([this, done] { worker(done); }), done);
  } catch (const std::system_error& e) {  // the thread limit: serve with the workers there are
    --n_workers_;
    log(LogLevel::Warning, std::string("cannot start a worker thread: ") + e.what());
  }
}

void ConnectionLoop::worker(std::shared_ptr<std::atomic<bool>> done) {
  int idle_waits = 0;
  bool retired = false;
  while (!stopping_) {
    struct epoll_event ev {};
    ++n_waiting_;
    int n = epoll_wait(epoll_fd_, &ev, 1, kWaitMs);
    --n_waiting_;
    if (stopping_ || (n > 0 && ev.data.u64 == kStopTag)) break;
    if (now_ns() >= next_sweep_ns_.load(std::memory_order_relaxed)) sweep();
    if (n <= 0) {
      if (n == 0 && ++idle_waits >= kRetireAfterWaits) {
        int w = n_workers_.load();
        if (w > kMinWorkers && n_workers_.compare_exchange_strong(w, w - 1)) {
          retired = true;
          break;
        }
      }
      continue;
    }
    idle_waits = 0;
    if (ev.data.u64 == kListenTag) {
      accept_some();
      continue;
    }
    on_event(static_cast<Connection*>(ev.data.ptr), ev.events);
  }
  if (!retired) --n_workers_;
  done->store(true);
}

void ConnectionLoop::accept_some() {
  for (int i = 0; i < kAcceptBatch && !stopping_; ++i) {
    struct sockaddr_storage ss {};
    socklen_t len = sizeof(ss);
    int fd = ::accept4(listen_fd_, reinterpret_cast<struct sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      // Out of fds or buffers: keep serving, but say so (and do not spin on it).
      log(LogLevel::Warning, std::string("accept failed: ") + std::strerror(errno) +
                                 (errno == EMFILE || errno == ENFILE ? " (raise `ulimit -n`)" : ""));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      break;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::unique_ptr<Connection> owned = protocol_.make_connection();
    Connection& c = *owned;
    c.sock = Socket(fd);
    c.fd_ = fd;
    c.peer_ = peer_name(ss);
    c.sock.set_peer(c.peer_);
    c.waiting_since_ns = now_ns();
    {
      std::lock_guard<std::mutex> lk(conns_mu_);
      if (live_ >= static_cast<uint64_t>(opts_.max_connections)) {
        ++rejected_;
        if (refusing_ >= kMaxRefusing) continue;  // `owned` closes it
        ++refusing_;
        c.phase = Connection::Phase::Refusing;
      } else {
        ++live_;
        ++total_;
      }
      conns_.push_front(std::move(owned));
      c.self = conns_.begin();
    }
    set_lowat(c, kHandshakeMsg);
    park(c, true);
  }
  struct epoll_event ev {};
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.u64 = kListenTag;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, listen_fd_, &ev);
}

void ConnectionLoop::park(Connection& c, bool add) {
  struct epoll_event ev {};
  ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
  ev.data.ptr = &c;
  c.parked.store(true, std::memory_order_release);
  // From here another worker may own c: do not touch it after a success.
  if (epoll_ctl(epoll_fd_, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c.fd(), &ev) != 0) {
    c.parked = false;
    close(c, std::string("cannot watch the connection: ") + std::strerror(errno));
  }
}

bool ConnectionLoop::set_lowat(Connection& c, int bytes) {
  if (c.lowat == bytes) return true;
  if (setsockopt(c.fd(), SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof(bytes)) != 0) return false;
  c.lowat = bytes;
  return true;
}

void ConnectionLoop::close(Connection& c, const std::string& why) {
  if (!why.empty()) log(LogLevel::Warning, "closing " + c.peer() + ": " + why);
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd(), nullptr);
  std::lock_guard<std::mutex> lk(conns_mu_);
  if (c.phase == Connection::Phase::Refusing)
    --refusing_;
  else
    --live_;
  conns_.erase(c.self);  // closes the socket, under the lock the sweep holds
}

void ConnectionLoop::on_event(Connection* c, uint32_t events) {
  // Acquires what the worker that parked it wrote (epoll carries the event,
  // but the memory model, and TSan, need the release/acquire pair).
  c->parked.exchange(false, std::memory_order_acq_rel);
  if (c->stalled) {  // the sweep counted it and said so
    log(LogLevel::Debug, "dropped " + c->peer() + ": stalled mid-message");
    close(*c);
    return;
  }
  if (c->phase != Connection::Phase::Frames && !handshake_step(*c)) return;
  switch (frame_ready(*c, events)) {
    case Ready::Closed: close(*c); return;
    case Ready::Wait: park(*c); return;
    case Ready::Small: run_frames(*c, false); return;
    case Ready::Bulk: run_frames(*c, true); return;
  }
}

bool ConnectionLoop::handshake_step(Connection& c) {
  for (;;) {
    ssize_t r = ::recv(c.fd(), c.msg + c.msg_have, kHandshakeMsg - c.msg_have, MSG_DONTWAIT);
    if (r > 0) {
      c.msg_have += static_cast<size_t>(r);
      if (c.msg_have == kHandshakeMsg) break;
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      park(c);
      return false;
    }
    // Closed (or reset) before finishing its handshake message.
    if (c.phase == Connection::Phase::Auth) {
      ++auth_failures_;
      log(LogLevel::Warning, "rejected " + c.peer() +
                                 ": authentication failed: the client closed the handshake (it does not hold our auth key)");
    }
    close(c);
    return false;
  }
  c.msg_have = 0;
  c.waiting_since_ns = now_ns();  // the next message's clock
  std::string why;
  try {
    switch (c.phase) {
      case Connection::Phase::Refusing: {
        ServerHello sh{};
        sh.magic = kServerHelloMagic;
        sh.status = kNodeBusy;
        c.sock.send_all(&sh, sizeof(sh), opts_.io_timeout_ms);
        close(c);
        return false;
      }
      case Connection::Phase::Hello: {
        ClientHello hello;
        std::memcpy(&hello, c.msg, sizeof(hello));
        ServerHello sh{};
        auto key_for = [&](std::string_view tenant, Key32* key) { return protocol_.key_for(c, tenant, key); };
        bool ok = c.handshake.hello(hello, key_for, protocol_.node_id(), protocol_.max_value_bytes(), &sh, &why);
        if (sh.magic == kServerHelloMagic) c.sock.send_all(&sh, sizeof(sh), opts_.io_timeout_ms);
        if (!ok) break;
        c.phase = Connection::Phase::Auth;
        park(c);
        return false;
      }
      case Connection::Phase::Auth: {
        ClientAuth auth;
        std::memcpy(&auth, c.msg, sizeof(auth));
        AuthResult res{};
        std::unique_ptr<Session> s = c.handshake.finish(c.sock, auth, &res, &why);
        (s ? s->sock() : c.sock).send_all(&res, sizeof(res), opts_.io_timeout_ms);
        if (!s) break;
        c.session = std::move(s);
        c.phase = Connection::Phase::Frames;
        c.waiting_since_ns = 0;
        protocol_.authenticated(c);
        return true;
      }
      case Connection::Phase::Frames: return true;
    }
  } catch (const Error& e) {  // a reply that could not go out
    why = e.what();
  }
  ++auth_failures_;
  log(LogLevel::Warning, "rejected " + c.peer() + ": " + why);
  close(c);
  return false;
}

ConnectionLoop::Ready ConnectionLoop::frame_ready(Connection& c, uint32_t events) {
  int queued = 0;
  if (ioctl(c.fd(), FIONREAD, &queued) != 0) return Ready::Closed;
  const bool peer_done = (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
  uint64_t need = sizeof(FrameHeader);
  if (static_cast<size_t>(queued) >= sizeof(FrameHeader)) {
    FrameHeader h;
    if (::recv(c.fd(), &h, sizeof(h), MSG_PEEK | MSG_DONTWAIT) != static_cast<ssize_t>(sizeof(h))) return Ready::Closed;
    // A bad header is read (and reported) by the worker like any other.
    if (h.magic != kFrameMagic || h.meta_len > kMaxMetaLen || h.data_len > kMaxDataLen) return Ready::Small;
    const uint64_t head = sizeof(h) + h.meta_len;
    // RDMA requests: the values travel outside the socket and their seals
    // follow the node's reads, so only the head can be waited for.
    const uint64_t whole = (h.flags & kFlagRdma) ? head : head + h.data_len;
    if (whole <= kInlineFrame) {
      if (static_cast<uint64_t>(queued) >= whole) return Ready::Small;
      need = whole;
    } else if (head <= kInlineFrame) {
      if (static_cast<uint64_t>(queued) >= head) return Ready::Bulk;
      need = head;
    } else {
      return Ready::Bulk;  // a huge metadata section is read by the worker, under the I/O timeout
    }
  }
  if (queued == 0) {
    if (peer_done) return Ready::Closed;
    c.waiting_since_ns = 0;  // idle between frames: no deadline
    // Woken by its first byte, so that a frame that starts but never ends
    // gets its deadline (bytes below SO_RCVLOWAT would wake nobody).
    need = 1;
  } else {
    if (peer_done) return Ready::Closed;  // the rest will never come
    int64_t zero = 0;
    c.waiting_since_ns.compare_exchange_strong(zero, now_ns());
  }
  if (!set_lowat(c, static_cast<int>(need))) return Ready::Closed;
  return Ready::Wait;
}

bool ConnectionLoop::serve_one(Connection& c) {
  FrameHeader h{};
  std::vector<uint8_t> meta;
  // The kernel wakes a blocked reader only once SO_RCVLOWAT bytes are in,
  // even if it asked for fewer: the op's reads need it back at 1.
  if (!set_lowat(c, 1)) {
    close(c);
    return false;
  }
  try {
    if (!c.session->recv_frame(&h, &meta, opts_.io_timeout_ms, opts_.io_timeout_ms)) {
      close(c);
      return false;
    }
    c.waiting_since_ns = 0;
    c.quick = std::chrono::steady_clock::now() - c.replied < kSpin;
    protocol_.serve(c, h, meta);
    c.replied = std::chrono::steady_clock::now();
    return true;
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::Protocol) {
      ++protocol_errors_;
      log(LogLevel::Warning, "closing " + c.peer() + ": " + e.what());
    } else if (!stopping_) {
      log(LogLevel::Debug, "connection from " + c.peer() + " ended: " + e.what());
    }
  } catch (const std::exception& e) {
    log(LogLevel::Error, "connection from " + c.peer() + " failed: " + e.what());
  }
  close(c);
  return false;
}

void ConnectionLoop::run_frames(Connection& first, bool bulk) {
  // Some worker must go on waiting while this one runs ops.
  if (n_waiting_ == 0) spawn_worker();
  Connection* c = &first;
  if (bulk && !take_bulk_slot(*c)) return;
  while (c) {
    for (;;) {
      if (!serve_one(*c)) break;
      if (stopping_) {
        close(*c);
        break;
      }
      uint32_t events = 0;
      if (c->quick) {
        const auto until = std::chrono::steady_clock::now() + kSpin;
        struct pollfd pfd {c->fd(), POLLIN | POLLRDHUP, 0};
        while (::poll(&pfd, 1, 0) == 0 && std::chrono::steady_clock::now() < until) {
        }
        if (pfd.revents & POLLRDHUP) events |= EPOLLRDHUP;
      }
      Ready r = frame_ready(*c, events);
      if (r == Ready::Closed) {
        close(*c);
        break;
      }
      if (r == Ready::Wait) {
        park(*c);
        break;
      }
      if (r == Ready::Small && bulk) {  // back to small frames: free the bulk slot
        Connection* next = release_bulk_slot();
        bulk = false;
        if (next) {
          park(*c);  // its small frame is queued: another worker takes it at once
          c = next;
          bulk = true;
        }
      } else if (r == Ready::Bulk && !bulk) {
        if (!take_bulk_slot(*c)) break;
        bulk = true;
      }
    }
    c = bulk ? release_bulk_slot() : nullptr;
  }
}

bool ConnectionLoop::take_bulk_slot(Connection& c) {
  std::lock_guard<std::mutex> lk(conns_mu_);
  if (n_bulk_ < opts_.max_bulk_workers) {
    ++n_bulk_;
    return true;
  }
  deferred_.push_back(&c);  // served when a bulk worker is done
  return false;
}

Connection* ConnectionLoop::release_bulk_slot() {
  // A bulk slot is free: it passes to a frame that waited for one, if any.
  std::lock_guard<std::mutex> lk(conns_mu_);
  if (!deferred_.empty() && !stopping_) {
    Connection* next = deferred_.front();
    deferred_.pop_front();
    return next;
  }
  --n_bulk_;
  return nullptr;
}

void ConnectionLoop::sweep() {
  int64_t now = now_ns();
  int64_t due = next_sweep_ns_.load();
  if (now < due || !next_sweep_ns_.compare_exchange_strong(due, now + kSweepEveryNs)) return;
  const int64_t limit = int64_t{opts_.io_timeout_ms} * 1'000'000;
  uint64_t dropped = 0;
  std::string example;
  {
    std::lock_guard<std::mutex> lk(conns_mu_);
    for (auto& c : conns_) {
      int64_t since = c->waiting_since_ns.load();
      // Only connections waiting in the epoll set: shutting one down makes
      // it readable, and the worker that takes it drops it.
      if (since && now - since > limit && c->parked && !c->stalled.exchange(true)) {
        ::shutdown(c->fd(), SHUT_RDWR);
        if (!dropped++) example = c->peer();
      }
    }
  }
  if (!dropped) return;
  stalled_ += dropped;
  // One line per sweep, not per connection: a slowloris flood must not flood the log.
  log(LogLevel::Warning, "dropping " + std::to_string(dropped) + " connection(s) (" + example +
                             (dropped > 1 ? " and others" : "") + ") that began a handshake or request and sent " +
                             "nothing more for " + std::to_string(opts_.io_timeout_ms) + " ms (--io-timeout-ms)");
}

}  // namespace memkv
