// An authenticated client/server Session pair over a socket pair: the frame
// and seal targets start from a finished handshake, so their inputs reach
// the framing instead of dying at the first MAC.
#pragma once
#include <memory>
#include <thread>

#include "common/error.hpp"
#include "fuzz_input.hpp"
#include "wire/session.hpp"

namespace memkv::fuzz {

struct SessionPair {
  std::unique_ptr<wire::Session> client, server;
};

inline SessionPair session_pair() {
  static const wire::Key32 key = {7, 7, 7};
  auto [a, b] = socket_pair();
  SessionPair p;
  std::thread t([&, b = b] { p.client = wire::Session::client(Socket(b), key, 2000); });
  std::string why;
  auto lookup = [](std::string_view tenant, wire::Key32* k) {
    *k = key;
    return tenant.empty();
  };
  p.server = wire::Session::server(Socket(a), lookup, {}, 1 << 20, 2000, &why);
  t.join();
  if (!p.client || !p.server) std::abort();  // an honest handshake must succeed
  return p;
}

}  // namespace memkv::fuzz
