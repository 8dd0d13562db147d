#include "http.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

namespace memkv::s3 {
namespace {

constexpr size_t kMaxLine = 16 * 1024;     // request line or one header
constexpr size_t kMaxHeaders = 200;
constexpr size_t kMaxHeadBytes = 64 * 1024;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
  return s;
}

int64_t mono_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && (s[a] == ' ' || s[a] == '\t')) ++a;
  while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) --b;
  return std::string(s.substr(a, b - a));
}

bool parse_u64(std::string_view s, int base, uint64_t* out) {
  if (s.empty() || s.size() > 20) return false;
  uint64_t v = 0;
  for (char c : s) {
    int d = c >= '0' && c <= '9' ? c - '0' : base == 16 && c >= 'a' && c <= 'f' ? c - 'a' + 10
          : base == 16 && c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0 || d >= base) return false;
    if (v > (UINT64_MAX - static_cast<uint64_t>(d)) / static_cast<uint64_t>(base)) return false;
    v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
  }
  *out = v;
  return true;
}

}  // namespace

std::string Request::header(std::string_view name) const {
  std::string out;
  bool first = true;
  for (const auto& [k, v] : headers) {
    if (k != name) continue;
    if (!first) out += ',';
    out += v;
    first = false;
  }
  return out;
}

bool Request::has(std::string_view name) const {
  return std::any_of(headers.begin(), headers.end(), [&](const auto& h) { return h.first == name; });
}

int HttpConn::wait_budget(int wait_ms) const {
  if (!head_deadline_set_) return wait_ms;
  int64_t left = std::max<int64_t>(0, head_deadline_ms_ - mono_ms());
  return wait_ms < 0 ? static_cast<int>(left) : static_cast<int>(std::min<int64_t>(wait_ms, left));
}

bool HttpConn::fill(int wait_ms) {
  wait_ms = wait_budget(wait_ms);
  if (pos_ == end_) pos_ = end_ = 0;
  if (end_ == buf_.size()) {  // compact what is unread to the front
    std::memmove(buf_.data(), buf_.data() + pos_, end_ - pos_);
    end_ -= pos_;
    pos_ = 0;
    if (end_ == buf_.size()) throw HttpError(431, "request head too large");
  }
  struct pollfd p {fd_, POLLIN, 0};
  for (;;) {
    int r = ::poll(&p, 1, wait_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) throw HttpError(408, "the client stopped sending");
    break;
  }
  for (;;) {
    ssize_t n = ::recv(fd_, buf_.data() + end_, buf_.size() - end_, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw HttpError(400, std::string("receive failed: ") + std::strerror(errno));
    if (n == 0) return false;
    end_ += static_cast<size_t>(n);
    return true;
  }
}

std::string HttpConn::read_line(size_t limit) {
  std::string line;
  for (;;) {
    const uint8_t* s = buf_.data() + pos_;
    const uint8_t* nl = static_cast<const uint8_t*>(std::memchr(s, '\n', end_ - pos_));
    size_t take = nl ? static_cast<size_t>(nl - s) + 1 : end_ - pos_;
    line.append(reinterpret_cast<const char*>(s), take);
    pos_ += take;
    if (line.size() > limit) throw HttpError(431, "header line too long");
    if (nl) break;
    if (!fill(timeout_ms_)) throw HttpError(400, "connection closed mid-request");
  }
  line.pop_back();
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

bool HttpConn::read_request(Request* r, int idle_ms) {
  *r = Request{};
  if (mode_ != Body::None) throw HttpError(500, "previous body not consumed");
  if (pos_ == end_ && !fill(idle_ms < 0 ? -1 : idle_ms)) return false;
  head_deadline_set_ = true;
  head_deadline_ms_ = mono_ms() + timeout_ms_;
  struct Clear {
    bool& flag;
    ~Clear() { flag = false; }
  } clear{head_deadline_set_};
  std::string line = read_line(kMaxLine);
  while (line.empty()) line = read_line(kMaxLine);  // stray CRLF between requests (RFC 9112 §2.2)
  size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
  // A method is at least one character: " /x HTTP/1.1" is no request (RFC 9112 §3).
  if (sp1 == std::string::npos || sp1 == 0 || sp2 == sp1)
    throw HttpError(400, "malformed request line (expected METHOD /path HTTP/1.1)");
  r->method = line.substr(0, sp1);
  std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string version = line.substr(sp2 + 1);
  if (version != "HTTP/1.1" && version != "HTTP/1.0") throw HttpError(505, "HTTP/1.x only");
  r->keep_alive = version == "HTTP/1.1";
  // Absolute form (AWS CRT): keep only the path and query; SigV4 signs those.
  if (target.rfind("http://", 0) == 0 || target.rfind("https://", 0) == 0) {
    size_t slash = target.find('/', target.find("//") + 2);
    target = slash == std::string::npos ? "/" : target.substr(slash);
  }
  if (target.empty() || target[0] != '/') throw HttpError(400, "request target must be a path");
  size_t q = target.find('?');
  r->path = target.substr(0, q);
  r->query = q == std::string::npos ? "" : target.substr(q + 1);
  size_t head_bytes = line.size();
  for (;;) {
    std::string h = read_line(kMaxLine);
    if (h.empty()) break;
    head_bytes += h.size();
    if (r->headers.size() >= kMaxHeaders || head_bytes > kMaxHeadBytes) throw HttpError(431, "too many headers");
    size_t colon = h.find(':');
    if (colon == std::string::npos || colon == 0) throw HttpError(400, "malformed header line");
    r->headers.emplace_back(lower(h.substr(0, colon)), trim(std::string_view(h).substr(colon + 1)));
  }
  std::string cl = r->header("content-length");
  declared_body_ = r->has("transfer-encoding") || (!cl.empty() && cl != "0");
  std::string conn = lower(r->header("connection"));
  if (conn == "close") r->keep_alive = false;
  if (conn == "keep-alive") r->keep_alive = true;
  return true;
}

void HttpConn::begin_body(const Request& r) {
  declared_body_ = false;
  std::string te = lower(r.header("transfer-encoding"));
  std::string cl = r.header("content-length");
  if (!te.empty()) {
    if (te != "chunked") throw HttpError(501, "Transfer-Encoding other than chunked");
    mode_ = Body::Chunked;
    left_ = 0;
  } else if (!cl.empty()) {
    uint64_t n = 0;
    if (!parse_u64(cl, 10, &n)) throw HttpError(400, "malformed Content-Length");
    mode_ = n ? Body::Length : Body::None;
    left_ = n;
  } else {
    mode_ = Body::None;
  }
  if (mode_ != Body::None && lower(r.header("expect")) == "100-continue") {
    static const char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct iovec iov {const_cast<char*>(kContinue), sizeof(kContinue) - 1};
    send_all(&iov, 1);
  }
}

size_t HttpConn::read_body(uint8_t* p, size_t n) {
  if (mode_ == Body::Chunked && left_ == 0) {
    std::string size_line = read_line(kMaxLine);
    std::string hex = size_line.substr(0, size_line.find(';'));
    uint64_t size = 0;
    if (!parse_u64(trim(hex), 16, &size)) throw HttpError(400, "malformed chunk size");
    if (size == 0) {
      size_t trailer_bytes = 0;
      for (std::string t = read_line(kMaxLine); !t.empty(); t = read_line(kMaxLine)) {  // HTTP trailers: ignored
        trailer_bytes += t.size();
        if (trailer_bytes > kMaxHeadBytes) throw HttpError(431, "HTTP trailers too large");
      }
      mode_ = Body::None;
      return 0;
    }
    left_ = size;
  }
  if (mode_ == Body::None) return 0;
  size_t want = static_cast<size_t>(std::min<uint64_t>(n, left_));
  size_t got = 0;
  if (pos_ < end_) {  // buffered bytes first
    got = std::min(want, end_ - pos_);
    std::memcpy(p, buf_.data() + pos_, got);
    pos_ += got;
  } else {
    // Large reads go straight into the destination.
    struct pollfd pf {fd_, POLLIN, 0};
    int r;
    do r = ::poll(&pf, 1, timeout_ms_);
    while (r < 0 && errno == EINTR);
    if (r == 0) throw HttpError(408, "the client stopped sending the body");
    ssize_t k;
    do k = ::recv(fd_, p, want, 0);
    while (k < 0 && errno == EINTR);
    if (k <= 0) throw HttpError(400, "connection closed mid-body");
    got = static_cast<size_t>(k);
  }
  left_ -= got;
  if (left_ == 0) {
    if (mode_ == Body::Length) {
      mode_ = Body::None;
    } else if (!read_line(2).empty()) {
      throw HttpError(400, "chunk not followed by CRLF");
    }
  }
  return got;
}

void HttpConn::read_body_exact(uint8_t* p, size_t n) {
  while (n) {
    size_t k = read_body(p, n);
    if (k == 0) throw HttpError(400, "body shorter than declared");
    p += k;
    n -= k;
  }
}

bool HttpConn::drain_body(uint64_t limit) {
  uint8_t scratch[16 * 1024];
  uint64_t seen = 0;
  while (!body_done()) {
    if (seen > limit) return false;
    seen += read_body(scratch, sizeof(scratch));
  }
  return true;
}

void HttpConn::send_all(const struct iovec* iov_in, int n) {
  std::vector<struct iovec> iov(iov_in, iov_in + n);
  size_t i = 0;
  while (i < iov.size()) {
    struct msghdr m {};
    m.msg_iov = iov.data() + i;
    m.msg_iovlen = std::min<size_t>(iov.size() - i, 1024);
    ssize_t k = ::sendmsg(fd_, &m, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      struct pollfd pf {fd_, POLLOUT, 0};
      if (::poll(&pf, 1, timeout_ms_) == 0) throw HttpError(408, "the client stopped reading");
      continue;
    }
    if (k < 0) throw HttpError(400, std::string("send failed: ") + std::strerror(errno));
    size_t left = static_cast<size_t>(k);
    while (i < iov.size() && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (i < iov.size()) {
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + left;
      iov[i].iov_len -= left;
    }
  }
}

void HttpConn::send_head(int status, const Headers& headers, uint64_t content_length) {
  std::string head = "HTTP/1.1 " + std::to_string(status) + " " + reason_phrase(status) + "\r\n";
  for (const auto& [k, v] : headers) head += k + ": " + v + "\r\n";
  head += "Content-Length: " + std::to_string(content_length) + "\r\n\r\n";
  struct iovec iov {head.data(), head.size()};
  send_all(&iov, 1);
}

void HttpConn::send(int status, const Headers& headers, std::string_view body) {
  std::string head = "HTTP/1.1 " + std::to_string(status) + " " + reason_phrase(status) + "\r\n";
  for (const auto& [k, v] : headers) head += k + ": " + v + "\r\n";
  head += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  struct iovec iov[2] = {{head.data(), head.size()}, {const_cast<char*>(body.data()), body.size()}};
  send_all(iov, body.empty() ? 1 : 2);
}

void HttpConn::send_iov(int status, const Headers& headers, const std::vector<struct iovec>& pieces) {
  uint64_t n = 0;
  for (const auto& p : pieces) n += p.iov_len;
  std::string head = "HTTP/1.1 " + std::to_string(status) + " " + reason_phrase(status) + "\r\n";
  for (const auto& [k, v] : headers) head += k + ": " + v + "\r\n";
  head += "Content-Length: " + std::to_string(n) + "\r\n\r\n";
  std::vector<struct iovec> iov;
  iov.reserve(pieces.size() + 1);
  iov.push_back({head.data(), head.size()});
  for (const auto& p : pieces)
    if (p.iov_len) iov.push_back(p);
  send_all(iov.data(), static_cast<int>(iov.size()));
}

const char* reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Payload Too Large";
    case 416: return "Range Not Satisfiable";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

std::string http_date(int64_t unix_s) {
  time_t t = static_cast<time_t>(unix_s);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char out[64];
  strftime(out, sizeof(out), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return out;
}

}  // namespace memkv::s3
