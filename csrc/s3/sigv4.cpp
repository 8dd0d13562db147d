#include "sigv4.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <ctime>
#include <vector>

#include "../common/hmac.hpp"

namespace memkv::s3 {
namespace {

std::string hmac(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), out, &n);
  return std::string(reinterpret_cast<char*>(out), n);
}

bool unreserved(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
         c == '.' || c == '~';
}

// "Credential=AK/20260101/us-east-1/s3/aws4_request, SignedHeaders=a;b, Signature=hex"
bool parse_authorization(const std::string& h, std::string* credential, std::string* signed_headers,
                         std::string* signature) {
  const std::string algo = "AWS4-HMAC-SHA256 ";
  if (h.rfind(algo, 0) != 0) return false;
  size_t i = algo.size();
  while (i < h.size()) {
    while (i < h.size() && (h[i] == ' ' || h[i] == ',')) ++i;
    size_t eq = h.find('=', i);
    if (eq == std::string::npos) return false;
    size_t end = h.find(',', eq);
    if (end == std::string::npos) end = h.size();
    std::string name = h.substr(i, eq - i), value = h.substr(eq + 1, end - eq - 1);
    while (!value.empty() && value.back() == ' ') value.pop_back();
    if (name == "Credential") *credential = value;
    else if (name == "SignedHeaders") *signed_headers = value;
    else if (name == "Signature") *signature = value;
    i = end;
  }
  return !credential->empty() && !signed_headers->empty() && !signature->empty();
}

std::string canonical_query(const std::string& q) {
  std::vector<std::pair<std::string, std::string>> pairs;
  size_t i = 0;
  while (i <= q.size() && !q.empty()) {
    size_t amp = q.find('&', i);
    if (amp == std::string::npos) amp = q.size();
    std::string part = q.substr(i, amp - i);
    if (!part.empty()) {
      size_t eq = part.find('=');
      std::string k = uri_decode(part.substr(0, eq)), v = eq == std::string::npos ? "" : uri_decode(part.substr(eq + 1));
      pairs.emplace_back(uri_encode(k, false), uri_encode(v, false));
    }
    i = amp + 1;
  }
  std::sort(pairs.begin(), pairs.end());
  std::string out;
  for (const auto& [k, v] : pairs) {
    if (!out.empty()) out += '&';
    out += k + "=" + v;
  }
  return out;
}

std::string collapse(const std::string& v) {
  std::string out;
  bool space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t') {
      space = true;
      continue;
    }
    if (space && !out.empty()) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

// 20260101T000000Z -> Unix seconds (-1 if malformed).
int64_t parse_amz_date(const std::string& d) {
  if (d.size() != 16 || d[8] != 'T' || d[15] != 'Z') return -1;
  struct tm tm {};
  auto num = [&](size_t at, size_t len) { return std::stoi(d.substr(at, len)); };
  try {
    tm.tm_year = num(0, 4) - 1900;
    tm.tm_mon = num(4, 2) - 1;
    tm.tm_mday = num(6, 2);
    tm.tm_hour = num(9, 2);
    tm.tm_min = num(11, 2);
    tm.tm_sec = num(13, 2);
  } catch (...) {
    return -1;
  }
  return static_cast<int64_t>(timegm(&tm));
}

AuthResult refuse(int status, std::string code, std::string message) {
  AuthResult r;
  r.status = status;
  r.code = std::move(code);
  r.message = std::move(message);
  return r;
}

}  // namespace

std::string to_hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = d[p[i] >> 4];
    s[2 * i + 1] = d[p[i] & 15];
  }
  return s;
}

std::string sha256_hex(const void* p, size_t n) {
  uint8_t out[SHA256_DIGEST_LENGTH];
  SHA256(static_cast<const unsigned char*>(p), n, out);
  return to_hex(out, sizeof(out));
}

std::string uri_decode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  auto hexval = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
  };
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += plus_is_space && s[i] == '+' ? ' ' : s[i];
  }
  return out;
}

std::string uri_encode(std::string_view s, bool keep_slash) {
  static const char* d = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    if (unreserved(c) || (keep_slash && c == '/')) {
      out += c;
    } else {
      auto u = static_cast<unsigned char>(c);
      out += '%';
      out += d[u >> 4];
      out += d[u & 15];
    }
  }
  return out;
}

AuthResult verify_sigv4(const Request& r, const SecretLookup& secret_for, int64_t now_unix_s) {
  std::string auth = r.header("authorization");
  if (auth.empty()) {
    if (r.query.find("X-Amz-Signature=") != std::string::npos)
      return refuse(403, "AccessDenied", "presigned URLs are not supported by this endpoint yet");
    return refuse(403, "AccessDenied", "Anonymous access is not allowed: sign requests with SigV4");
  }
  std::string credential, signed_headers, signature;
  if (!parse_authorization(auth, &credential, &signed_headers, &signature))
    return refuse(400, "AuthorizationHeaderMalformed", "expected AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, "
                                                       "Signature=…");
  // AK/DATE/REGION/SERVICE/aws4_request
  std::vector<std::string> scope;
  for (size_t i = 0, j; i <= credential.size(); i = j + 1) {
    j = credential.find('/', i);
    if (j == std::string::npos) j = credential.size();
    scope.push_back(credential.substr(i, j - i));
  }
  if (scope.size() != 5 || scope[3] != "s3" || scope[4] != "aws4_request")
    return refuse(400, "AuthorizationHeaderMalformed", "the credential must be AK/YYYYMMDD/region/s3/aws4_request");
  AuthResult out;
  out.access_key = scope[0];
  std::string secret;
  if (!secret_for(out.access_key, &secret))
    return refuse(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.");
  std::string amz_date = r.header("x-amz-date");
  int64_t t = parse_amz_date(amz_date);
  if (t < 0) return refuse(403, "AccessDenied", "missing or malformed x-amz-date (expected YYYYMMDDTHHMMSSZ)");
  if (amz_date.substr(0, 8) != scope[1])
    return refuse(400, "AuthorizationHeaderMalformed", "the credential's date is not the x-amz-date day");
  if (t > now_unix_s + kMaxSkewSeconds || t < now_unix_s - kMaxSkewSeconds)
    return refuse(403, "RequestTimeTooSkewed", "The difference between the request time and the current time is "
                                               "too large.");
  out.payload_hash = r.header("x-amz-content-sha256");
  if (out.payload_hash.empty())
    return refuse(400, "InvalidRequest", "missing x-amz-content-sha256 (S3 requires it with SigV4)");
  bool host_signed = false;
  std::string canonical_headers;
  for (size_t i = 0, j; i <= signed_headers.size(); i = j + 1) {
    j = signed_headers.find(';', i);
    if (j == std::string::npos) j = signed_headers.size();
    std::string name = signed_headers.substr(i, j - i);
    if (name == "host") host_signed = true;
    canonical_headers += name + ":" + collapse(r.header(name)) + "\n";
  }
  if (!host_signed) return refuse(403, "AccessDenied", "the Host header must be signed");
  // As S3 requires: every x-amz-* header sent is signed, so none can be added on the way.
  for (const auto& [name, value] : r.headers) {
    if (name.rfind("x-amz-", 0) != 0) continue;
    bool listed = false;
    for (size_t i = 0, j; i <= signed_headers.size() && !listed; i = j + 1) {
      j = signed_headers.find(';', i);
      if (j == std::string::npos) j = signed_headers.size();
      listed = signed_headers.compare(i, j - i, name) == 0;
    }
    if (!listed) return refuse(403, "AccessDenied", "the header " + name + " is not signed: sign every x-amz-* header");
  }
  std::string canonical_request = r.method + "\n" + r.path + "\n" + canonical_query(r.query) + "\n" +
                                  canonical_headers + "\n" + signed_headers + "\n" + out.payload_hash;
  std::string scope_str = scope[1] + "/" + scope[2] + "/s3/aws4_request";
  std::string to_sign = "AWS4-HMAC-SHA256\n" + amz_date + "\n" + scope_str + "\n" +
                        sha256_hex(canonical_request.data(), canonical_request.size());
  std::string key = hmac(hmac(hmac(hmac("AWS4" + secret, scope[1]), scope[2]), "s3"), "aws4_request");
  std::string mac = hmac(key, to_sign);
  std::string expected = to_hex(reinterpret_cast<const uint8_t*>(mac.data()), mac.size());
  if (signature.size() != expected.size() || !equal_const_time(signature.data(), expected.data(), expected.size()))
    return refuse(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
                                                "you provided. Check your key and signing method.");
  out.ok = true;
  out.status = 200;
  out.request_time = amz_date;
  return out;
}

}  // namespace memkv::s3
