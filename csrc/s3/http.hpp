// HTTP/1.1 for the S3 door, on one blocking connection: requests with
// origin-form or absolute-form targets (the AWS CRT client sends the
// latter), bodies sized by Content-Length or sent chunked, `Expect:
// 100-continue`, keep-alive; responses with their bodies gathered straight
// from value memory. Every wait is bounded; sizes the peer declares are
// checked before anything is allocated for them.
#pragma once
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace memkv::s3 {

// A request the door cannot parse: answered with `status` and closed.
struct HttpError : std::runtime_error {
  HttpError(int status, const std::string& what) : std::runtime_error(what), status(status) {}
  int status;
};

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Request {
  std::string method;
  std::string path;   // as sent, still %-encoded (SigV4 signs it so)
  std::string query;  // after '?', as sent
  Headers headers;    // names lowercased, values trimmed
  bool keep_alive = true;
  // The value of a header ("" if absent); repeated headers are joined with ','.
  std::string header(std::string_view name) const;
  bool has(std::string_view name) const;
};

class HttpConn {
 public:
  HttpConn(int fd, int io_timeout_ms) : fd_(fd), timeout_ms_(io_timeout_ms) {}

  // Reads the next request's head. False if the peer closed, or stayed
  // silent idle_ms (-1: forever), before one began.
  bool read_request(Request* r, int idle_ms);
  // Starts the body of `r` (sends 100 Continue when asked). After this,
  // read_body returns body bytes until it returns 0.
  void begin_body(const Request& r);
  size_t read_body(uint8_t* p, size_t n);
  // Reads exactly n body bytes (an HttpError if the body ends first).
  void read_body_exact(uint8_t* p, size_t n);
  // Reads and drops the rest of the body, up to `limit` bytes; false if more remain.
  bool drain_body(uint64_t limit);
  bool body_done() const { return mode_ == Body::None; }
  // The request declared a body that begin_body has not started.
  bool body_unstarted() const { return declared_body_; }

  void send_head(int status, const Headers& headers, uint64_t content_length);
  void send(int status, const Headers& headers, std::string_view body);
  // The head, then `pieces` (value memory) as the body.
  void send_iov(int status, const Headers& headers, const std::vector<struct iovec>& pieces);

 private:
  enum class Body { None, Length, Chunked };
  bool fill(int wait_ms);  // more bytes into buf_; false on EOF
  int wait_budget(int wait_ms) const;  // wait_ms, cut to what is left of the head's deadline
  std::string read_line(size_t limit);
  void send_all(const struct iovec* iov, int n);

  int fd_;
  int timeout_ms_;
  std::vector<uint8_t> buf_ = std::vector<uint8_t>(64 * 1024);
  size_t pos_ = 0, end_ = 0;
  Body mode_ = Body::None;
  uint64_t left_ = 0;  // Length: body bytes left; Chunked: bytes left in this chunk
  bool declared_body_ = false;
  // A request head must arrive whole within one io timeout (no trickling).
  bool head_deadline_set_ = false;
  int64_t head_deadline_ms_ = 0;
};

const char* reason_phrase(int status);
std::string http_date(int64_t unix_s);

}  // namespace memkv::s3
