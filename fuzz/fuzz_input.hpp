// Shared pieces of the fuzz targets: a sequential reader over the fuzzer's
// bytes (fields in order, zeros once they run out, so the seed generator can
// write inputs field by field), its writer twin for make_seeds, a socket
// pair, and a scratch directory per process.
#pragma once
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "common/log.hpp"

namespace memkv::fuzz {

// Rejected input is the point here: log errors only, not a warning per input.
inline const bool quiet_logs = (set_log_sink(nullptr, static_cast<int>(LogLevel::Error)), true);

class Input {
 public:
  Input(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool empty() const { return pos_ >= n_; }
  size_t left() const { return n_ - pos_; }
  template <class T>
  T get() {
    T v{};
    size_t k = std::min(sizeof(T), left());
    std::memcpy(&v, p_ + pos_, k);
    pos_ += k;
    return v;
  }
  uint8_t u8() { return get<uint8_t>(); }
  uint16_t u16() { return get<uint16_t>(); }
  uint32_t u32() { return get<uint32_t>(); }
  uint64_t u64() { return get<uint64_t>(); }
  // Up to n bytes (fewer at the end of the input).
  std::vector<uint8_t> bytes(size_t n) {
    n = std::min(n, left());
    std::vector<uint8_t> out(p_ + pos_, p_ + pos_ + n);
    pos_ += n;
    return out;
  }
  // A length-prefixed (u16) piece.
  std::vector<uint8_t> piece() { return bytes(u16()); }
  std::string str() {
    auto b = piece();
    return std::string(b.begin(), b.end());
  }
  std::vector<uint8_t> rest() { return bytes(left()); }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
};

class Output {
 public:
  template <class T>
  Output& put(T v) {
    const auto* b = reinterpret_cast<const uint8_t*>(&v);
    buf_.insert(buf_.end(), b, b + sizeof(T));
    return *this;
  }
  Output& u8(uint8_t v) { return put(v); }
  Output& u16(uint16_t v) { return put(v); }
  Output& u32(uint32_t v) { return put(v); }
  Output& u64(uint64_t v) { return put(v); }
  Output& bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
    return *this;
  }
  Output& bytes(const std::vector<uint8_t>& v) { return bytes(v.data(), v.size()); }
  Output& piece(const std::vector<uint8_t>& v) {
    u16(static_cast<uint16_t>(v.size()));
    return bytes(v);
  }
  Output& str(const std::string& s) { return piece(std::vector<uint8_t>(s.begin(), s.end())); }
  const std::vector<uint8_t>& data() const { return buf_; }

 private:
  std::vector<uint8_t> buf_;
};

// A connected AF_UNIX stream pair: [0] for the side under test, [1] for the fuzzer.
inline std::pair<int, int> socket_pair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  return {sv[0], sv[1]};
}

inline void write_all(int fd, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n) {
    ssize_t w = ::send(fd, b, n, MSG_NOSIGNAL);
    if (w <= 0) return;  // the side under test hung up: the rest is moot
    b += w;
    n -= static_cast<size_t>(w);
  }
}

// A directory under $TMPDIR for this process, removed at exit.
inline const std::string& scratch_dir() {
  static std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string d = std::string(t && *t ? t : "/tmp") + "/memkv-fuzz-XXXXXX";
    if (!::mkdtemp(d.data())) std::abort();
    static std::string keep = d;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(keep, ec);
    });
    return d;
  }();
  return dir;
}

inline void remove_tree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace memkv::fuzz
