// What the shard-record and snapshot targets share: where a record for a
// key lives (shard_files.hpp: <data-dir>/shards/XX/<digest>, a SHA-256 of
// the key), and a store opened on a data directory that the fuzzer wrote,
// read back completely and then emptied, with its accounting checked.
#pragma once
#include <fcntl.h>
#include <openssl/evp.h>

#include <cstdio>

#include "common/crc32c.hpp"
#include "fuzz_input.hpp"
#include "node/store.hpp"

namespace memkv::fuzz {

inline std::string record_path(const std::string& data_dir, const std::string& key) {
  uint8_t md[32];
  unsigned int n = 0;
  EVP_Digest(key.data(), key.size(), md, &n, EVP_sha256(), nullptr);
  char hex[33];
  for (int i = 0; i < 16; ++i) std::snprintf(hex + 2 * i, 3, "%02x", md[i]);
  return data_dir + "/shards/" + std::string(hex, 2) + "/" + std::string(hex, 32);
}

inline void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

inline std::vector<uint8_t> read_file(const std::string& path) {
  std::vector<uint8_t> out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) std::abort();
  uint8_t buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.insert(out.end(), buf, buf + n);
  std::fclose(f);
  return out;
}

[[noreturn]] inline void bad_store(const std::string& what) {
  std::fprintf(stderr, "store rebuilt from fuzzed files: %s\n", what.c_str());
  std::abort();
}

// Opens a store on `dir`, reads every key it lists (a value it returns must
// match its CRC), deletes them all and closes it: no record may survive,
// and no bytes may stay charged.
inline void open_read_empty(const std::string& dir, uint64_t disk_capacity, bool arena) {
  StoreConfig cfg;
  cfg.data_dir = dir;
  cfg.dram_capacity = 8ull << 20;
  cfg.disk_capacity = disk_capacity;
  cfg.arena = arena;
  cfg.fsync = FsyncMode::Never;
  cfg.space_wait_ms = 0;
  Store store(cfg);
  store.open();
  bool truncated = false;
  auto listed = store.list("", "", 1000, &truncated);
  StoreStats st = store.stats();
  if (st.disk_used > disk_capacity) bad_store("disk use above capacity after the rebuild");
  for (const auto& l : listed) {
    uint32_t crc = 0;
    ValuePtr v = store.get(l.key, &crc);
    if (v && (v->size != l.size || crc32c(0, v->data, v->size) != crc))
      bad_store("a value read back does not match its size or CRC");
    ObjectInfo info;
    store.info(l.key, &info);
  }
  for (const auto& l : listed) store.remove(l.key);
  store.close();
  st = store.stats();
  if (st.keys || st.disk_keys || st.disk_used || st.dram_used)
    bad_store("after deleting every key: " + std::to_string(st.keys) + " keys, " + std::to_string(st.disk_keys) +
              " records, " + std::to_string(st.disk_used) + " disk bytes, " + std::to_string(st.dram_used) +
              " DRAM bytes still accounted");
}

}  // namespace memkv::fuzz
