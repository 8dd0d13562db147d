// Adapters between the native Client and Cython: a C callback for reads of
// unknown size, and a raw session that exposes exact frame bytes so tests can
// tamper with and replay them against a real node.
#pragma once
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "../csrc/client/client.hpp"
#include "../csrc/common/bytes.hpp"

namespace memkv::py {

using AllocFn = uint8_t* (*)(void* ctx, uint64_t size);

inline int64_t get_alloc_c(Client& c, std::string_view key, AllocFn fn, void* ctx) {
  return c.get_alloc(key, [&](uint64_t n) {
    uint8_t* p = fn(ctx, n);
    if (!p) throw std::bad_alloc();
    return p;
  });
}

inline void set_server(ServerAddr& a, const std::string& name, const std::string& host, uint16_t port) {
  a.name = name;
  a.host = host;
  a.port = port;
}

class RawSession {
 public:
  RawSession(const std::string& host, uint16_t port, const unsigned char* key, int timeout_ms)
      : timeout_ms_(timeout_ms) {
    wire::Key32 k;
    std::memcpy(k.data(), key, k.size());
    Socket sock = Socket::connect_to(host, port, timeout_ms);
    session_ = wire::Session::client(std::move(sock), k, timeout_ms);
  }
  std::string encode(uint8_t op, const std::string& meta, const std::string& data) {
    std::vector<uint8_t> m(meta.begin(), meta.end()), d(data.begin(), data.end());
    std::vector<uint8_t> f = session_->encode_frame(op, 0, m, d);
    return std::string(f.begin(), f.end());
  }
  // A value-carrying frame (PUT, BATCH_PUT, PUT_PART) with its seal.
  std::string encode_sealed(uint8_t op, const std::string& meta, const std::vector<std::string>& values) {
    std::vector<uint8_t> m(meta.begin(), meta.end());
    std::vector<std::vector<uint8_t>> vs;
    for (const std::string& v : values) vs.emplace_back(v.begin(), v.end());
    std::vector<uint8_t> f = session_->encode_sealed(op, m, vs);
    return std::string(f.begin(), f.end());
  }
  void send_raw(const std::string& bytes) { session_->sock().send_all(bytes.data(), bytes.size(), timeout_ms_); }
  // The reply's status, or -1 when the node closed the connection instead.
  int recv_status() {
    try {
      wire::FrameHeader h;
      std::vector<uint8_t> meta;
      if (!session_->recv_frame(&h, &meta, timeout_ms_, timeout_ms_)) return -1;
      std::vector<uint8_t> sink(static_cast<size_t>(h.data_len));
      if (h.data_len) session_->sock().recv_exact(sink.data(), sink.size(), timeout_ms_);
      return h.status;
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::Connection) return -1;
      throw;
    }
  }

 private:
  std::unique_ptr<wire::Session> session_;
  int timeout_ms_;
};

}  // namespace memkv::py
