// A blocking TCP socket with per-call deadlines. Every wait is bounded by
// `timeout_ms` of no progress, so a stalled or dead peer becomes an error,
// never a hang. Large transfers go straight between the kernel and the
// caller's memory (sendmsg with iovecs, recv into the destination).
#pragma once
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace memkv {

class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() { close(); }
  Socket(Socket&& o) noexcept
      : fd_(o.fd_),
        rcv_timeout_ms_(o.rcv_timeout_ms_),
        snd_timeout_ms_(o.snd_timeout_ms_),
        spin_us_(o.spin_us_),
        peer_(std::move(o.peer_)) {
    o.fd_ = -1;
  }
  Socket& operator=(Socket&& o) noexcept;
  Socket(const Socket&) = delete;

  static Socket connect_to(const std::string& host, uint16_t port, int timeout_ms);

  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void close();
  // Wakes a thread blocked in recv on this socket (used for shutdown).
  void shutdown_read();
  void set_peer(std::string p) { peer_ = std::move(p); }
  // How long recv_first polls before sleeping (clients waiting for a reply).
  void set_spin_us(int us) { spin_us_ = us; }
  const std::string& peer() const { return peer_; }

  // timeout_ms < 0 waits forever.
  void send_all(const void* p, size_t n, int timeout_ms);
  void send_iov(struct iovec* iov, int iovcnt, int timeout_ms);
  // Receives exactly n bytes; `on_chunk(ptr, len)` sees each piece as it lands
  // (hot in cache), which is where checksums are computed.
  void recv_exact(void* p, size_t n, int timeout_ms,
                  const std::function<void(const uint8_t*, size_t)>& on_chunk = nullptr);
  // Like recv_exact, but waits up to idle_timeout_ms (-1: forever) for the
  // first byte and returns false if the peer closes or stays silent that long.
  bool recv_first(void* p, size_t n, int idle_timeout_ms, int timeout_ms);

 private:
  void set_timeout(int opt, int timeout_ms, int* current);
  int fd_ = -1;
  int rcv_timeout_ms_ = 0;  // as last set on the fd; 0: none (blocking forever)
  int snd_timeout_ms_ = 0;
  int spin_us_ = 0;
  std::string peer_;
};

// A listening socket (SO_REUSEADDR, CLOEXEC).
int listen_tcp(const std::string& host, uint16_t port, int backlog, uint16_t* bound_port);

}  // namespace memkv
