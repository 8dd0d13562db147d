// The index snapshot a clean shutdown leaves (ShardFiles::load_index) and
// the index the store rebuilds from it (Store::open): the fuzzer's bytes
// become <data-dir>/shards/index.snapshot, next to a few real records, and
// a store is opened on them, reads everything back and deletes it.
//
// Input: flags u8, then the snapshot's bytes. Flags: bit 0 fix the
// trailing CRC (so mutations reach the record parser); bit 1 a small disk
// capacity; bit 2 the DRAM arena; bit 3 no real records beside it.
#include "store_files.hpp"

using namespace memkv;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  uint8_t flags = in.u8();
  std::vector<uint8_t> snap = in.rest();
  // Real records for the keys the seeds' snapshots name (make_seeds writes
  // the same snapshot), made once; the data directory is the process's, and
  // the store deletes every record by the end of each input.
  struct Record {
    std::string path;
    std::vector<uint8_t> bytes;
  };
  static std::string dir;
  static const std::vector<Record> records = [] {
    dir = fuzz::scratch_dir() + "/snap";
    std::vector<Record> out;
    ShardFiles files(dir);
    for (const std::string& key : {std::string("k1"), std::string("k2"), std::string("\0team/k3", 8)}) {
      ValuePtr v = Value::make(100);
      std::memset(v->data, static_cast<int>(key.size()), 100);
      files.write(key, *v, crc32c(0, v->data, 100), 1, false);
      Record r{fuzz::record_path(dir, key), {}};
      r.bytes = fuzz::read_file(r.path);
      ::unlink(r.path.c_str());
      out.push_back(std::move(r));
    }
    return out;
  }();
  if (!(flags & 8))
    for (const Record& r : records) fuzz::write_file(r.path, r.bytes);
  if ((flags & 1) && snap.size() >= 4) {
    uint32_t crc = crc32c(0, snap.data(), snap.size() - 4);
    std::memcpy(snap.data() + snap.size() - 4, &crc, 4);
  }
  fuzz::write_file(dir + "/shards/index.snapshot", snap);
  fuzz::open_read_empty(dir, (flags & 2) ? 8 * 1024 : 64ull << 20, flags & 4);
  return 0;
}
