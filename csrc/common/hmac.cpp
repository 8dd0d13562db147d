#include "hmac.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "error.hpp"

namespace memkv {
namespace {

EVP_MAC* hmac_algorithm() {
  static EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (!mac) fail(ErrorKind::Internal, "OpenSSL has no HMAC implementation");
  return mac;
}

}  // namespace

Hmac::Hmac(const uint8_t key[kKeyLen]) : ctx_(EVP_MAC_CTX_new(hmac_algorithm())) {
  if (!ctx_) fail(ErrorKind::Internal, "EVP_MAC_CTX_new failed");
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  if (EVP_MAC_init(ctx_, key, kKeyLen, params) != 1) {
    EVP_MAC_CTX_free(ctx_);
    fail(ErrorKind::Internal, "EVP_MAC_init failed");
  }
}

Hmac::~Hmac() { EVP_MAC_CTX_free(ctx_); }

void Hmac::sign(std::initializer_list<Span> parts, uint8_t out[kMacLen]) {
  // Re-initialising with a null key keeps the key and resets the state, so a
  // frame costs no allocation.
  if (EVP_MAC_init(ctx_, nullptr, 0, nullptr) != 1) fail(ErrorKind::Internal, "EVP_MAC_init failed");
  for (const Span& s : parts)
    if (s.n && EVP_MAC_update(ctx_, static_cast<const unsigned char*>(s.p), s.n) != 1)
      fail(ErrorKind::Internal, "EVP_MAC_update failed");
  size_t len = 0;
  if (EVP_MAC_final(ctx_, out, &len, kMacLen) != 1 || len != kMacLen)
    fail(ErrorKind::Internal, "EVP_MAC_final failed");
}

bool Hmac::verify(std::initializer_list<Span> parts, const uint8_t mac[kMacLen]) {
  uint8_t want[kMacLen];
  sign(parts, want);
  return equal_const_time(want, mac, kMacLen);
}

void random_bytes(uint8_t* out, size_t n) {
  if (RAND_bytes(out, static_cast<int>(n)) != 1) fail(ErrorKind::Internal, "RAND_bytes failed");
}

bool equal_const_time(const void* a, const void* b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

}  // namespace memkv
