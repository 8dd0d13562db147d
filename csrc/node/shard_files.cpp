#include "shard_files.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "../common/bytes.hpp"
#include "../common/crc32c.hpp"
#include "../common/error.hpp"
#include "../common/log.hpp"
#include "../wire/protocol.hpp"

namespace memkv {
namespace {

constexpr char kMagic[8] = {'M', 'K', 'V', 'R', 'E', 'C', '0', '1'};
constexpr uint32_t kFormat = 1;
constexpr size_t kKeyOffset = 40;
constexpr size_t kHeaderCrcOffset = kPage - 4;
static_assert(kKeyOffset + wire::kMaxStoredKeyLen <= kHeaderCrcOffset);

struct AlignedBuf {
  uint8_t* p = nullptr;
  explicit AlignedBuf(size_t n) {
    void* q = nullptr;
    if (posix_memalign(&q, kPage, n) != 0) throw std::bad_alloc();
    p = static_cast<uint8_t*>(q);
    std::memset(p, 0, n);
  }
  ~AlignedBuf() { std::free(p); }
};

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = d[p[i] >> 4];
    s[2 * i + 1] = d[p[i] & 15];
  }
  return s;
}

void encode_header(uint8_t* h, const std::string& key, uint64_t size, uint32_t crc, uint64_t written_ns) {
  std::memset(h, 0, kPage);
  std::memcpy(h, kMagic, 8);
  uint32_t key_len = static_cast<uint32_t>(key.size());
  uint32_t flags = 0;
  std::memcpy(h + 8, &kFormat, 4);
  std::memcpy(h + 12, &key_len, 4);
  std::memcpy(h + 16, &size, 8);
  std::memcpy(h + 24, &crc, 4);
  std::memcpy(h + 28, &flags, 4);
  std::memcpy(h + 32, &written_ns, 8);
  std::memcpy(h + kKeyOffset, key.data(), key.size());
  uint32_t hcrc = crc32c(0, h, kHeaderCrcOffset);
  std::memcpy(h + kHeaderCrcOffset, &hcrc, 4);
}

bool decode_header(const uint8_t* h, RecordInfo* r) {
  if (std::memcmp(h, kMagic, 8) != 0) return false;
  uint32_t format, key_len, hcrc;
  std::memcpy(&format, h + 8, 4);
  std::memcpy(&key_len, h + 12, 4);
  std::memcpy(&hcrc, h + kHeaderCrcOffset, 4);
  if (format != kFormat || key_len == 0 || key_len > wire::kMaxStoredKeyLen) return false;
  if (crc32c(0, h, kHeaderCrcOffset) != hcrc) return false;
  std::memcpy(&r->size, h + 16, 8);
  // No value can be larger than one frame carries; a larger size is corrupt
  // (and would overflow the page rounding of min_file_len and file_bytes).
  if (r->size > wire::kMaxDataLen) return false;
  std::memcpy(&r->crc, h + 24, 4);
  std::memcpy(&r->written_ns, h + 32, 8);
  r->key.assign(reinterpret_cast<const char*>(h + kKeyOffset), key_len);
  r->file_bytes = ShardFiles::file_bytes(r->size);
  return true;
}

bool pread_all(int fd, void* p, size_t n, off_t off) {
  auto* b = static_cast<uint8_t*>(p);
  while (n) {
    ssize_t r = ::pread(fd, b, n, off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    b += r;
    n -= static_cast<size_t>(r);
    off += r;
  }
  return true;
}

void pwrite_all(int fd, const void* p, size_t n, off_t off, const std::string& path) {
  auto* b = static_cast<const uint8_t*>(p);
  while (n) {
    ssize_t w = ::pwrite(fd, b, n, off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail(ErrorKind::Internal, "writing " + path + " failed: " + std::strerror(errno));
    b += w;
    n -= static_cast<size_t>(w);
    off += w;
  }
}

std::atomic<uint64_t> g_tmp_counter{0};

}  // namespace

ShardFiles::ShardFiles(const std::string& data_dir, std::shared_ptr<Arena> arena)
    : root_(data_dir + "/shards"), arena_(std::move(arena)) {
  ::mkdir(data_dir.c_str(), 0755);
  if (::mkdir(root_.c_str(), 0755) != 0 && errno != EEXIST)
    fail(ErrorKind::Config, "cannot create " + root_ + ": " + std::strerror(errno) + " (check --data-dir permissions)");
  for (int i = 0; i < 256; ++i) {
    char name[4];
    std::snprintf(name, sizeof(name), "%02x", i);
    std::string d = root_ + "/" + name;
    if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST)
      fail(ErrorKind::Config, "cannot create " + d + ": " + std::strerror(errno));
  }
  // Probe O_DIRECT once: some filesystems (older tmpfs) refuse it.
  std::string probe = root_ + "/.direct-probe";
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0 && errno == EINVAL) {
    direct_io_ = false;
    log(LogLevel::Info, "data dir does not support O_DIRECT; shards use buffered I/O");
  }
  if (fd >= 0) ::close(fd);
  ::unlink(probe.c_str());
}

ShardFiles::~ShardFiles() = default;

std::string ShardFiles::path_for(const std::string& key, std::string* shard_dir) const {
  uint8_t md[32];
  unsigned int len = 0;
  EVP_Digest(key.data(), key.size(), md, &len, EVP_sha256(), nullptr);
  std::string dir = root_ + "/" + hex(md, 1);
  if (shard_dir) *shard_dir = dir;
  return dir + "/" + hex(md, 16);
}

void ShardFiles::write(const std::string& key, const Value& v, uint32_t crc, uint64_t written_ns, bool sync) {
  std::string dir;
  std::string final_path = path_for(key, &dir);
  std::string tmp = dir + "/.tmp-" + final_path.substr(dir.size() + 1) + "-" + std::to_string(++g_tmp_counter);
  AlignedBuf header(kPage);
  encode_header(header.p, key, v.size, crc, written_ns);
  const bool direct = direct_io_ && v.size >= kDirectFrom && v.page_aligned;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (direct ? O_DIRECT : 0), 0644);
  if (fd < 0) fail(ErrorKind::Internal, "cannot create " + tmp + ": " + std::strerror(errno));
  try {
    pwrite_all(fd, header.p, kPage, 0, tmp);
    // Large values always go out as whole pages (their padding was zeroed at
    // allocation), so the record layout does not depend on O_DIRECT.
    bool padded = v.size >= kDirectFrom && v.page_aligned;
    if (v.size) pwrite_all(fd, v.data, padded ? round_up_page(v.size) : v.size, static_cast<off_t>(kPage), tmp);
    if (sync && ::fdatasync(fd) != 0) fail(ErrorKind::Internal, "fdatasync " + tmp + ": " + std::strerror(errno));
    if (::rename(tmp.c_str(), final_path.c_str()) != 0)
      fail(ErrorKind::Internal, "rename " + tmp + ": " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (sync) {
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    bool ok = dfd >= 0 && ::fsync(dfd) == 0;
    if (dfd >= 0) ::close(dfd);
    if (!ok) fail(ErrorKind::Internal, "fsync of " + dir + " failed: " + std::strerror(errno));
  } else {
    unsynced_ = true;
  }
}

void ShardFiles::sync_all() {
  if (!unsynced_) return;
  unsynced_ = false;
  int fd = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::syncfs(fd);  // data and directory entries of every record written since the last call
  ::close(fd);
}

ValuePtr ShardFiles::read(const std::string& key, bool* corrupt, uint32_t* crc_out) {
  *corrupt = false;
  std::string path = path_for(key, nullptr);
  struct Fd {
    int fd;
    ~Fd() {
      if (fd >= 0) ::close(fd);
    }
  } file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) return nullptr;  // absent, or a transient error (out of fds): a miss, nothing deleted
  // Only a record whose contents are wrong counts as corrupt (and is then
  // dropped); an I/O error is a miss that leaves the record alone.
  AlignedBuf header(kPage);
  RecordInfo info;
  struct stat st {};
  if (!pread_all(file.fd, header.p, kPage, 0) || ::fstat(file.fd, &st) != 0) return nullptr;
  if (!decode_header(header.p, &info) || info.key != key ||
      static_cast<uint64_t>(st.st_size) < min_file_len(info.size)) {
    *corrupt = true;
    return nullptr;
  }
  ValuePtr v = Value::make(info.size, arena_);
  bool ok = true;
  if (direct_io_ && info.size >= kDirectFrom && v->page_aligned) {
    Fd direct{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT)};
    if (direct.fd < 0) return nullptr;
    ok = pread_all(direct.fd, v->data, round_up_page(info.size), static_cast<off_t>(kPage));
  } else if (info.size) {
    ok = pread_all(file.fd, v->data, info.size, static_cast<off_t>(kPage));
  }
  if (!ok) return nullptr;
  if (crc32c(0, v->data, info.size) != info.crc) {
    *corrupt = true;
    return nullptr;
  }
  if (crc_out) *crc_out = info.crc;
  return v;
}

void ShardFiles::remove(const std::string& key, bool sync) {
  std::string dir;
  if (::unlink(path_for(key, &dir).c_str()) != 0) return;
  if (!sync) {
    unsynced_ = true;  // the next sync_all makes the removal durable too
    return;
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

size_t ShardFiles::scan(const std::function<void(RecordInfo&&)>& found) {
  // Shard directories are independent: scan them on a few threads (the work
  // is one open + pread + SHA-256 per record) and hand records over in order.
  std::atomic<int> next{0};
  std::atomic<size_t> skipped{0};
  std::mutex found_mu;
  auto work = [&] {
    AlignedBuf header(kPage);
    std::vector<RecordInfo> batch;
    for (int i = next++; i < 256; i = next++) {
      char name[4];
      std::snprintf(name, sizeof(name), "%02x", i);
      std::string d = root_ + "/" + name;
      DIR* dir = ::opendir(d.c_str());
      if (!dir) continue;
      while (struct dirent* de = ::readdir(dir)) {
        std::string n = de->d_name;
        if (n == "." || n == "..") continue;
        std::string p = d + "/" + n;
        if (n.rfind(".tmp-", 0) == 0) {  // an interrupted write: never acknowledged
          ::unlink(p.c_str());
          continue;
        }
        int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        RecordInfo info;
        struct stat st {};
        bool ok = pread_all(fd, header.p, kPage, 0) && decode_header(header.p, &info) && ::fstat(fd, &st) == 0 &&
                  static_cast<uint64_t>(st.st_size) >= min_file_len(info.size) && path_for(info.key, nullptr) == p;
        ::close(fd);
        if (!ok) {
          ++skipped;
          ::unlink(p.c_str());
          continue;
        }
        batch.push_back(std::move(info));
      }
      ::closedir(dir);
      std::lock_guard<std::mutex> lk(found_mu);
      for (RecordInfo& r : batch) found(std::move(r));
      batch.clear();
    }
  };
  unsigned n = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (unsigned t = 1; t < n; ++t) {
    try {
      threads.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // fewer threads is fine
    }
  }
  work();
  for (auto& t : threads) t.join();
  return skipped;
}

}  // namespace memkv

namespace memkv {
namespace {
constexpr char kIndexMagic[8] = {'M', 'K', 'V', 'I', 'D', 'X', '0', '1'};

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}
}  // namespace

void ShardFiles::save_index(const std::vector<RecordInfo>& records) {
  ByteWriter out;
  out.bytes(kIndexMagic, 8);
  out.u64(records.size());
  for (const RecordInfo& r : records) {
    out.key(r.key);
    out.u64(r.size);
    out.u32(r.crc);
    out.u64(r.written_ns);
  }
  out.u32(crc32c(0, out.data().data(), out.size()));
  std::string path = root_ + "/index.snapshot", tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;  // the next start scans the records instead
  bool ok = true;
  try {
    pwrite_all(fd, out.data().data(), out.size(), 0, tmp);
  } catch (const Error&) {
    ok = false;
  }
  ok = ok && ::fdatasync(fd) == 0;
  ::close(fd);
  if (ok && ::rename(tmp.c_str(), path.c_str()) == 0)
    fsync_dir(root_);
  else
    ::unlink(tmp.c_str());
}

bool ShardFiles::load_index(std::vector<RecordInfo>* records) {
  std::string path = root_ + "/index.snapshot";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  std::vector<uint8_t> in;
  if (::fstat(fd, &st) == 0 && st.st_size >= 20) {
    in.resize(static_cast<size_t>(st.st_size));
    if (!pread_all(fd, in.data(), in.size(), 0)) in.clear();
  }
  ::close(fd);
  // Gone before it is used: a crash from here on leaves no stale snapshot.
  // If it cannot be removed, it is not trusted either.
  if (::unlink(path.c_str()) != 0) return false;
  fsync_dir(root_);
  if (in.size() < 20 || std::memcmp(in.data(), kIndexMagic, 8) != 0) return false;
  uint32_t want;
  std::memcpy(&want, in.data() + in.size() - 4, 4);
  if (crc32c(0, in.data(), in.size() - 4) != want) return false;
  try {
    ByteReader r(in.data() + 8, in.size() - 12);
    uint64_t n = r.u64();
    records->clear();
    // save_index writes each key once, sizes within the protocol's limit:
    // anything else is not a snapshot to trust (the records are scanned).
    std::unordered_set<std::string> keys;
    for (uint64_t i = 0; i < n; ++i) {
      RecordInfo rec;
      rec.key = std::string(r.key());
      rec.size = r.u64();
      rec.crc = r.u32();
      rec.written_ns = r.u64();
      if (rec.key.empty() || rec.key.size() > wire::kMaxStoredKeyLen || rec.size > wire::kMaxDataLen ||
          !keys.insert(rec.key).second)
        return false;
      rec.file_bytes = file_bytes(rec.size);
      records->push_back(std::move(rec));
    }
    r.expect_end();
  } catch (const Error&) {
    return false;
  }
  return true;
}

}  // namespace memkv
