// The body of an S3 upload as its client framed it: plain bytes, or
// aws-chunked (the AWS SDKs' default: unsigned chunks and a checksum
// trailer), inside a Content-Length or HTTP-chunked body. Whatever the
// client claimed about the bytes (x-amz-content-sha256, Content-MD5,
// x-amz-checksum-* headers or trailers) is checked as they arrive, so a
// value is stored only if it is exactly what was sent.
#pragma once
#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "http.hpp"

namespace memkv::s3 {

// An S3 error response: status, Code and Message.
struct S3Error : std::runtime_error {
  S3Error(int status, std::string code, const std::string& message)
      : std::runtime_error(message), status(status), code(std::move(code)) {}
  int status;
  std::string code;
};

class PayloadReader {
 public:
  // `payload_hash`: the request's (verified) x-amz-content-sha256.
  PayloadReader(HttpConn& http, const Request& r, const std::string& payload_hash);
  ~PayloadReader();
  uint64_t size() const { return size_; }
  // Reads exactly n payload bytes.
  void read(uint8_t* p, size_t n);
  // Reads the body from here on (sends 100 Continue if the client waits for it).
  void start(const Request& r) { http_.begin_body(r); }
  // After size() bytes: reads the rest of the framing and checks every claim.
  void finish();

  struct Check;

 private:
  size_t body_some(uint8_t* p, size_t n);  // decoded HTTP body bytes, through the line buffer
  size_t http_some(uint8_t* p, size_t n);  // straight from the HTTP body
  std::string body_line();
  void next_chunk();
  void update(const uint8_t* p, size_t n);

  HttpConn& http_;
  bool aws_chunked_ = false;
  uint64_t size_ = 0, read_ = 0;
  uint64_t chunk_left_ = 0;  // aws-chunked: bytes left in the current chunk
  bool last_chunk_ = false;
  std::string trailer_name_;  // x-amz-trailer, expected after the last chunk
  std::vector<std::unique_ptr<Check>> checks_;
  std::string line_buf_;
  size_t line_pos_ = 0;
};

std::string base64(const uint8_t* p, size_t n);

}  // namespace memkv::s3
