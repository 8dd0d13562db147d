// The node side of the handshake (Session::server): ClientHello, then
// ClientAuth, as a client on the network may send them. Input: a mode byte,
// then the bytes the client sends. Mode bit 0 set: the client reads the
// ServerHello and, if bit 1 is set, answers with the proof the key really
// gives (so the success path and the session keys are reached too).
#include <thread>

#include "common/error.hpp"
#include "common/hmac.hpp"
#include "fuzz_input.hpp"
#include "wire/session.hpp"

using namespace memkv;
using namespace memkv::wire;

namespace {
const Key32 kClusterKey = {1, 2, 3, 4, 5, 6, 7, 8};
const Key32 kTenantKey = {9, 9, 9, 9};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const uint8_t mode = in.u8();
  auto hello_bytes = in.bytes(sizeof(ClientHello));
  auto rest = in.rest();
  auto [mine, theirs] = fuzz::socket_pair();

  std::thread client([&, theirs = theirs] {
    fuzz::write_all(theirs, hello_bytes.data(), hello_bytes.size());
    if ((mode & 1) && hello_bytes.size() == sizeof(ClientHello)) {
      ServerHello sh{};
      size_t got = 0;
      while (got < sizeof(sh)) {
        ssize_t r = ::recv(theirs, reinterpret_cast<uint8_t*>(&sh) + got, sizeof(sh) - got, 0);
        if (r <= 0) break;
        got += static_cast<size_t>(r);
      }
      if (got == sizeof(sh) && (mode & 2) && rest.size() >= sizeof(ClientAuth)) {
        ClientHello hello;
        std::memcpy(&hello, hello_bytes.data(), sizeof(hello));
        const bool tenant = hello.tenant_len != 0;
        Hmac master((tenant ? kTenantKey : kClusterKey).data());
        ClientAuth auth;
        std::memcpy(&auth, rest.data(), sizeof(auth));
        master.sign({Span("memkv/1 client"), Span(hello.nonce, kNonceLen), Span(sh.nonce, kNonceLen)}, auth.proof);
        std::memcpy(rest.data(), &auth, sizeof(auth));
      }
    }
    fuzz::write_all(theirs, rest.data(), rest.size());
    ::shutdown(theirs, SHUT_WR);
  });

  auto key_for = [](std::string_view tenant, Key32* key) {
    if (tenant.empty()) {
      *key = kClusterKey;
      return true;
    }
    if (tenant == "team-a") {
      *key = kTenantKey;
      return true;
    }
    return false;
  };
  std::string why;
  try {
    auto s = Session::server(Socket(mine), key_for, {}, 1 << 20, 1000, &why);
    if (s && s->peer().tenant != "" && s->peer().tenant != "team-a") std::abort();  // a tenant it never proved
  } catch (const Error&) {
    // A peer that breaks off mid-handshake: an error, as it should be.
  }
  client.join();
  ::close(theirs);
  return 0;
}
