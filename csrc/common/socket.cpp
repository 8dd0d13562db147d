#include "socket.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>

#include "error.hpp"

namespace memkv {
namespace {

std::string errstr(int e) { return std::strerror(e); }

void tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

Socket& Socket::operator=(Socket&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = o.fd_;
    rcv_timeout_ms_ = o.rcv_timeout_ms_;
    snd_timeout_ms_ = o.snd_timeout_ms_;
    spin_us_ = o.spin_us_;
    peer_ = std::move(o.peer_);
    o.fd_ = -1;
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void Socket::shutdown_read() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

Socket Socket::connect_to(const std::string& host, uint16_t port, int timeout_ms) {
  struct addrinfo hints {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* res = nullptr;
  std::string port_s = std::to_string(port);
  int rc = getaddrinfo(host.c_str(), port_s.c_str(), &hints, &res);
  std::string where = host + ":" + port_s;
  if (rc != 0) fail(ErrorKind::Connection, "cannot resolve MemKV server " + where + ": " + gai_strerror(rc));
  std::string last = "no address";
  for (struct addrinfo* ai = res; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
      last = errstr(errno);
      continue;
    }
    int r = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (r != 0 && errno == EINPROGRESS) {
      struct pollfd pfd {fd, POLLOUT, 0};
      int pr;
      do pr = ::poll(&pfd, 1, timeout_ms); while (pr < 0 && errno == EINTR);
      if (pr == 0) {
        ::close(fd);
        last = "timed out after " + std::to_string(timeout_ms) + " ms";
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      r = err ? -1 : 0;
      errno = err;
    }
    if (r != 0) {
      last = errstr(errno);
      ::close(fd);
      continue;
    }
    // Back to blocking mode: reads try first and poll only when they would block.
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    tune(fd);
    freeaddrinfo(res);
    Socket s(fd);
    s.set_peer(where);
    return s;
  }
  freeaddrinfo(res);
  fail(ErrorKind::Connection, "cannot connect to MemKV server " + where + ": " + last);
}

void Socket::send_all(const void* p, size_t n, int timeout_ms) {
  struct iovec iov {const_cast<void*>(p), n};
  send_iov(&iov, 1, timeout_ms);
}

void Socket::set_timeout(int opt, int timeout_ms, int* current) {
  if (timeout_ms == *current) return;
  struct timeval tv {};
  if (timeout_ms > 0) {
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
  }
  setsockopt(fd_, SOL_SOCKET, opt, &tv, sizeof(tv));
  *current = timeout_ms;
}

void Socket::send_iov(struct iovec* iov, int iovcnt, int timeout_ms) {
  if (fd_ < 0) fail(ErrorKind::Connection, "send on a closed connection to " + peer_);
  // Blocking sendmsg: the kernel copies everything it can per call and
  // sleeps in between; SO_SNDTIMEO bounds each wait for buffer space.
  set_timeout(SO_SNDTIMEO, timeout_ms, &snd_timeout_ms_);
  while (iovcnt > 0) {
    if (iov->iov_len == 0) {
      ++iov;
      --iovcnt;
      continue;
    }
    struct msghdr msg {};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(std::min(iovcnt, IOV_MAX));
    ssize_t w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        fail(ErrorKind::Connection, "sending to " + peer_ + " timed out after " + std::to_string(timeout_ms) +
                                        " ms with no progress");
      fail(ErrorKind::Connection, "connection to " + peer_ + " broke while sending: " + errstr(errno));
    }
    size_t left = static_cast<size_t>(w);
    while (left && iovcnt) {
      if (left >= iov->iov_len) {
        left -= iov->iov_len;
        ++iov;
        --iovcnt;
      } else {
        iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + left;
        iov->iov_len -= left;
        left = 0;
      }
    }
  }
}

void Socket::recv_exact(void* p, size_t n, int timeout_ms,
                        const std::function<void(const uint8_t*, size_t)>& on_chunk) {
  if (fd_ < 0) fail(ErrorKind::Connection, "receive on a closed connection to " + peer_);
  // Blocking MSG_WAITALL reads of bounded chunks: one syscall per chunk
  // instead of a recv/poll dance per skb, and each chunk is still hot in
  // cache when on_chunk checksums it. SO_RCVTIMEO bounds every wait.
  constexpr size_t kChunk = 256 * 1024;
  set_timeout(SO_RCVTIMEO, timeout_ms, &rcv_timeout_ms_);
  auto* b = static_cast<uint8_t*>(p);
  while (n) {
    size_t want = std::min(n, kChunk);
    ssize_t r = ::recv(fd_, b, want, MSG_WAITALL);
    if (r > 0) {
      if (on_chunk) on_chunk(b, static_cast<size_t>(r));
      b += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    if (r == 0) fail(ErrorKind::Connection, "connection to " + peer_ + " closed by the peer");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      fail(ErrorKind::Connection, "receiving from " + peer_ + " timed out after " + std::to_string(timeout_ms) +
                                      " ms with no progress");
    fail(ErrorKind::Connection, "connection to " + peer_ + " broke while receiving: " + errstr(errno));
  }
}

bool Socket::recv_first(void* p, size_t n, int idle_timeout_ms, int timeout_ms) {
  if (fd_ < 0) return false;
  // A reply usually lands within tens of microseconds: spinning that long
  // costs less than sleeping and being woken (an IPI, costly on VMs).
  auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
  if (spin_us_ > 0) {
    // poll() reads the socket's state without taking its lock, so spinning
    // does not slow the kernel delivering the reply on the other core.
    struct pollfd pfd {fd_, POLLIN, 0};
    while (::poll(&pfd, 1, 0) == 0 && std::chrono::steady_clock::now() < spin_until) {
    }
  }
  for (;;) {
    ssize_t r = ::recv(fd_, p, n, MSG_DONTWAIT);
    if (r > 0) {
      if (static_cast<size_t>(r) < n) recv_exact(static_cast<uint8_t*>(p) + r, n - static_cast<size_t>(r), timeout_ms);
      return true;
    }
    if (r == 0) return false;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      struct pollfd pfd {fd_, POLLIN, 0};
      int pr;
      do pr = ::poll(&pfd, 1, idle_timeout_ms); while (pr < 0 && errno == EINTR);
      if (pr == 0) return false;
      continue;
    }
    if (errno == ECONNRESET || errno == ENOTCONN || errno == EBADF) return false;
    fail(ErrorKind::Connection, "connection to " + peer_ + " broke while receiving: " + errstr(errno));
  }
}

int listen_tcp(const std::string& host, uint16_t port, int backlog, uint16_t* bound_port) {
  struct addrinfo hints {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  struct addrinfo* res = nullptr;
  std::string port_s = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port_s.c_str(), &hints, &res);
  if (rc != 0) fail(ErrorKind::Config, "cannot resolve listen address " + host + ": " + gai_strerror(rc));
  int fd = ::socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
  if (fd < 0) {
    freeaddrinfo(res);
    fail(ErrorKind::Internal, "socket() failed: " + errstr(errno));
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, res->ai_addr, res->ai_addrlen) != 0) {
    int e = errno;
    ::close(fd);
    freeaddrinfo(res);
    fail(ErrorKind::Config, "cannot listen on " + host + ":" + port_s + ": " + errstr(e) +
                                (e == EADDRINUSE ? " (another process uses this port; pick another with --port)" : ""));
  }
  freeaddrinfo(res);
  if (::listen(fd, backlog) != 0) {
    int e = errno;
    ::close(fd);
    fail(ErrorKind::Internal, "listen() failed: " + errstr(e));
  }
  struct sockaddr_storage ss {};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<struct sockaddr*>(&ss), &len);
  if (bound_port)
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<struct sockaddr_in6*>(&ss)->sin6_port
                                                 : reinterpret_cast<struct sockaddr_in*>(&ss)->sin_port);
  return fd;
}

}  // namespace memkv
