// HMAC-SHA256 (OpenSSL) for the handshake proofs and the per-frame MAC, plus
// the OS random source for nonces.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string_view>

typedef struct evp_mac_ctx_st EVP_MAC_CTX;

namespace memkv {

constexpr size_t kMacLen = 32;
constexpr size_t kKeyLen = 32;

struct Span {
  const void* p;
  size_t n;
  Span(const void* p_, size_t n_) : p(p_), n(n_) {}
  Span(std::string_view s) : p(s.data()), n(s.size()) {}
};

// A keyed MAC context. Not thread-safe: each connection direction owns one.
class Hmac {
 public:
  explicit Hmac(const uint8_t key[kKeyLen]);
  ~Hmac();
  Hmac(const Hmac&) = delete;
  Hmac& operator=(const Hmac&) = delete;

  void sign(std::initializer_list<Span> parts, uint8_t out[kMacLen]);
  // Constant-time comparison against `mac`.
  bool verify(std::initializer_list<Span> parts, const uint8_t mac[kMacLen]);

 private:
  EVP_MAC_CTX* ctx_;
};

void random_bytes(uint8_t* out, size_t n);
bool equal_const_time(const void* a, const void* b, size_t n);

}  // namespace memkv
