// The data port's connections, served event-driven: while a connection waits
// (for its handshake messages, between frames, or with a small frame still
// arriving) it costs a socket and a few hundred bytes, not a thread. A
// worker thread takes a connection only once its next step's bytes are all
// queued in the kernel, then runs the op with the same blocking, zero-copy
// code as before (a value moves straight between the socket and its DRAM
// buffer), and keeps the connection while its client sends the next request
// right away.
//
// Every worker waits in epoll_wait on one epoll set (EPOLLONESHOT, so each
// readiness goes to exactly one of them): there is no hand-off between an
// event thread and a worker on the hot path. SO_RCVLOWAT makes the kernel
// report a connection only once the bytes its next step needs are in, so a
// client trickling a partial frame (slowloris) wakes nobody until its frame
// is complete, and is dropped when it stalls longer than the I/O timeout.
// Workers are spawned when none is left waiting, up to a cap, and retire
// after a while idle.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "../common/socket.hpp"
#include "../wire/session.hpp"

namespace memkv {

// One client connection. The protocol served on it (the Node) keeps its
// own per-connection state in a subclass.
struct Connection {
  enum class Phase { Hello, Auth, Frames, Refusing };
  virtual ~Connection() = default;
  int fd() const { return fd_; }  // the same before and after the handshake
  const std::string& peer() const { return peer_; }

  Socket sock;                               // until the handshake completes
  std::unique_ptr<wire::Session> session;    // from then on (it owns the socket)
  wire::ServerHandshake handshake;
  Phase phase = Phase::Hello;
  uint8_t msg[sizeof(wire::ClientHello)];    // a handshake message as it arrives
  size_t msg_have = 0;
  int lowat = 1;                             // the socket's SO_RCVLOWAT
  // Since when bytes of an unfinished step are pending (0: none); the sweep
  // drops connections that stay so for longer than the I/O timeout.
  std::atomic<int64_t> waiting_since_ns{0};
  std::atomic<bool> parked{false};           // armed in the epoll set, owned by no worker
  std::atomic<bool> stalled{false};          // shut down by the sweep
  std::chrono::steady_clock::time_point replied{};  // when its last reply went out
  bool quick = false;  // its last request came right after the reply before it
  int fd_ = -1;
  std::string peer_;
  std::list<std::unique_ptr<Connection>>::iterator self;
};

struct ConnectionStats {
  uint64_t connections = 0, connections_total = 0, rejected = 0, auth_failures = 0, protocol_errors = 0;
  uint64_t stalled = 0;  // dropped for a partial message that stopped arriving
  uint64_t workers = 0;  // threads now
};

// What the loop serves on its connections (the Node implements it).
class ConnectionProtocol {
 public:
  virtual ~ConnectionProtocol() = default;
  virtual std::unique_ptr<Connection> make_connection() = 0;
  // The key a client naming `tenant` must prove; false: no such tenant.
  virtual bool key_for(Connection& c, std::string_view tenant, wire::Key32* key) = 0;
  virtual const std::array<uint8_t, wire::kNodeIdLen>& node_id() const = 0;
  virtual uint64_t max_value_bytes() const = 0;
  virtual void authenticated(Connection& c) = 0;
  // Serves one frame whose header and metadata were read (throws to close).
  virtual void serve(Connection& c, const wire::FrameHeader& h, const std::vector<uint8_t>& meta) = 0;
};

class ConnectionLoop {
 public:
  struct Options {
    int max_connections = 1024;
    int io_timeout_ms = 60000;
    int max_workers = 512;       // threads running ops at once
    int max_bulk_workers = 384;  // of them, on frames whose bytes were not all in: small ops keep the rest
  };
  ConnectionLoop(ConnectionProtocol& protocol, Options opts);
  ~ConnectionLoop();
  ConnectionLoop(const ConnectionLoop&) = delete;

  // Serves connections accepted on `listen_fd` (which stays the caller's).
  void start(int listen_fd);
  // Stops accepting, wakes every waiting connection, lets ops in progress
  // finish, and closes every connection. Idempotent.
  void stop();
  ConnectionStats stats() const;

 private:
  enum class Ready { Small, Bulk, Wait, Closed };
  void worker(std::shared_ptr<std::atomic<bool>> done);
  void spawn_worker();
  void accept_some();
  void on_event(Connection* c, uint32_t events);
  bool handshake_step(Connection& c);
  Ready frame_ready(Connection& c, uint32_t events);
  void run_frames(Connection& c, bool bulk);
  bool serve_one(Connection& c);
  bool take_bulk_slot(Connection& c);
  Connection* release_bulk_slot();
  void park(Connection& c, bool add = false);
  void close(Connection& c, const std::string& why = {});
  bool set_lowat(Connection& c, int bytes);
  void sweep();

  ConnectionProtocol& protocol_;
  Options opts_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int stop_fd_ = -1;  // an eventfd: readable once stop() begins, wakes every worker
  std::atomic<bool> stopping_{false};
  bool started_ = false, stopped_ = false;
  std::mutex stop_mu_;

  mutable std::mutex conns_mu_;
  std::list<std::unique_ptr<Connection>> conns_;
  std::deque<Connection*> deferred_;  // bulk frames waiting for a bulk worker (under conns_mu_)

  std::mutex workers_mu_;
  std::list<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> workers_;
  std::atomic<int> n_workers_{0}, n_waiting_{0};
  int n_bulk_ = 0;     // workers on bulk frames (under conns_mu_)
  int refusing_ = 0;   // over-limit connections being told so (under conns_mu_)
  std::atomic<int64_t> next_sweep_ns_{0};

  std::atomic<uint64_t> live_{0}, total_{0}, rejected_{0}, auth_failures_{0}, protocol_errors_{0}, stalled_{0};
};

}  // namespace memkv
