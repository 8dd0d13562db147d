#include "payload.hpp"

#include <openssl/evp.h>

#include <array>
#include <cstring>

#include "../common/crc32c.hpp"
#include "sigv4.hpp"

namespace memkv::s3 {
namespace {

constexpr size_t kMaxChunkLine = 4096;
constexpr uint64_t kMaxObject = 5ull << 40;  // S3's own limit for one object

// Reflected CRCs for the checksums S3 clients send (CRC-32 of zlib,
// CRC-64/NVME), slicing by 8 (eight table lookups per 8 bytes); CRC-32C
// comes from the node's own hardware-assisted one.
template <typename T, T Poly>
struct ReflectedCrc {
  T table[8][256]{};
  ReflectedCrc() {
    for (unsigned i = 0; i < 256; ++i) {
      T c = static_cast<T>(i);
      for (int k = 0; k < 8; ++k) c = (c & 1) ? static_cast<T>((c >> 1) ^ Poly) : static_cast<T>(c >> 1);
      table[0][i] = c;
    }
    for (unsigned i = 0; i < 256; ++i)
      for (int t = 1; t < 8; ++t) table[t][i] = static_cast<T>((table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff]);
  }
  T update(T crc, const uint8_t* p, size_t n) const {  // crc: the running value, not yet inverted
    while (n >= 8) {
      uint64_t w;
      std::memcpy(&w, p, 8);
      w ^= static_cast<uint64_t>(crc);
      crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
            table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
            table[1][(w >> 48) & 0xff] ^ table[0][(w >> 56) & 0xff];
      p += 8;
      n -= 8;
    }
    for (size_t i = 0; i < n; ++i) crc = table[0][(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return crc;
  }
};
const ReflectedCrc<uint32_t, 0xEDB88320u> kCrc32;
const ReflectedCrc<uint64_t, 0x9A6C9329AC4BC9B5ull> kCrc64Nvme;

std::vector<uint8_t> unbase64(const std::string& s) {
  std::vector<uint8_t> out(s.size() / 4 * 3 + 3);
  int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(s.data()), static_cast<int>(s.size()));
  if (n < 0) return {};
  size_t pad = s.size() >= 2 && s[s.size() - 1] == '=' ? (s[s.size() - 2] == '=' ? 2 : 1) : 0;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

bool parse_dec(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

}  // namespace

std::string base64(const uint8_t* p, size_t n) {
  std::string out(4 * ((n + 2) / 3) + 1, '\0');
  int k = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), p, static_cast<int>(n));
  out.resize(static_cast<size_t>(k));
  return out;
}

// One claim about the payload, checked over the bytes as they arrive.
struct PayloadReader::Check {
  enum Kind { Crc32, Crc32c, Crc64Nvme, Digest } kind;
  std::string name;      // the header (or trailer) that made the claim
  std::string expected;  // its value; filled from the trailer for trailing checksums
  bool hex = false;      // x-amz-content-sha256 is hex; the rest base64
  uint32_t c32 = 0xFFFFFFFFu, c32c = 0;
  uint64_t c64 = ~0ull;
  EVP_MD_CTX* md = nullptr;

  Check(Kind k, std::string n, const EVP_MD* digest = nullptr) : kind(k), name(std::move(n)) {
    if (digest) {
      md = EVP_MD_CTX_new();
      EVP_DigestInit_ex(md, digest, nullptr);
    }
  }
  ~Check() {
    if (md) EVP_MD_CTX_free(md);
  }
  void update(const uint8_t* p, size_t n) {
    switch (kind) {
      case Crc32: c32 = kCrc32.update(c32, p, n); break;
      case Crc32c: c32c = crc32c(c32c, p, n); break;
      case Crc64Nvme: c64 = kCrc64Nvme.update(c64, p, n); break;
      case Digest: EVP_DigestUpdate(md, p, n); break;
    }
  }
  std::vector<uint8_t> result() {
    std::vector<uint8_t> out;
    auto be = [&](uint64_t v, int bytes) {
      for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
    };
    switch (kind) {
      case Crc32: be(c32 ^ 0xFFFFFFFFu, 4); break;
      case Crc32c: be(c32c, 4); break;
      case Crc64Nvme: be(c64 ^ ~0ull, 8); break;
      case Digest: {
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        EVP_DigestFinal_ex(md, d, &n);
        out.assign(d, d + n);
        break;
      }
    }
    return out;
  }
};

namespace {
std::unique_ptr<PayloadReader::Check> make_check(const std::string& header);
}

PayloadReader::PayloadReader(HttpConn& http, const Request& r, const std::string& payload_hash) : http_(http) {
  aws_chunked_ = payload_hash.rfind("STREAMING-", 0) == 0;
  if (payload_hash == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" || payload_hash == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" ||
      payload_hash.find("ECDSA") != std::string::npos)
    throw S3Error(501, "NotImplemented", "signed aws-chunked payloads (" + payload_hash +
                                             ") are not supported yet: use UNSIGNED-PAYLOAD, a payload hash or "
                                             "STREAMING-UNSIGNED-PAYLOAD-TRAILER");
  if (aws_chunked_ && payload_hash != "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    throw S3Error(400, "InvalidArgument", "unknown x-amz-content-sha256 mode " + payload_hash);
  std::string declared = aws_chunked_ ? r.header("x-amz-decoded-content-length") : r.header("content-length");
  if (!r.has("content-length") && !r.has("transfer-encoding") && !aws_chunked_) declared = "0";
  if (declared.empty() || !parse_dec(declared, &size_))
    throw S3Error(411, "MissingContentLength", aws_chunked_ ? "aws-chunked uploads need x-amz-decoded-content-length"
                                                            : "You must provide the Content-Length HTTP header.");
  if (size_ > kMaxObject) throw S3Error(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size");
  if (!aws_chunked_ && payload_hash != "UNSIGNED-PAYLOAD") {
    if (payload_hash.size() != 64) throw S3Error(400, "InvalidArgument", "x-amz-content-sha256 must be 64 hex digits");
    auto c = std::make_unique<Check>(Check::Digest, "x-amz-content-sha256", EVP_sha256());
    c->expected = payload_hash;
    c->hex = true;
    checks_.push_back(std::move(c));
  }
  for (const auto& [name, value] : r.headers) {
    if (name == "content-md5" || (name.rfind("x-amz-checksum-", 0) == 0 && name != "x-amz-checksum-mode" &&
                                  name != "x-amz-checksum-algorithm" && name != "x-amz-checksum-type")) {
      auto c = make_check(name);
      if (!c) throw S3Error(400, "InvalidRequest", "unsupported checksum header " + name);
      c->expected = value;
      checks_.push_back(std::move(c));
    }
  }
  if (aws_chunked_) {
    trailer_name_ = r.header("x-amz-trailer");
    if (!trailer_name_.empty()) {
      auto c = make_check(trailer_name_);
      if (!c) throw S3Error(400, "InvalidRequest", "unsupported x-amz-trailer " + trailer_name_);
      checks_.push_back(std::move(c));
    }
  }
}

PayloadReader::~PayloadReader() = default;

namespace {
std::unique_ptr<PayloadReader::Check> make_check(const std::string& h) {
  using C = PayloadReader::Check;
  if (h == "x-amz-checksum-crc32") return std::make_unique<C>(C::Crc32, h);
  if (h == "x-amz-checksum-crc32c") return std::make_unique<C>(C::Crc32c, h);
  if (h == "x-amz-checksum-crc64nvme") return std::make_unique<C>(C::Crc64Nvme, h);
  if (h == "x-amz-checksum-sha256") return std::make_unique<C>(C::Digest, h, EVP_sha256());
  if (h == "x-amz-checksum-sha1") return std::make_unique<C>(C::Digest, h, EVP_sha1());
  if (h == "content-md5") return std::make_unique<C>(C::Digest, h, EVP_md5());
  return nullptr;
}
}  // namespace

size_t PayloadReader::body_some(uint8_t* p, size_t n) {
  if (line_pos_ < line_buf_.size()) {  // bytes read ahead while looking for a line end
    size_t k = std::min(n, line_buf_.size() - line_pos_);
    std::memcpy(p, line_buf_.data() + line_pos_, k);
    line_pos_ += k;
    return k;
  }
  return http_some(p, n);
}

size_t PayloadReader::http_some(uint8_t* p, size_t n) {
  size_t k = http_.read_body(p, n);
  if (k == 0) throw S3Error(400, "IncompleteBody", "You did not provide the number of bytes specified by the "
                                                   "Content-Length HTTP header");
  return k;
}

std::string PayloadReader::body_line() {
  std::string line;
  for (;;) {
    if (line_pos_ == line_buf_.size()) {
      line_buf_.resize(512);
      line_buf_.resize(http_some(reinterpret_cast<uint8_t*>(line_buf_.data()), line_buf_.size()));
      line_pos_ = 0;
    }
    size_t nl = line_buf_.find('\n', line_pos_);
    size_t end = nl == std::string::npos ? line_buf_.size() : nl + 1;
    line.append(line_buf_, line_pos_, end - line_pos_);
    line_pos_ = end;
    if (line.size() > kMaxChunkLine) throw S3Error(400, "InvalidChunkSizeError", "aws-chunked line too long");
    if (nl != std::string::npos) break;
  }
  line.pop_back();
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

void PayloadReader::next_chunk() {
  std::string head = body_line();
  std::string hex = head.substr(0, head.find(';'));
  uint64_t n = 0;
  if (hex.empty() || hex.size() > 15) throw S3Error(400, "InvalidChunkSizeError", "malformed aws-chunked size");
  for (char c : hex) {
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) throw S3Error(400, "InvalidChunkSizeError", "malformed aws-chunked size");
    n = n * 16 + static_cast<uint64_t>(d);
  }
  if (n > size_ - read_) throw S3Error(400, "IncompleteBody", "aws-chunked chunks exceed x-amz-decoded-content-length");
  chunk_left_ = n;
  if (n == 0) last_chunk_ = true;
}

void PayloadReader::update(const uint8_t* p, size_t n) {
  for (auto& c : checks_) c->update(p, n);
}

void PayloadReader::read(uint8_t* p, size_t n) {
  if (n > size_ - read_) throw S3Error(500, "InternalError", "payload read past its size");
  while (n) {
    size_t k;
    if (aws_chunked_) {
      if (chunk_left_ == 0) {
        next_chunk();
        if (last_chunk_) throw S3Error(400, "IncompleteBody", "aws-chunked body ended before its declared length");
      }
      k = body_some(p, static_cast<size_t>(std::min<uint64_t>(n, chunk_left_)));
      chunk_left_ -= k;
      if (chunk_left_ == 0 && !body_line().empty())
        throw S3Error(400, "InvalidChunkSizeError", "aws-chunked chunk not followed by CRLF");
    } else {
      k = body_some(p, n);
    }
    update(p, k);
    p += k;
    n -= k;
    read_ += k;
  }
}

void PayloadReader::finish() {
  if (aws_chunked_) {
    while (!last_chunk_) {
      next_chunk();
      if (!last_chunk_) throw S3Error(400, "IncompleteBody", "aws-chunked body longer than its declared length");
    }
    for (;;) {  // trailers, then an empty line
      std::string t = body_line();
      if (t.empty()) break;
      size_t colon = t.find(':');
      if (colon == std::string::npos) throw S3Error(400, "MalformedTrailerError", "malformed aws-chunked trailer");
      std::string name = t.substr(0, colon), value = t.substr(colon + 1);
      for (char& c : name) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
      while (!value.empty() && value.front() == ' ') value.erase(0, 1);
      for (auto& c : checks_)
        if (c->name == name && c->expected.empty()) c->expected = value;
    }
  }
  if (!http_.drain_body(64 * 1024)) throw S3Error(400, "IncompleteBody", "body longer than declared");
  for (auto& c : checks_) {
    std::vector<uint8_t> got = c->result();
    if (c->expected.empty())
      throw S3Error(400, "MalformedTrailerError", "the trailer " + c->name + " announced by x-amz-trailer is missing");
    bool same = c->hex ? to_hex(got.data(), got.size()) == c->expected : unbase64(c->expected) == got;
    if (!same) {
      if (c->hex) throw S3Error(400, "XAmzContentSHA256Mismatch",
                                "The provided 'x-amz-content-sha256' header does not match what was computed.");
      throw S3Error(400, "BadDigest", "The " + c->name + " you specified did not match the calculated checksum.");
    }
  }
}

}  // namespace memkv::s3
