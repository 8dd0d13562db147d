// Frame header, metadata and MAC verification on the receiving side
// (Session::recv_frame), and the seals of the values that follow
// (Session::recv_seal). The peer is authenticated (a real handshake); each
// input is a list of frames it sends: properly MAC'd and then tampered with
// at one byte, or raw bytes. The receiver must reject exactly the frames
// whose MAC-covered bytes (header, metadata) or seals were touched, and a
// touched value byte must show as a CRC mismatch against its seal.
//
// Input, per frame: kind u8 (0 frame, 1 sealed frame, 2 raw), op u8,
// status u16, meta piece, tamper offset u16, xor u8; then frame: a data
// piece; sealed: count u8 and value pieces; raw: a piece of bytes.
#include <cstdlib>

#include "common/crc32c.hpp"
#include "session_pair.hpp"

using namespace memkv;
using namespace memkv::wire;

namespace {

enum class Hit { None, Covered, Data, Value, Seal };

struct Sent {
  int kind = 0;
  std::vector<uint64_t> sizes;  // sealed: the value sizes
  Hit hit = Hit::None;
  size_t hit_index = 0;  // Value/Seal: which one
};

// Where byte `at` of a frame with `meta_len` bytes of metadata lies.
void locate(Sent* s, size_t at, size_t meta_len) {
  size_t head = sizeof(FrameHeader) + meta_len;
  if (at < head) {
    s->hit = Hit::Covered;
    return;
  }
  if (s->kind == 0) {
    s->hit = Hit::Data;
    return;
  }
  size_t pos = head;
  for (size_t i = 0; i < s->sizes.size(); ++i) {
    if (at < pos + s->sizes[i]) {
      s->hit = Hit::Value;
      s->hit_index = i;
      return;
    }
    pos += s->sizes[i];
    if (at < pos + kSealLen) {
      s->hit = Hit::Seal;
      s->hit_index = i;
      return;
    }
    pos += kSealLen;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  auto p = fuzz::session_pair();
  std::vector<uint8_t> wire_bytes;
  std::vector<Sent> sent;
  while (!in.empty() && sent.size() < 64) {
    Sent s;
    s.kind = in.u8() % 3;
    uint8_t op = in.u8();
    uint16_t status = in.u16();
    std::vector<uint8_t> meta = in.piece();
    uint16_t at = in.u16();
    uint8_t flip = in.u8();
    std::vector<uint8_t> frame;
    if (s.kind == 0) {
      frame = p.client->encode_frame(op, status, meta, in.piece());
    } else if (s.kind == 1) {
      std::vector<std::vector<uint8_t>> values(in.u8() % 8);
      for (auto& v : values) {
        v = in.piece();
        s.sizes.push_back(v.size());
      }
      frame = p.client->encode_sealed(op, meta, values);
    } else {
      frame = in.piece();
    }
    if (s.kind != 2 && flip && !frame.empty()) {
      frame[at % frame.size()] ^= flip;
      locate(&s, at % frame.size(), meta.size());
    }
    sent.push_back(s);
    wire_bytes.insert(wire_bytes.end(), frame.begin(), frame.end());
  }
  int peer = p.client->sock().fd();
  std::thread writer([&] {
    fuzz::write_all(peer, wire_bytes.data(), wire_bytes.size());
    ::shutdown(peer, SHUT_WR);
  });

  // Frames are checked against what was sent until the first raw one (after
  // it the stream is whatever the fuzzer made it).
  size_t i = 0;
  bool rejected = false;
  try {
    FrameHeader h{};
    std::vector<uint8_t> meta;
    for (; p.server->recv_frame(&h, &meta, 1000, 1000); ++i) {
      const bool known = i < sent.size() && sent[i].kind != 2;
      if (known && sent[i].hit == Hit::Covered) {
        std::fprintf(stderr, "frame %zu: a tampered header/metadata byte passed the MAC\n", i);
        std::abort();
      }
      if (!known || sent[i].kind == 0) {
        std::vector<uint8_t> skip(static_cast<size_t>(std::min<uint64_t>(h.data_len, 1 << 16)));
        for (uint64_t left = h.data_len; left;) {
          size_t k = static_cast<size_t>(std::min<uint64_t>(left, skip.size()));
          p.server->sock().recv_exact(skip.data(), k, 1000);
          left -= k;
        }
        if (!known) break;
        continue;
      }
      const Sent& s = sent[i];
      for (uint32_t v = 0; v < s.sizes.size(); ++v) {
        std::vector<uint8_t> value(s.sizes[v]);
        if (!value.empty()) p.server->sock().recv_exact(value.data(), value.size(), 1000);
        uint32_t crc = crc32c(0, value.data(), value.size());
        uint32_t sealed = p.server->recv_seal(h, v, 1000);
        if (s.hit == Hit::Seal && s.hit_index == v) {
          std::fprintf(stderr, "frame %zu: a tampered seal passed its MAC\n", i);
          std::abort();
        }
        if ((crc != sealed) != (s.hit == Hit::Value && s.hit_index == v)) {
          std::fprintf(stderr, "frame %zu value %u: CRC %s the seal\n", i, v, crc == sealed ? "matches" : "differs from");
          std::abort();
        }
      }
    }
  } catch (const Error&) {
    rejected = true;
  }
  writer.join();
  // An untouched stream is accepted whole.
  bool all_honest = true;
  for (const Sent& s : sent) all_honest = all_honest && s.kind != 2 && (s.hit == Hit::None || s.hit == Hit::Data);
  if (all_honest && (rejected || i != sent.size())) {
    std::fprintf(stderr, "an untampered stream of %zu frames was rejected at frame %zu\n", sent.size(), i);
    std::abort();
  }
  return 0;
}
