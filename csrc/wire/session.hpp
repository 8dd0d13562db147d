// An authenticated session over one TCP connection: the handshake (mutual
// proof of the shared key, fresh nonces, per-direction session keys) and the
// framing that MACs and sequences every frame afterwards. A frame replayed on
// another connection fails its MAC (different session keys); a frame replayed
// or reordered on the same connection fails its sequence check.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../common/hmac.hpp"
#include "../common/socket.hpp"
#include "protocol.hpp"

namespace memkv::wire {

using Key32 = std::array<uint8_t, kKeyLen>;

struct PeerInfo {
  uint16_t version = 0;
  std::string tenant;  // node side: the tenant the client proved ("" = the cluster key)
  std::array<uint8_t, kNodeIdLen> node_id{};
  uint64_t max_value_bytes = 0;
};

class Session;

// The node's side of the handshake, one step per client message, so that a
// node waiting for a client's next message needs no thread for it (the
// event loop runs each step once the message is queued in full).
class ServerHandshake {
 public:
  using KeyLookup = std::function<bool(std::string_view tenant, Key32* key)>;
  // Step 1, the ClientHello: fills the ServerHello to send. False when the
  // client is refused (*why says why); the reply still goes out unless its
  // magic was left 0 (not a MemKV client: nothing to answer).
  bool hello(const ClientHello& hello, const KeyLookup& key_for, const std::array<uint8_t, kNodeIdLen>& node_id,
             uint64_t max_value_bytes, ServerHello* reply, std::string* why);
  // Step 2, the ClientAuth: fills the AuthResult to send and, when the
  // client proved the key, returns the session over `sock`.
  std::unique_ptr<Session> finish(Socket& sock, const ClientAuth& auth, AuthResult* result, std::string* why);
  // The tenant the client named in its hello ("" = the cluster key).
  const std::string& tenant() const { return tenant_; }

 private:
  Key32 key_{};
  ClientHello hello_{};
  ServerHello reply_{};
  std::string tenant_;
};

class Session {
 public:
  // Client side: runs the handshake on a connected socket, proving `key` as
  // `tenant` ("" = the cluster key). Throws Auth errors when the node does
  // not prove the same key, does not know the tenant, or rejects ours.
  static std::unique_ptr<Session> client(Socket sock, const Key32& key, int timeout_ms,
                                         const std::string& tenant = {});
  // Node side, blocking (both ServerHandshake steps in turn): `key_for(tenant,
  // &key)` gives the key a client naming `tenant` must prove ("" = the
  // cluster key), false if there is none. Returns nullptr (after answering)
  // when the peer fails to authenticate.
  using KeyLookup = ServerHandshake::KeyLookup;
  static std::unique_ptr<Session> server(Socket sock, const KeyLookup& key_for,
                                         const std::array<uint8_t, kNodeIdLen>& node_id, uint64_t max_value_bytes,
                                         int timeout_ms, std::string* why);

  Socket& sock() { return sock_; }
  const PeerInfo& peer() const { return peer_; }

  // Sends header + metadata + the data pieces (which must add up to data_len).
  void send_frame(uint8_t op, uint16_t status, const std::vector<uint8_t>& meta, const struct iovec* data, int n_data,
                  uint64_t data_len, int timeout_ms, uint8_t flags = 0);
  // Sends a value-carrying request: header + metadata, then each value's
  // pieces, checksummed as they go, each value followed by its seal (see
  // protocol.hpp). `values[i]` lists value i's pieces in order.
  void send_sealed(uint8_t op, const std::vector<uint8_t>& meta, const std::vector<std::vector<struct iovec>>& values,
                   int timeout_ms);
  // A request whose `n` values travel outside the frame (RDMA): first the
  // header and metadata (the node can start moving values), then each
  // value's seal as its CRC becomes known, in order.
  FrameHeader send_unsealed_head(uint8_t op, uint8_t flags, const std::vector<uint8_t>& meta, uint32_t n,
                                 int timeout_ms);
  // The seal of value `index` of frame h (its bytes go to sock() as they are).
  void make_seal(const FrameHeader& h, uint32_t index, uint32_t crc, uint8_t out[kSealLen]) {
    seal_value(h, index, crc, out);
  }
  // Reads the seal of value `index` of frame `h`, checks its MAC (a protocol
  // error if it fails) and returns the value's CRC.
  uint32_t recv_seal(const FrameHeader& h, uint32_t index, int timeout_ms);
  // Builds the exact bytes send_frame would put on the wire for a frame with
  // `data` inline (tests use this to tamper with and replay frames).
  std::vector<uint8_t> encode_frame(uint8_t op, uint16_t status, const std::vector<uint8_t>& meta,
                                    const std::vector<uint8_t>& data);
  // The same for a sealed frame whose data is `values` back to back.
  std::vector<uint8_t> encode_sealed(uint8_t op, const std::vector<uint8_t>& meta,
                                     const std::vector<std::vector<uint8_t>>& values);

  // Receives and verifies the next header and its metadata. Returns false if
  // the peer closed, or sent nothing for idle_timeout_ms (-1: wait forever),
  // before a frame began. The data section is left to the caller.
  bool recv_frame(FrameHeader* h, std::vector<uint8_t>* meta, int idle_timeout_ms, int timeout_ms);

 private:
  friend class ServerHandshake;
  Session(Socket sock, const Key32& send_key, const Key32& recv_key);
  void seal(FrameHeader* h, const std::vector<uint8_t>& meta);
  void seal_value(const FrameHeader& h, uint32_t index, uint32_t crc, uint8_t out[kSealLen]);

  Socket sock_;
  Hmac send_mac_;
  Hmac recv_mac_;
  uint64_t send_seq_ = 0;
  uint64_t recv_seq_ = 0;
  PeerInfo peer_;
};

}  // namespace memkv::wire
