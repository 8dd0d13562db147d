// Writes the seed corpus: fuzz/corpus/<target>/<name>, real and valid
// inputs in each target's input format, made with the encoders the node
// and client themselves use (ByteWriter metadata, ShardFiles records and
// snapshots), so fuzzing starts from inputs that reach deep.
//
// Usage: make_seeds <corpus dir>
#include <sys/stat.h>

#include <cstdio>
#include <map>

#include "common/bytes.hpp"
#include "common/crc32c.hpp"
#include "fuzz_input.hpp"
#include "node/shard_files.hpp"
#include "wire/protocol.hpp"

using namespace memkv;
using namespace memkv::wire;
using fuzz::Output;

namespace {

std::string g_root;

void seed(const std::string& target, const std::string& name, const std::vector<uint8_t>& bytes) {
  std::string dir = g_root + "/" + target;
  ::mkdir(g_root.c_str(), 0755);
  ::mkdir(dir.c_str(), 0755);
  FILE* f = std::fopen((dir + "/" + name).c_str(), "wb");
  if (!f) {
    std::perror(dir.c_str());
    std::exit(1);
  }
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}
void seed(const std::string& target, const std::string& name, const std::string& text) {
  seed(target, name, std::vector<uint8_t>(text.begin(), text.end()));
}
std::vector<uint8_t> v(const std::string& s) { return {s.begin(), s.end()}; }

void handshake() {
  ClientHello hello{};
  hello.magic = kHelloMagic;
  hello.min_version = kMinVersion;
  hello.max_version = kVersion;
  for (size_t i = 0; i < kNonceLen; ++i) hello.nonce[i] = static_cast<uint8_t>(i);
  ClientAuth auth{};
  auth.magic = kAuthMagic;
  auto msg = [&](uint8_t mode, const ClientHello& h) {
    return Output().u8(mode).bytes(&h, sizeof(h)).bytes(&auth, sizeof(auth)).data();
  };
  seed("handshake", "cluster-key-proven", msg(3, hello));
  seed("handshake", "cluster-key-wrong-proof", msg(1, hello));
  ClientHello t = hello;
  t.tenant_len = 6;
  std::memcpy(t.tenant, "team-a", 6);
  seed("handshake", "tenant-proven", msg(3, t));
  std::memcpy(t.tenant, "team-b", 6);
  seed("handshake", "unknown-tenant", msg(0, t));
  ClientHello old = hello;
  old.min_version = old.max_version = 9;
  seed("handshake", "version-unsupported", msg(0, old));
}

// fuzz_frame: kind, op, status, meta, tamper at, xor, then the payload.
void frame() {
  Output o;
  o.u8(0).u8(kPing).u16(0).piece({}).u16(0).u8(0).piece({});
  o.u8(0).u8(kGet).u16(0).piece(v("\x03\x00key")).u16(0).u8(0).piece({});
  o.u8(1).u8(kPut).u16(0).piece(v("meta")).u16(0).u8(0).u8(2).piece(v("value one")).piece(v("value two"));
  seed("frame", "honest-stream", o.data());
  Output t;
  t.u8(1).u8(kBatchPut).u16(0).piece({}).u16(70).u8(0x20).u8(1).piece(v("0123456789"));
  seed("frame", "tampered-value", t.data());
  Output h;
  h.u8(0).u8(kDelete).u16(0).piece(v("abc")).u16(20).u8(1).piece({});
  seed("frame", "tampered-header", h.data());
  seed("frame", "raw", Output().u8(2).u8(0).u16(0).piece({}).u16(0).u8(0).piece(v("MKVF garbage")).data());
}

void seal() {
  Output o;
  o.u8(1).u32(0x12345678).u8(0).u8(0);  // genuine, index 0
  o.u8(1).u32(0).u8(0).u8(0);           // genuine, index 1
  o.u8(3).u32(7).u32(1).u8(0).u8(0);    // sealed for index 7, sent as index 2
  seed("seal", "genuine-then-wrong-index", o.data());
  seed("seal", "tampered", Output().u8(1).u32(5).u8(9).u8(0x80).data());
  seed("seal", "raw", Output().u8(0).bytes(std::vector<uint8_t>(kSealLen, 0xab)).data());
}

// fuzz_node_ops requests: sealed (kind 0): op, meta, count, values; plain (kind 1): op, flags, meta, data.
struct Ops {
  Output o;
  explicit Ops(bool tenant) { o.u8(tenant ? 1 : 0); }
  Ops& sealed(uint8_t op, const ByteWriter& meta, const std::vector<std::string>& values) {
    o.u8(0).u8(op).piece(meta.data()).u8(static_cast<uint8_t>(values.size()));
    for (const auto& s : values) o.piece(v(s));
    return *this;
  }
  Ops& plain(uint8_t op, const ByteWriter& meta, const std::string& data = "") {
    o.u8(1).u8(op).u8(0).piece(meta.data()).piece(v(data));
    return *this;
  }
};

void node_ops() {
  for (bool tenant : {false, true}) {
    const std::string who = tenant ? "tenant-" : "cluster-";
    Ops s(tenant);
    ByteWriter put;
    put.key("alpha");
    put.u64(5);
    put.u32(0);
    s.sealed(kPut, put, {"hello"});
    ByteWriter get;
    get.key("alpha");
    get.u64(1);
    get.u64(kMissing);
    s.plain(kGet, get);
    ByteWriter key;
    key.key("alpha");
    s.plain(kExists, key).plain(kStat, key);
    s.plain(kPing, ByteWriter());
    s.plain(kDelete, key);
    seed("node_ops", who + "single", s.o.data());

    Ops b(tenant);
    ByteWriter bp;
    bp.u32(2);
    bp.key("k1");
    bp.u64(3);
    bp.key("k2");
    bp.u64(0);
    b.sealed(kBatchPut, bp, {"abc", ""});
    ByteWriter bg;
    bg.u32(3);
    for (const char* k : {"k1", "k2", "nope"}) {
      bg.key(k);
      bg.u64(0);
      bg.u64(kMissing);
    }
    b.plain(kBatchGet, bg);
    ByteWriter bk;
    bk.u32(2);
    bk.key("k1");
    bk.key("k2");
    b.plain(kBatchExists, bk).plain(kBatchDelete, bk);
    seed("node_ops", who + "batch", b.o.data());

    Ops p(tenant);
    auto part = [&](uint64_t id, uint64_t total, uint64_t off, const std::string& bytes) {
      ByteWriter m;
      m.key("multi");
      m.u64(id);
      m.u64(total);
      m.u64(off);
      m.u64(bytes.size());
      p.sealed(kPutPart, m, {bytes});
    };
    part(7, 8, 4, "5678");
    part(7, 8, 0, "1234");
    part(9, 100, 0, "xx");
    ByteWriter ab;
    ab.key("multi");
    ab.u64(9);
    p.plain(kAbortPart, ab);
    ByteWriter mg;
    mg.key("multi");
    mg.u64(0);
    mg.u64(8);
    p.plain(kGet, mg);
    seed("node_ops", who + "multipart", p.o.data());
  }
  Ops odd(false);
  odd.plain(kRdmaConnect, ByteWriter()).plain(0x7f, ByteWriter(), "junk");
  seed("node_ops", "rdma-and-unknown", odd.o.data());
}

// fuzz_parts steps: 0 begin(key, id, total, offset, len), 1 done(which, ok), 2 abort(key, id), 3 get(key).
void parts() {
  Output o;
  o.u8(0).u8(0).u8(1).u32(1000).u32(0).u32(400);
  o.u8(0).u8(0).u8(1).u32(1000).u32(400).u32(600);
  o.u8(1).u8(1).u8(1);
  o.u8(1).u8(0).u8(0);  // fails its checksum
  o.u8(0).u8(0).u8(1).u32(1000).u32(0).u32(400);
  o.u8(1).u8(0).u8(1);
  o.u8(3).u8(0);
  seed("parts", "complete-after-retry", o.data());
  Output a;
  a.u8(0).u8(2).u8(3).u32(5000).u32(0).u32(10);
  a.u8(2).u8(2).u8(3);
  a.u8(1).u8(0).u8(1);
  a.u8(0).u8(1).u8(0).u32(0x80000000u | 70000).u32(1).u32(0xffffffffu);
  seed("parts", "abort-while-writing", a.data());
}

void http() {
  seed("http", "get", "GET /bucket/key?x=1 HTTP/1.1\r\nHost: h\r\n\r\n");
  seed("http", "put-unsigned",
       "PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n"
       "Expect: 100-continue\r\n\r\nhello"
       "HEAD http://h/b/k HTTP/1.1\r\nConnection: close\r\n\r\n");
  seed("http", "put-sha256",
       "PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
       "x-amz-content-sha256: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\r\n"
       "Content-MD5: kAFQmDzST7DWlj99KOF/cg==\r\n\r\nabc");
  seed("http", "aws-chunked",
       "PUT /b/k HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
       "x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER\r\nx-amz-decoded-content-length: 3\r\n"
       "x-amz-trailer: x-amz-checksum-crc32\r\n\r\n"
       "24\r\n3\r\nabc\r\n0\r\nx-amz-checksum-crc32:NSRBwg==\r\n\r\n\r\n0\r\n\r\n");
  seed("http", "chunked-post",
       "POST /b?delete HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n0\r\nT: x\r\n\r\n");
}

void sigv4() {
  Output o;
  o.u64(1767225600);  // 2026-01-01T00:00:00Z
  o.str("GET").str("/bucket/key%20one").str("prefix=a%2Fb&list-type=2&max-keys=5");
  std::map<std::string, std::string> h = {
      {"host", "127.0.0.1:9000"},
      {"x-amz-date", "20260101T000000Z"},
      {"x-amz-content-sha256", "UNSIGNED-PAYLOAD"},
      {"authorization",
       "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/s3/aws4_request, "
       "SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
       "Signature=0000000000000000000000000000000000000000000000000000000000000000"}};
  for (const auto& [k, val] : h) o.str(k).str(val);
  seed("sigv4", "signed-get", o.data());
  Output p;
  p.u64(0).str("GET").str("/b").str("X-Amz-Signature=abc").str("host").str("h");
  seed("sigv4", "presigned", p.data());
}

std::vector<uint8_t> slurp(const std::string& path) {
  std::vector<uint8_t> out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return out;
  uint8_t buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.insert(out.end(), buf, buf + n);
  std::fclose(f);
  return out;
}

// One real record, as the flusher writes it; the file name is the key's digest.
std::vector<uint8_t> record(const std::string& dir, const std::string& key, const std::string& value) {
  fuzz::remove_tree(dir);
  ShardFiles files(dir);
  ValuePtr val = Value::make(value.size());
  std::memcpy(val->data, value.data(), value.size());
  files.write(key, *val, crc32c(0, val->data, val->size), 1767225600000000000ull, false);
  std::vector<uint8_t> found;
  files.scan([&](RecordInfo&&) {});
  // The scan keeps valid records in place: read the one file there.
  for (int i = 0; i < 256 && found.empty(); ++i) {
    char sub[4];
    std::snprintf(sub, sizeof(sub), "%02x", i);
    std::string d = dir + "/shards/" + sub;
    for (const auto& e : std::filesystem::directory_iterator(d)) found = slurp(e.path());
  }
  return found;
}

void store_files() {
  const std::string tmp = fuzz::scratch_dir() + "/seeds";
  auto put = [](uint8_t flags, const std::string& key, const std::vector<uint8_t>& file) {
    return Output().u8(flags).str(key).bytes(file).data();
  };
  seed("shard_record", "small", put(1, "", record(tmp, "alpha", "hello world")));
  seed("shard_record", "tenant-key", put(1, "", record(tmp, std::string("\0team/k", 7), std::string(300, 'x'))));
  seed("shard_record", "empty-value", put(1, "", record(tmp, "e", "")));
  seed("shard_record", "wrong-name", put(0, "other", record(tmp, "alpha", "hello")));
  seed("shard_record", "leftover-tmp", put(1 | 8 | 16, "", record(tmp, "beta", std::string(5000, 'b'))));

  fuzz::remove_tree(tmp);
  std::vector<RecordInfo> recs = {
      {"k1", 100, 0, 1, ShardFiles::file_bytes(100)},
      {"k2", 100, 0, 2, ShardFiles::file_bytes(100)},
      {std::string("\0team/k3", 8), 100, 0, 3, ShardFiles::file_bytes(100)},
  };
  for (auto& r : recs) {
    std::vector<uint8_t> b(100, static_cast<uint8_t>(r.key.size()));
    r.crc = crc32c(0, b.data(), b.size());
  }
  {
    ShardFiles files(tmp);
    files.save_index(recs);
  }
  std::vector<uint8_t> snap = slurp(tmp + "/shards/index.snapshot");
  seed("snapshot", "three-records", Output().u8(0).bytes(snap).data());
  seed("snapshot", "three-records-small-disk", Output().u8(2 | 4).bytes(snap).data());
  {
    ShardFiles files(tmp);
    files.save_index({});
  }
  seed("snapshot", "empty", Output().u8(8).bytes(slurp(tmp + "/shards/index.snapshot")).data());
  fuzz::remove_tree(tmp);
}

// The atheris targets: a chunk header as memkv_lmcache/chunk_header.py
// writes it (magic, version, ngroups, header_len, payload_len, the format
// name, per group a dtype name, ndim and dims, padded to 64 bytes), and
// requests to the admin port.
void python_targets() {
  auto name = [](Output& o, const std::string& s) { o.u8(static_cast<uint8_t>(s.size())).bytes(s.data(), s.size()); };
  Output body;
  name(body, "KV_2LTD");
  name(body, "bfloat16");
  body.u8(4).u64(2).u64(32).u64(256).u64(128);
  size_t header_len = (16 + body.data().size() + 63) / 64 * 64;
  uint64_t payload = 2ull * 32 * 256 * 128 * 2;
  Output h;
  h.bytes("MKLC", 4).u8(1).u8(1).u16(static_cast<uint16_t>(header_len)).u64(payload).bytes(body.data());
  std::vector<uint8_t> header = h.data();
  header.resize(header_len, 0);
  seed("chunk_header", "kv-2ltd-bf16", header);
  std::vector<uint8_t> with_payload = header;
  with_payload.resize(header.size() + 64, 0x5a);
  seed("chunk_header", "header-and-payload-start", with_payload);

  seed("admin", "metrics", "GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n");
  seed("admin", "status-keepalive",
       "GET /v1/status HTTP/1.1\r\nHost: node\r\n\r\nGET /v1/health?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n");
  seed("admin", "not-found", "POST /nope HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
}

// Inputs that once failed (fixed since): kept as seeds so every run retries them.
void regressions() {
  // A record header declaring a value of 2^64 - 100 bytes (its CRC fixed up by flag 2).
  std::vector<uint8_t> h(4096, 0);
  std::memcpy(h.data(), "MKVREC01", 8);
  Output fields;
  fields.u32(1).u32(5).u64(~0ull - 99).u32(0).u32(0).u64(1);
  std::memcpy(h.data() + 8, fields.data().data(), fields.data().size());
  std::memcpy(h.data() + 40, "alpha", 5);
  seed("shard_record", "regression-size-overflow", Output().u8(1 | 2).str("").bytes(h).data());
  // An index snapshot naming one key twice (its CRC fixed up by flag 1).
  Output snap;
  snap.bytes("MKVIDX01", 8).u64(2);
  for (int i = 0; i < 2; ++i) snap.str("k1").u64(100).u32(0).u64(1);
  snap.u32(0);
  seed("snapshot", "regression-duplicate-key", Output().u8(1).bytes(snap.data()).data());
  seed("snapshot", "regression-duplicate-key-small-disk", Output().u8(1 | 2).bytes(snap.data()).data());
  // A request line with no method.
  seed("http", "regression-empty-method", " /b/k HTTP/1.1\r\nHost: h\r\n\r\n");
  // A request line naming a version http.server rejects (its 400 once came without a status line).
  seed("admin", "regression-bad-version", "GET /metrics THTP/0.1\r\nHost: x\r\n\r\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  handshake();
  frame();
  seal();
  node_ops();
  parts();
  http();
  sigv4();
  store_files();
  python_targets();
  regressions();
  return 0;
}
