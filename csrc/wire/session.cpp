#include "session.hpp"

#include <cstddef>
#include <algorithm>
#include <array>
#include <cstring>
#include <string>

#include "../common/crc32c.hpp"
#include "../common/error.hpp"

namespace memkv::wire {
namespace {

constexpr std::string_view kServerProofLabel = "memkv/1 server";
constexpr std::string_view kClientProofLabel = "memkv/1 client";
constexpr std::string_view kC2SLabel = "memkv/1 c2s";
constexpr std::string_view kS2CLabel = "memkv/1 s2c";
constexpr std::string_view kSealLabel = "memkv/1 seal";
constexpr size_t kCrcPiece = 512 * 1024;       // checksum, then send, this much at a time
constexpr uint64_t kCoalesceBytes = 256 * 1024;  // frames up to this size go out in one call

// The server proof covers the whole ClientHello and every ServerHello byte
// before the proof: version, status, nonces, node id and limits.
constexpr size_t kServerProofCovered = offsetof(ServerHello, proof);

Key32 derive(Hmac& master, std::string_view label, const uint8_t* cn, const uint8_t* sn) {
  Key32 k{};
  master.sign({Span(label), Span(cn, kNonceLen), Span(sn, kNonceLen)}, k.data());
  return k;
}

}  // namespace

Session::Session(Socket sock, const Key32& send_key, const Key32& recv_key)
    : sock_(std::move(sock)), send_mac_(send_key.data()), recv_mac_(recv_key.data()) {}

std::unique_ptr<Session> Session::client(Socket sock, const Key32& key, int timeout_ms, const std::string& tenant) {
  if (tenant.size() > kMaxTenantLen)
    fail(ErrorKind::Config, "MEMKV_TENANT: a tenant name has at most " + std::to_string(kMaxTenantLen) + " characters");
  Hmac master(key.data());
  ClientHello hello{};
  hello.magic = kHelloMagic;
  hello.min_version = kMinVersion;
  hello.max_version = kVersion;
  random_bytes(hello.nonce, kNonceLen);
  hello.tenant_len = static_cast<uint8_t>(tenant.size());
  std::memcpy(hello.tenant, tenant.data(), tenant.size());
  sock.send_all(&hello, sizeof(hello), timeout_ms);

  ServerHello sh{};
  sock.recv_exact(&sh, sizeof(sh), timeout_ms);
  const std::string& who = sock.peer();
  const std::string whose = tenant.empty() ? "auth key" : "key of tenant '" + tenant + "'";
  if (sh.magic != kServerHelloMagic)
    fail(ErrorKind::Protocol, who + " is not a MemKV node (bad handshake magic); check MEMKV_SERVERS");
  if (sh.status == kNodeBusy)
    fail(ErrorKind::Connection, who + " refused the connection: it already holds its maximum of connections "
                                      "(raise --max-connections / MEMKV_MAX_CONNECTIONS on the node)");
  if (sh.status == kAuthFailed)
    fail(ErrorKind::Auth, "authentication with " + who + " failed: the node has no tenant '" + tenant +
                              "' (check MEMKV_TENANT; `memkv tenant list --file FILE` shows the node's tenants)");
  if (sh.version < hello.min_version || sh.version > hello.max_version || sh.status == kVersionUnsupported)
    fail(ErrorKind::Protocol, who + " speaks no protocol version in " + std::to_string(kMinVersion) + ".." +
                                  std::to_string(kVersion) + "; upgrade the client or the node");
  if (!master.verify({Span(kServerProofLabel), Span(&hello, sizeof(hello)), Span(&sh, kServerProofCovered)}, sh.proof))
    fail(ErrorKind::Auth, "authentication with " + who + " failed: the node holds a different " + whose +
                              " (check MEMKV_AUTH_KEY" + (tenant.empty() ? "" : " and MEMKV_TENANT") +
                              " on both sides)");

  ClientAuth auth{};
  auth.magic = kAuthMagic;
  master.sign({Span(kClientProofLabel), Span(hello.nonce, kNonceLen), Span(sh.nonce, kNonceLen)}, auth.proof);
  sock.send_all(&auth, sizeof(auth), timeout_ms);
  AuthResult res{};
  sock.recv_exact(&res, sizeof(res), timeout_ms);
  if (res.magic != kAuthResultMagic) fail(ErrorKind::Protocol, who + " sent a malformed handshake reply");
  if (res.status != kOk)
    fail(ErrorKind::Auth, "authentication with " + who + " failed: the node rejected our " + whose +
                              " (check MEMKV_AUTH_KEY)");

  Key32 c2s = derive(master, kC2SLabel, hello.nonce, sh.nonce);
  Key32 s2c = derive(master, kS2CLabel, hello.nonce, sh.nonce);
  std::unique_ptr<Session> s(new Session(std::move(sock), c2s, s2c));
  s->peer_.version = sh.version;
  std::memcpy(s->peer_.node_id.data(), sh.node_id, kNodeIdLen);
  s->peer_.max_value_bytes = sh.max_value_bytes;
  return s;
}

bool ServerHandshake::hello(const ClientHello& hello, const KeyLookup& key_for,
                            const std::array<uint8_t, kNodeIdLen>& node_id, uint64_t max_value_bytes,
                            ServerHello* reply, std::string* why) {
  hello_ = hello;
  ServerHello& sh = reply_;
  sh = ServerHello{};
  sh.magic = kServerHelloMagic;
  if (hello.magic != kHelloMagic) {
    *why = "not a MemKV client (bad handshake magic)";
    return false;
  }
  if (hello.min_version > kVersion || hello.max_version < kMinVersion) {
    sh.version = 0;
    sh.status = kVersionUnsupported;
    *reply = sh;
    *why = "client speaks protocol versions " + std::to_string(hello.min_version) + ".." +
           std::to_string(hello.max_version) + " only";
    return false;
  }
  tenant_.assign(hello.tenant, std::min<size_t>(hello.tenant_len, kMaxTenantLen));
  if (hello.tenant_len > kMaxTenantLen || !key_for(tenant_, &key_)) {
    // Nothing to prove with: say so (the client then names MEMKV_TENANT).
    sh.status = kAuthFailed;
    *reply = sh;
    *why = "authentication failed: unknown tenant '" + tenant_ + "'";
    return false;
  }
  Hmac master(key_.data());
  sh.version = std::min<uint16_t>(hello.max_version, kVersion);
  random_bytes(sh.nonce, kNonceLen);
  std::memcpy(sh.node_id, node_id.data(), kNodeIdLen);
  sh.max_value_bytes = max_value_bytes;
  master.sign({Span(kServerProofLabel), Span(&hello_, sizeof(hello_)), Span(&sh, kServerProofCovered)}, sh.proof);
  *reply = sh;
  return true;
}

std::unique_ptr<Session> ServerHandshake::finish(Socket& sock, const ClientAuth& auth, AuthResult* result,
                                                 std::string* why) {
  Hmac master(key_.data());
  *result = AuthResult{};
  result->magic = kAuthResultMagic;
  bool ok = auth.magic == kAuthMagic && master.verify({Span(kClientProofLabel), Span(hello_.nonce, kNonceLen),
                                                       Span(reply_.nonce, kNonceLen)},
                                                      auth.proof);
  result->status = ok ? kOk : kAuthFailed;
  if (!ok) {
    *why = "authentication failed: bad client proof (wrong auth key)";
    return nullptr;
  }
  Key32 c2s = derive(master, kC2SLabel, hello_.nonce, reply_.nonce);
  Key32 s2c = derive(master, kS2CLabel, hello_.nonce, reply_.nonce);
  std::unique_ptr<Session> s(new Session(std::move(sock), s2c, c2s));
  s->peer_.version = reply_.version;
  s->peer_.tenant = tenant_;
  return s;
}

std::unique_ptr<Session> Session::server(Socket sock, const KeyLookup& key_for,
                                         const std::array<uint8_t, kNodeIdLen>& node_id, uint64_t max_value_bytes,
                                         int timeout_ms, std::string* why) {
  ClientHello hello{};
  if (!sock.recv_first(&hello, sizeof(hello), timeout_ms, timeout_ms)) {
    *why = "closed before the handshake";
    return nullptr;
  }
  ServerHandshake hs;
  ServerHello sh{};
  bool ok = hs.hello(hello, key_for, node_id, max_value_bytes, &sh, why);
  if (sh.magic == kServerHelloMagic) sock.send_all(&sh, sizeof(sh), timeout_ms);
  if (!ok) return nullptr;
  ClientAuth auth{};
  if (!sock.recv_first(&auth, sizeof(auth), timeout_ms, timeout_ms)) {
    *why = "authentication failed: the client closed the handshake (it does not hold our auth key)";
    return nullptr;
  }
  AuthResult res{};
  std::unique_ptr<Session> s = hs.finish(sock, auth, &res, why);
  (s ? s->sock_ : sock).send_all(&res, sizeof(res), timeout_ms);
  return s;
}

void Session::seal(FrameHeader* h, const std::vector<uint8_t>& meta) {
  h->magic = kFrameMagic;
  h->seq = ++send_seq_;
  h->meta_len = static_cast<uint32_t>(meta.size());
  h->reserved = 0;
  send_mac_.sign({Span(h, kMacCovered), Span(meta.data(), meta.size())}, h->mac);
}

void Session::send_frame(uint8_t op, uint16_t status, const std::vector<uint8_t>& meta, const struct iovec* data,
                         int n_data, uint64_t data_len, int timeout_ms, uint8_t flags) {
  FrameHeader h{};
  h.op = op;
  h.flags = flags;
  h.status = status;
  h.data_len = data_len;
  seal(&h, meta);
  // One sendmsg for small frames; large data goes straight from caller memory.
  std::vector<struct iovec> iov;
  iov.reserve(2 + static_cast<size_t>(n_data));
  iov.push_back({&h, sizeof(h)});
  if (!meta.empty()) iov.push_back({const_cast<uint8_t*>(meta.data()), meta.size()});
  for (int i = 0; i < n_data; ++i)
    if (data[i].iov_len) iov.push_back(data[i]);
  sock_.send_iov(iov.data(), static_cast<int>(iov.size()), timeout_ms);
}

std::vector<uint8_t> Session::encode_frame(uint8_t op, uint16_t status, const std::vector<uint8_t>& meta,
                                           const std::vector<uint8_t>& data) {
  FrameHeader h{};
  h.op = op;
  h.status = status;
  h.data_len = data.size();
  seal(&h, meta);
  std::vector<uint8_t> out(sizeof(h));
  std::memcpy(out.data(), &h, sizeof(h));
  out.insert(out.end(), meta.begin(), meta.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

void Session::seal_value(const FrameHeader& h, uint32_t index, uint32_t crc, uint8_t out[kSealLen]) {
  std::memcpy(out, &crc, 4);
  send_mac_.sign({Span(kSealLabel), Span(h.mac, kMacLen), Span(&index, 4), Span(&crc, 4)}, out + 4);
}

void Session::send_sealed(uint8_t op, const std::vector<uint8_t>& meta,
                          const std::vector<std::vector<struct iovec>>& values, int timeout_ms) {
  uint64_t total = values.size() * kSealLen;
  for (const auto& v : values)
    for (const struct iovec& p : v) total += p.iov_len;
  FrameHeader h{};
  h.op = op;
  h.data_len = total;
  seal(&h, meta);
  std::vector<struct iovec> head{{&h, sizeof(h)}};
  if (!meta.empty()) head.push_back({const_cast<uint8_t*>(meta.data()), meta.size()});
  if (total <= kCoalesceBytes) {
    // Small frames: checksum first (the bytes stay in cache) and send the
    // whole frame in one call, so the node wakes once.
    std::vector<std::array<uint8_t, kSealLen>> seals(values.size());
    for (uint32_t i = 0; i < values.size(); ++i) {
      uint32_t crc = 0;
      for (const struct iovec& p : values[i]) {
        crc = crc32c(crc, p.iov_base, p.iov_len);
        if (p.iov_len) head.push_back(p);
      }
      seal_value(h, i, crc, seals[i].data());
      head.push_back({seals[i].data(), kSealLen});
    }
    sock_.send_iov(head.data(), static_cast<int>(head.size()), timeout_ms);
    return;
  }
  sock_.send_iov(head.data(), static_cast<int>(head.size()), timeout_ms);
  for (uint32_t i = 0; i < values.size(); ++i) {
    uint32_t crc = 0;
    for (const struct iovec& p : values[i]) {
      const auto* b = static_cast<const uint8_t*>(p.iov_base);
      for (size_t off = 0; off < p.iov_len; off += kCrcPiece) {
        size_t n = std::min(kCrcPiece, p.iov_len - off);
        crc = crc32c(crc, b + off, n);
        sock_.send_all(b + off, n, timeout_ms);
      }
    }
    uint8_t sealed[kSealLen];
    seal_value(h, i, crc, sealed);
    sock_.send_all(sealed, kSealLen, timeout_ms);
  }
}

FrameHeader Session::send_unsealed_head(uint8_t op, uint8_t flags, const std::vector<uint8_t>& meta, uint32_t n,
                                        int timeout_ms) {
  FrameHeader h{};
  h.op = op;
  h.flags = flags;
  h.data_len = uint64_t{n} * kSealLen;
  seal(&h, meta);
  struct iovec iov[2] = {{&h, sizeof(h)}, {const_cast<uint8_t*>(meta.data()), meta.size()}};
  sock_.send_iov(iov, 2, timeout_ms);
  return h;
}

uint32_t Session::recv_seal(const FrameHeader& h, uint32_t index, int timeout_ms) {
  uint8_t sealed[kSealLen];
  sock_.recv_exact(sealed, kSealLen, timeout_ms);
  uint32_t crc;
  std::memcpy(&crc, sealed, 4);
  if (!recv_mac_.verify({Span(kSealLabel), Span(h.mac, kMacLen), Span(&index, 4), Span(&crc, 4)}, sealed + 4))
    fail(ErrorKind::Protocol, "the checksum sealing a value from " + sock_.peer() + " failed authentication");
  return crc;
}

std::vector<uint8_t> Session::encode_sealed(uint8_t op, const std::vector<uint8_t>& meta,
                                            const std::vector<std::vector<uint8_t>>& values) {
  FrameHeader h{};
  h.op = op;
  h.data_len = values.size() * kSealLen;
  for (const auto& v : values) h.data_len += v.size();
  seal(&h, meta);
  std::vector<uint8_t> out(sizeof(h));
  std::memcpy(out.data(), &h, sizeof(h));
  out.insert(out.end(), meta.begin(), meta.end());
  for (uint32_t i = 0; i < values.size(); ++i) {
    out.insert(out.end(), values[i].begin(), values[i].end());
    uint8_t sealed[kSealLen];
    seal_value(h, i, crc32c(0, values[i].data(), values[i].size()), sealed);
    out.insert(out.end(), sealed, sealed + kSealLen);
  }
  return out;
}

bool Session::recv_frame(FrameHeader* h, std::vector<uint8_t>* meta, int idle_timeout_ms, int timeout_ms) {
  if (!sock_.recv_first(h, sizeof(*h), idle_timeout_ms, timeout_ms)) return false;
  if (h->magic != kFrameMagic) fail(ErrorKind::Protocol, "bad frame magic from " + sock_.peer());
  if (h->meta_len > kMaxMetaLen || h->data_len > kMaxDataLen)
    fail(ErrorKind::Protocol, "frame from " + sock_.peer() + " exceeds the protocol size limits");
  meta->resize(h->meta_len);
  if (h->meta_len) sock_.recv_exact(meta->data(), h->meta_len, timeout_ms);
  if (!recv_mac_.verify({Span(h, kMacCovered), Span(meta->data(), meta->size())}, h->mac))
    fail(ErrorKind::Protocol, "frame from " + sock_.peer() + " failed authentication (tampered, or replayed from another connection)");
  if (h->seq != recv_seq_ + 1)
    fail(ErrorKind::Protocol, "frame from " + sock_.peer() + " is out of sequence (replayed or reordered)");
  ++recv_seq_;
  return true;
}

}  // namespace memkv::wire
