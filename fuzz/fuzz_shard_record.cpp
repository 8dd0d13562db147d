// The on-disk shard record reader (shard_files.cpp: decode_header, the
// start-up scan, ShardFiles::read): the fuzzer's bytes become one record
// file in a data directory, and a store is opened on it (the index rebuild
// in store.cpp), reads the record back and deletes it.
//
// Input: flags u8, a key piece, then the file's bytes. Flags: bit 0 name
// the file after the key the header declares (else after the key piece);
// bit 1 fix the header CRC and bit 2 the value CRC (so mutations get past
// the checksums); bit 3 add a leftover .tmp- file; bit 4 a small disk
// capacity; bit 5 the DRAM arena.
#include "store_files.hpp"

using namespace memkv;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  uint8_t flags = in.u8();
  std::string key = in.str();
  std::vector<uint8_t> file = in.rest();
  // One data directory for the process (shards/00..ff made once): the store
  // deletes every record by the end of each input, and the scan removes
  // whatever it rejects.
  static const std::string dir = [] {
    std::string d = fuzz::scratch_dir() + "/shard";
    ShardFiles layout(d);
    return d;
  }();

  uint32_t key_len = 0;
  if (file.size() >= 16) std::memcpy(&key_len, file.data() + 12, 4);
  if ((flags & 1) && file.size() >= 40 + uint64_t{key_len} && key_len <= 4096)
    key.assign(reinterpret_cast<const char*>(file.data() + 40), key_len);
  if ((flags & 4) && file.size() >= 32) {
    uint64_t vsize;
    std::memcpy(&vsize, file.data() + 16, 8);
    if (vsize <= file.size() - std::min<size_t>(file.size(), 4096) && file.size() >= 4096) {
      uint32_t crc = crc32c(0, file.data() + 4096, vsize);
      std::memcpy(file.data() + 24, &crc, 4);
    }
  }
  if ((flags & 2) && file.size() >= 4096) {
    uint32_t hcrc = crc32c(0, file.data(), 4092);
    std::memcpy(file.data() + 4092, &hcrc, 4);
  }
  std::string path = fuzz::record_path(dir, key);
  fuzz::write_file(path, file);
  if (flags & 8) fuzz::write_file(path.substr(0, path.rfind('/')) + "/.tmp-leftover-1", file);
  fuzz::open_read_empty(dir, (flags & 16) ? 64 * 1024 : 64ull << 20, flags & 32);
  ::unlink(path.c_str());  // a record the store kept but never listed fails open_read_empty; be tidy anyway
  return 0;
}
