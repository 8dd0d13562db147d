// The seal that follows every value of a put (Session::recv_seal): CRC-32C
// and an HMAC binding it to the frame's MAC and the value's index. Input:
// the seals a peer sends after one authentic header, each either made by
// the peer's session for (index, crc) and then possibly tampered with, or
// 36 raw bytes. A seal is accepted exactly when it is the one the peer's
// session would make for that frame, index and CRC.
#include "session_pair.hpp"

using namespace memkv;
using namespace memkv::wire;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  auto p = fuzz::session_pair();
  FrameHeader h = p.client->send_unsealed_head(kPut, 0, {}, 0, 1000);
  FrameHeader got{};
  std::vector<uint8_t> meta;
  if (!p.server->recv_frame(&got, &meta, 1000, 1000)) std::abort();
  struct Seal {
    uint8_t bytes[kSealLen];
    uint32_t crc;
    bool genuine;
  };
  std::vector<Seal> seals;
  while (!in.empty() && seals.size() < 32) {
    Seal s{};
    uint8_t mode = in.u8();
    uint32_t index = static_cast<uint32_t>(seals.size());
    if (mode & 1) {  // the peer's own seal, for a fuzzer-chosen index and CRC
      uint32_t for_index = (mode & 2) ? in.u32() : index;
      s.crc = in.u32();
      p.client->make_seal(h, for_index, s.crc, s.bytes);
      uint8_t at = in.u8(), flip = in.u8();
      s.bytes[at % kSealLen] ^= flip;
      s.genuine = for_index == index && flip == 0;
    } else {
      auto raw = in.bytes(kSealLen);
      if (!raw.empty()) std::memcpy(s.bytes, raw.data(), raw.size());
      std::memcpy(&s.crc, s.bytes, 4);
      s.genuine = false;
    }
    seals.push_back(s);
  }
  int peer = p.client->sock().fd();
  std::thread writer([&] {
    for (const Seal& s : seals) fuzz::write_all(peer, s.bytes, kSealLen);
    ::shutdown(peer, SHUT_WR);
  });
  for (uint32_t i = 0; i < seals.size(); ++i) {
    bool ok = false;
    uint32_t crc = 0;
    try {
      crc = p.server->recv_seal(got, i, 1000);
      ok = true;
    } catch (const Error&) {
    }
    // A raw 36-byte seal that is right by chance would need a 2^-256 guess.
    if (ok != seals[i].genuine || (ok && crc != seals[i].crc)) {
      std::fprintf(stderr, "seal %u: %s\n", i, ok ? "forged seal accepted" : "genuine seal rejected");
      std::abort();
    }
    if (!ok) break;  // the node closes the connection here
  }
  writer.join();
  return 0;
}
