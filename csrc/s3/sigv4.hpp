// AWS Signature Version 4 as S3 clients send it in the Authorization header
// (aws-sdk-cpp in NIXL's OBJ backend, the AWS CRT, boto3): the canonical
// request, the string to sign, the derived signing key, and the checks
// around them (credential scope, clock skew, signed headers).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "http.hpp"

namespace memkv::s3 {

struct AuthResult {
  bool ok = false;
  int status = 403;
  std::string code, message;  // the S3 error when !ok
  std::string access_key;
  std::string payload_hash;   // x-amz-content-sha256 as sent (a hex digest or a mode)
  std::string request_time;   // x-amz-date
};

// secret_for(access_key, &secret): false for an unknown access key.
using SecretLookup = std::function<bool(const std::string& access_key, std::string* secret)>;

constexpr int64_t kMaxSkewSeconds = 15 * 60;

AuthResult verify_sigv4(const Request& r, const SecretLookup& secret_for, int64_t now_unix_s);

// Helpers shared with the door.
std::string uri_decode(std::string_view s, bool plus_is_space = false);
std::string uri_encode(std::string_view s, bool keep_slash);
std::string sha256_hex(const void* p, size_t n);
std::string to_hex(const uint8_t* p, size_t n);

}  // namespace memkv::s3
