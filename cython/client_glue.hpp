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
#include "../csrc/transport/rdma.hpp"
#include "../csrc/transport/verbs.hpp"

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

// mode: 0 tcp, 1 rdma, 2 auto (as nixl_memkv.transport passes it).
inline void set_transport(ClientOptions& o, int mode, const std::vector<std::string>& devices, uint64_t staging_bytes,
                          uint64_t slot_bytes) {
  o.transport.mode = mode == 1 ? transport::Mode::Rdma : mode == 2 ? transport::Mode::Auto : transport::Mode::Tcp;
  o.transport.rdma_devices = devices;
  o.transport.staging_bytes = staging_bytes;
  o.transport.staging_slot_bytes = slot_bytes;
}

// What the RDMA side did so far (all zero without RDMA).
inline std::vector<uint64_t> rdma_stats(Client& c) {
#if MEMKV_WITH_VERBS
  if (transport::RdmaClient* r = c.transport().rdma()) {
    transport::RdmaClientStats s = r->stats();
    return {s.zero_copy_bytes, s.staged_bytes, s.temp_registered_bytes, s.inline_frames, s.staging_waits,
            s.registered_bytes};
  }
#endif
  (void)c;
  return std::vector<uint64_t>(6, 0);
}

inline bool rdma_built() { return rdma::built_with_verbs(); }
inline std::string rdma_unavailable_reason() { return rdma::verbs_unavailable_reason(); }
inline std::vector<std::string> rdma_list_devices() { return rdma::list_devices(); }

class RawSession {
 public:
  RawSession(const std::string& host, uint16_t port, const unsigned char* key, int timeout_ms,
             const std::string& tenant)
      : timeout_ms_(timeout_ms) {
    wire::Key32 k;
    std::memcpy(k.data(), key, k.size());
    Socket sock = Socket::connect_to(host, port, timeout_ms);
    session_ = wire::Session::client(std::move(sock), k, timeout_ms, tenant);
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
