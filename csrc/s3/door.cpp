#include "door.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "../common/crc32c.hpp"
#include "../common/error.hpp"
#include "../common/log.hpp"
#include "../common/socket.hpp"
#include "../wire/protocol.hpp"
#include "payload.hpp"
#include "sigv4.hpp"

namespace memkv::s3 {
namespace {

constexpr size_t kMaxListKeys = 1000;
constexpr size_t kPiece = 1 << 20;  // body bytes read (and checksummed) at a time

int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string xml_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string iso8601(uint64_t ns) {
  time_t t = static_cast<time_t>(ns / 1000000000ull);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char out[40];
  std::snprintf(out, sizeof(out), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>((ns / 1000000ull) % 1000));
  return out;
}

// Stable for one stored value: its CRC-32C and size (S3 ETags need not be MD5s).
std::string etag_of(uint32_t crc, uint64_t size) {
  char out[48];
  std::snprintf(out, sizeof(out), "\"%08x%llx\"", crc, static_cast<unsigned long long>(size));
  return out;
}

bool etag_matches(const std::string& header, const std::string& etag) {
  if (header == "*") return true;
  std::stringstream ss(header);
  std::string one;
  while (std::getline(ss, one, ',')) {
    while (!one.empty() && one.front() == ' ') one.erase(0, 1);
    while (!one.empty() && one.back() == ' ') one.pop_back();
    if (one.rfind("W/", 0) == 0) one = one.substr(2);
    if (one == etag || "\"" + one + "\"" == etag) return true;
  }
  return false;
}

bool bucket_name_ok(const std::string& b) {
  if (b.size() < 3 || b.size() > 63) return false;
  for (char c : b)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-')) return false;
  return b.front() != '.' && b.front() != '-' && b.back() != '.' && b.back() != '-';
}

std::string query_param(const std::string& query, const std::string& name, bool* present = nullptr) {
  size_t i = 0;
  while (i <= query.size() && !query.empty()) {
    size_t amp = query.find('&', i);
    if (amp == std::string::npos) amp = query.size();
    std::string part = query.substr(i, amp - i);
    size_t eq = part.find('=');
    if (uri_decode(part.substr(0, eq)) == name) {
      if (present) *present = true;
      // Decoded as SigV4 canonicalises it ('+' is a plus), so what is signed is what is used.
      return eq == std::string::npos ? "" : uri_decode(part.substr(eq + 1));
    }
    i = amp + 1;
  }
  if (present) *present = false;
  return "";
}

bool has_param(const std::string& query, const std::string& name) {
  bool present = false;
  query_param(query, name, &present);
  return present;
}

// "bytes=a-b", "bytes=a-", "bytes=-n". False: unsatisfiable or malformed.
bool parse_range(const std::string& h, uint64_t size, uint64_t* start, uint64_t* len) {
  if (h.rfind("bytes=", 0) != 0 || h.find(',') != std::string::npos) return false;
  std::string spec = h.substr(6);
  size_t dash = spec.find('-');
  if (dash == std::string::npos) return false;
  std::string a = spec.substr(0, dash), b = spec.substr(dash + 1);
  auto num = [](const std::string& s, uint64_t* v) {
    if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string::npos) return false;
    *v = std::stoull(s);
    return true;
  };
  uint64_t x = 0, y = 0;
  if (a.empty()) {  // the last y bytes
    if (!num(b, &y) || y == 0 || size == 0) return false;
    *start = y >= size ? 0 : size - y;
    *len = size - *start;
    return true;
  }
  if (!num(a, &x) || x >= size) return false;
  if (b.empty()) {
    y = size - 1;
  } else if (!num(b, &y) || y < x) {
    return false;
  }
  *start = x;
  *len = std::min(y, size - 1) - x + 1;
  return true;
}

}  // namespace

// One response: status, headers, and either an XML/text body or value memory.
struct Door::Reply {
  int status = 200;
  Headers headers;
  std::string body;
  ValuePtr value;  // keeps the bytes alive while they are sent
  std::vector<struct iovec> pieces;
  uint64_t head_length = 0;  // HEAD: the Content-Length to announce
  bool close = false;

  void error(int st, const std::string& code, const std::string& message, const std::string& resource = "") {
    status = st;
    headers = {{"Content-Type", "application/xml"}};
    body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>" + code + "</Code><Message>" +
           xml_escape(message) + "</Message>" + (resource.empty() ? "" : "<Resource>" + xml_escape(resource) + "</Resource>") +
           "</Error>";
    value.reset();
    pieces.clear();
  }
  void xml(std::string doc) {
    headers.emplace_back("Content-Type", "application/xml");
    body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + std::move(doc);
  }
};

Door::Door(DoorOptions opts, Store& store, TenantTable& tenants)
    : opts_(std::move(opts)), store_(store), tenants_(tenants) {}

Door::~Door() { stop(); }

void Door::start() {
  load_buckets();
  listen_fd_ = listen_tcp(opts_.host, opts_.port, 1024, &bound_port_);
  started_ = true;
  acceptor_ = std::thread([this] { accept_loop(); });
}

void Door::stop() {
  if (!started_ || stopping_.exchange(true)) return;
  ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  ::close(listen_fd_);  // here, not in the acceptor: see Node::stop
  listen_fd_ = -1;
  std::list<std::shared_ptr<Conn>> conns;
  {
    std::lock_guard<std::mutex> lk(conns_mu_);
    conns.swap(conns_);
  }
  for (auto& c : conns) {
    int fd = c->fd.load();
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  }
  for (auto& c : conns)
    if (c->thread.joinable()) c->thread.join();
}

DoorStats Door::stats() const {
  return DoorStats{requests_.load(), errors_.load(), bytes_in_.load(), bytes_out_.load(), connections_.load()};
}

void Door::accept_loop() {
  for (;;) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (stopping_) {
      if (fd >= 0) ::close(fd);
      break;
    }
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EBADF || errno == EINVAL) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    // A client that stops reading a response must not hold its thread (and
    // the value it pins) for ever: sends give up after the io timeout.
    struct timeval tv {opts_.io_timeout_ms / 1000, (opts_.io_timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::lock_guard<std::mutex> lk(conns_mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
      if ((*it)->done) {
        (*it)->thread.join();
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
    if (static_cast<int>(conns_.size()) >= opts_.max_connections) {
      ::close(fd);
      continue;
    }
    auto conn = std::make_shared<Conn>();
    conn->fd = fd;
    try {
      conn->thread = std::thread([this, conn, fd] { serve(conn, fd); });
    } catch (const std::system_error&) {
      ::close(fd);
      continue;
    }
    conns_.push_back(std::move(conn));
  }
}

void Door::serve(std::shared_ptr<Conn> conn, int fd) {
  ++connections_;
  HttpConn http(fd, opts_.io_timeout_ms);
  try {
    Request r;
    // Idle keep-alive connections are closed after the io timeout (clients reconnect).
    while (!stopping_ && http.read_request(&r, opts_.io_timeout_ms)) {
      if (!handle(http, r)) break;
    }
  } catch (const HttpError& e) {
    if (e.status != 408 && !stopping_) {
      try {
        http.send(e.status, {{"Connection", "close"}}, "");
      } catch (...) {
      }
      log(LogLevel::Debug, std::string("S3 door: dropped a connection: ") + e.what());
    }
  } catch (const std::exception& e) {
    log(LogLevel::Warning, std::string("S3 door: connection failed: ") + e.what());
  }
  conn->fd = -1;
  ::close(fd);
  conn->done = true;
}

bool Door::handle(HttpConn& http, Request& r) {
  ++requests_;
  Reply out;
  char rid[24];
  std::snprintf(rid, sizeof(rid), "%016llx", static_cast<unsigned long long>(++request_ids_));
  std::shared_ptr<Tenant> tenant;
  AuthResult auth = verify_sigv4(r,
                                 [&](const std::string& ak, std::string* secret) {
                                   tenant = tenants_.find_by_access_key(ak);
                                   if (tenant) *secret = tenant->s3_secret_key;
                                   return tenant != nullptr;
                                 },
                                 now_s());
  try {
    if (!auth.ok) throw S3Error(auth.status, auth.code, auth.message);
    // "/", "/bucket", "/bucket/", "/bucket/key..."
    std::string path = r.path;
    size_t slash = path.find('/', 1);
    std::string bucket = uri_decode(path.substr(1, slash == std::string::npos ? std::string::npos : slash - 1));
    std::string key = slash == std::string::npos ? "" : uri_decode(path.substr(slash + 1));
    if (bucket.empty()) {
      if (r.method != "GET") throw S3Error(405, "MethodNotAllowed", "only GET (ListBuckets) is served at /");
      std::string xml = "<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>" +
                        xml_escape(tenant->name) + "</ID><DisplayName>" + xml_escape(tenant->name) +
                        "</DisplayName></Owner><Buckets>";
      std::lock_guard<std::mutex> lk(buckets_mu_);
      for (const auto& [b, owner] : buckets_)
        if (owner == tenant->name)
          xml += "<Bucket><Name>" + xml_escape(b) + "</Name><CreationDate>" + iso8601(0) + "</CreationDate></Bucket>";
      out.xml(xml + "</Buckets></ListAllMyBucketsResult>");
    } else if (key.empty()) {
      bucket_op(http, r, *tenant, bucket, out);
    } else {
      std::string owner = owner_of(bucket);
      if (owner.empty()) throw S3Error(404, "NoSuchBucket", "The specified bucket does not exist");
      if (owner != tenant->name) throw S3Error(403, "AccessDenied", "Access Denied");
      object_op(http, r, *tenant, bucket, key, out);
    }
  } catch (const S3Error& e) {
    out.error(e.status, e.code, e.what(), r.path);
  }
  if (out.status >= 400) {
    ++errors_;
    log(LogLevel::Debug, "S3 door: " + r.method + " " + r.path + " -> " + std::to_string(out.status) + " " + out.body);
  }
  // A body left unread would be parsed as the next request. One never
  // started is not invited (no 100 Continue) after a refusal: close instead.
  if (http.body_unstarted()) {
    if (out.status >= 400) {
      out.close = true;
    } else {
      http.begin_body(r);
    }
  }
  if (!out.close && !http.body_done() && !http.drain_body(1 << 20)) out.close = true;
  out.headers.emplace_back("x-amz-request-id", rid);
  out.headers.emplace_back("Date", http_date(now_s()));
  out.headers.emplace_back("Server", "MemKV");
  if (out.close || !r.keep_alive) out.headers.emplace_back("Connection", "close");
  if (r.method == "HEAD") {
    http.send_head(out.status, out.headers, out.status < 300 ? out.head_length : 0);
  } else if (out.value) {
    http.send_iov(out.status, out.headers, out.pieces);
    for (const auto& p : out.pieces) bytes_out_ += p.iov_len;
  } else {
    http.send(out.status, out.headers, out.body);
  }
  return !out.close && r.keep_alive;
}

void Door::bucket_op(HttpConn& http, Request& r, const Tenant& t, const std::string& bucket, Reply& out) {
  std::string owner = owner_of(bucket);
  if (r.method == "PUT") {
    if (!bucket_name_ok(bucket))
      throw S3Error(400, "InvalidBucketName", "bucket names are 3-63 characters of a-z 0-9 . - (no leading or "
                                              "trailing . or -)");
    std::lock_guard<std::mutex> lk(buckets_mu_);
    auto [it, added] = buckets_.try_emplace(bucket, t.name);
    if (it->second != t.name) throw S3Error(409, "BucketAlreadyExists", "The requested bucket name is not available.");
    if (added) save_buckets_locked();
    out.headers.emplace_back("Location", "/" + bucket);
    return;
  }
  if (owner.empty()) throw S3Error(404, "NoSuchBucket", "The specified bucket does not exist");
  if (owner != t.name) throw S3Error(403, "AccessDenied", "Access Denied");
  if (r.method == "HEAD") return;
  if (r.method == "GET") {
    if (query_param(r.query, "list-type") == "2") return list_objects(r, t, bucket, out);
    if (has_param(r.query, "location")) {
      out.xml("<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"></LocationConstraint>");
      return;
    }
    throw S3Error(501, "NotImplemented", "this endpoint lists objects with ListObjectsV2 (list-type=2) only");
  }
  if (r.method == "DELETE") {
    bool more = false;
    if (!store_.list(t.prefix + bucket + "/", "", 1, &more).empty())
      throw S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty");
    std::lock_guard<std::mutex> lk(buckets_mu_);
    auto it = buckets_.find(bucket);
    if (it != buckets_.end() && it->second == t.name) {  // not re-created by another tenant meanwhile
      buckets_.erase(it);
      save_buckets_locked();
    }
    out.status = 204;
    return;
  }
  throw S3Error(501, "NotImplemented", r.method + " on a bucket is not served (multi-object delete and bucket "
                                                  "settings are not supported)");
}

void Door::list_objects(const Request& r, const Tenant& t, const std::string& bucket, Reply& out) {
  const std::string base = t.prefix + bucket + "/";
  std::string prefix = query_param(r.query, "prefix"), delimiter = query_param(r.query, "delimiter");
  std::string token = query_param(r.query, "continuation-token"), start_after = query_param(r.query, "start-after");
  bool url = query_param(r.query, "encoding-type") == "url";
  size_t max_keys = kMaxListKeys;
  std::string mk = query_param(r.query, "max-keys");
  if (!mk.empty()) {
    if (mk.size() > 9 || mk.find_first_not_of("0123456789") != std::string::npos)
      throw S3Error(400, "InvalidArgument", "max-keys must be a non-negative integer");
    max_keys = std::min<size_t>(std::stoul(mk), kMaxListKeys);
  }
  std::string after = token.empty() ? start_after : uri_decode(token);
  // With a delimiter, keys that roll up into one common prefix count once,
  // so the page is filled from an unbounded scan.
  bool more = false;
  auto found = store_.list(base + prefix, after.empty() ? "" : base + after,
                           delimiter.empty() ? max_keys : SIZE_MAX, &more);
  auto enc = [&](const std::string& s) { return xml_escape(url ? uri_encode(s, true) : s); };
  std::string contents, common, last;
  size_t count = 0;
  std::string last_prefix;
  bool truncated = more;
  for (size_t i = 0; i < found.size(); ++i) {
    std::string key = found[i].key.substr(base.size());
    if (!delimiter.empty()) {
      size_t d = key.find(delimiter, prefix.size());
      if (d != std::string::npos) {
        std::string cp = key.substr(0, d + delimiter.size());
        if (cp == last_prefix) continue;
        if (count == max_keys) {
          truncated = true;
          break;
        }
        last_prefix = cp;
        common += "<CommonPrefixes><Prefix>" + enc(cp) + "</Prefix></CommonPrefixes>";
        ++count;
        // Continue after every key under this prefix.
        last = cp + std::string(1, '\xff');
        continue;
      }
    }
    if (count == max_keys) {
      truncated = true;
      break;
    }
    contents += "<Contents><Key>" + enc(key) + "</Key><LastModified>" + iso8601(found[i].written_ns) +
                "</LastModified><ETag>" + xml_escape(etag_of(found[i].crc, found[i].size)) + "</ETag><Size>" +
                std::to_string(found[i].size) + "</Size><StorageClass>STANDARD</StorageClass></Contents>";
    ++count;
    last = key;
  }
  std::string xml = "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>" + xml_escape(bucket) +
                    "</Name><Prefix>" + enc(prefix) + "</Prefix>";
  if (!delimiter.empty()) xml += "<Delimiter>" + enc(delimiter) + "</Delimiter>";
  if (url) xml += "<EncodingType>url</EncodingType>";
  xml += "<MaxKeys>" + std::to_string(max_keys) + "</MaxKeys><KeyCount>" + std::to_string(count) +
         "</KeyCount><IsTruncated>" + (truncated ? "true" : "false") + "</IsTruncated>";
  if (!token.empty()) xml += "<ContinuationToken>" + xml_escape(token) + "</ContinuationToken>";
  if (!start_after.empty()) xml += "<StartAfter>" + enc(start_after) + "</StartAfter>";
  if (truncated) xml += "<NextContinuationToken>" + xml_escape(uri_encode(last, false)) + "</NextContinuationToken>";
  out.xml(xml + contents + common + "</ListBucketResult>");
}

void Door::object_op(HttpConn& http, Request& r, const Tenant& t, const std::string& bucket, const std::string& key,
                     Reply& out) {
  const std::string native = bucket + "/" + key;  // what the MEMKV plugin and the client name
  if (native.size() > wire::kMaxKeyLen)
    throw S3Error(400, "KeyTooLongError", "bucket/key is " + std::to_string(native.size()) +
                                              " bytes: MemKV keys are at most 512 bytes");
  const std::string stored = t.prefix + native;
  if (has_param(r.query, "uploads") || has_param(r.query, "uploadId") || has_param(r.query, "partNumber"))
    throw S3Error(501, "NotImplemented", "multipart uploads are not supported yet: send one PutObject (NIXL OBJ: "
                                         "leave crtMinLimit unset; boto3: put_object, or upload_file with a "
                                         "multipart_threshold above the object size)");
  if (r.method == "PUT") {
    if (r.has("x-amz-copy-source")) throw S3Error(501, "NotImplemented", "CopyObject is not supported");
    PayloadReader body(http, r, r.header("x-amz-content-sha256"));
    uint64_t size = body.size();
    Reservation res;
    switch (store_.reserve(size, stored, &res)) {
      case PutResult::Ok: break;
      case PutResult::TooLarge: throw S3Error(400, "EntityTooLarge", "the object is larger than this node accepts");
      case PutResult::OverQuota:
        throw S3Error(400, "EntityTooLarge", "the object is larger than tenant " + t.name + "'s DRAM or disk quota");
      case PutResult::NoSpace: throw S3Error(503, "SlowDown", "the node is out of DRAM for now; retry");
      default: throw S3Error(503, "ServiceUnavailable", "the node is shutting down");
    }
    body.start(r);
    ValuePtr v = store_.make_value(size);
    uint32_t crc = 0;
    for (uint64_t off = 0; off < size;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(kPiece, size - off));
      body.read(v->data + off, n);
      crc = crc32c(crc, v->data + off, n);
      off += n;
    }
    body.finish();
    bytes_in_ += size;
    PutResult pr = store_.commit(stored, std::move(v), crc, std::move(res));
    if (pr != PutResult::Ok) throw S3Error(500, "InternalError", "the node could not store the object");
    out.headers.emplace_back("ETag", etag_of(crc, size));
    return;
  }
  if (r.method == "DELETE") {
    store_.remove(stored);
    out.status = 204;
    return;
  }
  if (r.method != "GET" && r.method != "HEAD")
    throw S3Error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.");
  ObjectInfo info;
  uint32_t crc = 0;
  ValuePtr v;
  bool found;
  if (r.method == "GET") {
    v = store_.get(stored, &crc);  // pinned: a later overwrite cannot change the bytes being sent
    found = v && store_.info(stored, &info);
  } else {
    found = store_.info(stored, &info);
    crc = info.crc;
  }
  if (!found) throw S3Error(404, "NoSuchKey", "The specified key does not exist.");
  const uint64_t size = v ? v->size : info.size;
  const std::string etag = etag_of(crc, size);
  out.headers = {{"ETag", etag}, {"Last-Modified", http_date(static_cast<int64_t>(info.written_ns / 1000000000ull))},
                 {"Accept-Ranges", "bytes"}, {"Content-Type", "binary/octet-stream"}};
  std::string if_match = r.header("if-match"), if_none = r.header("if-none-match");
  if (!if_match.empty() && !etag_matches(if_match, etag))
    throw S3Error(412, "PreconditionFailed", "At least one of the preconditions you specified did not hold.");
  if (!if_none.empty() && etag_matches(if_none, etag)) {
    out.status = 304;
    return;
  }
  uint64_t start = 0, len = size;
  std::string range = r.header("range");
  if (!range.empty()) {
    if (!parse_range(range, size, &start, &len)) {
      S3Error e(416, "InvalidRange", "The requested range is not satisfiable");
      out.error(e.status, e.code, e.what(), r.path);
      out.headers.emplace_back("Content-Range", "bytes */" + std::to_string(size));
      return;
    }
    out.status = 206;
    out.headers.emplace_back("Content-Range", "bytes " + std::to_string(start) + "-" + std::to_string(start + len - 1) +
                                                  "/" + std::to_string(size));
  }
  out.head_length = len;
  if (v) {
    out.pieces = {{v->data + start, len}};
    out.value = std::move(v);
  }
}

std::string Door::owner_of(const std::string& bucket) {
  std::lock_guard<std::mutex> lk(buckets_mu_);
  auto it = buckets_.find(bucket);
  return it == buckets_.end() ? "" : it->second;
}

void Door::load_buckets() {
  std::ifstream f(opts_.data_dir + "/s3-buckets");
  std::string bucket, owner;
  std::lock_guard<std::mutex> lk(buckets_mu_);
  while (f >> bucket >> owner) buckets_[bucket] = owner;
}

void Door::save_buckets_locked() {
  // Rare (bucket create/delete): a whole rewrite, renamed into place.
  const std::string path = opts_.data_dir + "/s3-buckets", tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    for (const auto& [b, owner] : buckets_) f << b << ' ' << owner << '\n';
    f.flush();
    if (!f) {
      log(LogLevel::Error, "S3 door: cannot write " + tmp + "; the bucket table stays in memory only");
      return;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    log(LogLevel::Error, "S3 door: cannot replace " + path + ": " + std::strerror(errno));
}

}  // namespace memkv::s3
