// Every op's body as the node parses it (Node::handle): one real node per
// process on 127.0.0.1 (DRAM-only store in a scratch directory, a tenant
// with a small quota), and per input one authenticated client connection
// that sends the fuzzer's requests as properly MAC'd frames, values sealed,
// so the fuzzer gets past the MAC to the op parsers, the value and
// multi-part paths, and the replies.
//
// Input: a byte choosing the identity (bit 0: tenant "team-a", else the
// cluster key), then requests, each: kind u8 (0 sealed: op, meta piece,
// count u8, value pieces; 1 plain: op, flags, meta piece, data piece).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "common/error.hpp"
#include "common/log.hpp"
#include "fuzz_input.hpp"
#include "node/server.hpp"

using namespace memkv;
using namespace memkv::wire;

namespace {

const Key32 kClusterKey = {0x42, 1, 2, 3};
const Key32 kTenantKey = {0x43, 3, 2, 1};
constexpr uint64_t kDram = 64ull << 20;
constexpr int kTimeoutMs = 3000;

Node* g_node = nullptr;

Node& node() {
  if (!g_node) {
    NodeOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.auth_key = kClusterKey;
    o.io_timeout_ms = kTimeoutMs;
    o.store.data_dir = fuzz::scratch_dir() + "/node";
    o.store.dram_capacity = kDram;
    o.store.disk_capacity = 0;
    o.store.space_wait_ms = 50;  // a full store answers no-space quickly instead of stalling the fuzzer
    g_node = new Node(o);
    g_node->start();
    TenantSpec t;
    t.name = "team-a";
    t.key = kTenantKey;
    t.dram_quota = 1 << 20;
    std::vector<std::string> added, revoked;
    g_node->set_tenants({t}, &added, &revoked);
    std::atexit([] { g_node->stop(); });
  }
  return *g_node;
}

struct Request {
  bool sealed = false;
  uint8_t op = 0, flags = 0;
  std::vector<uint8_t> meta, data;
  std::vector<std::vector<uint8_t>> values;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  node();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const bool tenant = in.u8() & 1;
  std::vector<Request> reqs;
  while (!in.empty() && reqs.size() < 32) {
    Request r;
    r.sealed = (in.u8() & 1) == 0;
    r.op = in.u8();
    if (!r.sealed) r.flags = in.u8();
    r.meta = in.piece();
    if (r.sealed) {
      r.values.resize(in.u8() % 4);
      for (auto& v : r.values) v = in.piece();
    } else {
      r.data = in.piece();
    }
    reqs.push_back(std::move(r));
  }

  std::unique_ptr<Session> s;
  try {
    s = Session::client(Socket::connect_to("127.0.0.1", node().port(), kTimeoutMs), tenant ? kTenantKey : kClusterKey,
                        kTimeoutMs, tenant ? "team-a" : "");
  } catch (const Error& e) {
    std::fprintf(stderr, "the node refused an honest client: %s\n", e.what());
    std::abort();
  }
  std::thread writer([&] {
    try {
      for (const Request& r : reqs) {
        if (r.sealed) {
          std::vector<std::vector<struct iovec>> pieces;
          for (const auto& v : r.values) pieces.push_back({{const_cast<uint8_t*>(v.data()), v.size()}});
          s->send_sealed(r.op, r.meta, pieces, kTimeoutMs);
        } else {
          struct iovec iov {const_cast<uint8_t*>(r.data.data()), r.data.size()};
          s->send_frame(r.op, 0, r.meta, &iov, 1, r.data.size(), kTimeoutMs, r.flags);
        }
      }
    } catch (const Error&) {
      // The node closed the connection (a request it rejected).
    }
    ::shutdown(s->sock().fd(), SHUT_WR);
  });
  try {
    FrameHeader h{};
    std::vector<uint8_t> meta;
    std::vector<uint8_t> sink(1 << 16);
    while (s->recv_frame(&h, &meta, kTimeoutMs, kTimeoutMs)) {
      for (uint64_t left = h.data_len; left;) {
        size_t k = static_cast<size_t>(std::min<uint64_t>(left, sink.size()));
        s->sock().recv_exact(sink.data(), k, kTimeoutMs);
        left -= k;
      }
    }
  } catch (const Error&) {
  }
  writer.join();
  s.reset();
  // The node's side of this connection ends on its own thread: wait for it,
  // so that inputs do not overlap (and coverage is this input's).
  for (int i = 0; i < 2000 && node().stats().connections != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  StoreStats st = node().store().stats();
  if (st.dram_used > st.dram_capacity) {
    std::fprintf(stderr, "DRAM accounting: %llu bytes used of %llu\n", static_cast<unsigned long long>(st.dram_used),
                 static_cast<unsigned long long>(st.dram_capacity));
    std::abort();
  }
  return 0;
}
