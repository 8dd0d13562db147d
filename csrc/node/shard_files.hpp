// The durable tier: one record file per object under <data-dir>/shards/XX/,
// named by a digest of the key. A record is a 4 KiB header (magic, key, size,
// value CRC-32C, write time, header CRC) followed by the value padded to whole
// pages, so it can be written and read with O_DIRECT (no double caching: the
// DRAM tier is the cache). Files are written under a temporary name and
// renamed into place, so a record is either complete or absent; after a
// crash, checksums turn a torn record into a miss, never into wrong bytes.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "value.hpp"

namespace memkv {

enum class FsyncMode { Always, Interval, Never };

struct RecordInfo {
  std::string key;
  uint64_t size = 0;
  uint32_t crc = 0;
  uint64_t written_ns = 0;
  uint64_t file_bytes = 0;
};

class ShardFiles {
 public:
  // Values read back are allocated from `arena` when it has room.
  explicit ShardFiles(const std::string& data_dir, std::shared_ptr<Arena> arena = nullptr);
  ~ShardFiles();

  // Values from 1 MiB go through O_DIRECT (padded to whole pages, no page
  // cache); smaller ones use buffered I/O, where a device round trip per
  // record would dominate.
  static constexpr uint64_t kDirectFrom = 1ull << 20;
  // Disk space a record is charged: whole pages, as the filesystem allocates them.
  static uint64_t file_bytes(uint64_t value_size) { return kPage + round_up_page(value_size); }
  // The shortest valid record file: large values are always padded to whole
  // pages (O_DIRECT or not); small ones are written exactly.
  static uint64_t min_file_len(uint64_t value_size) {
    return value_size >= kDirectFrom ? kPage + round_up_page(value_size) : kPage + value_size;
  }

  // Writes the record and renames it into place. With `sync`, data and the
  // directory entry are on stable storage when this returns; otherwise a
  // later sync_all() makes them so.
  void write(const std::string& key, const Value& v, uint32_t crc, uint64_t written_ns, bool sync);
  // Reads and verifies a record. Returns nullptr when absent; sets *corrupt
  // when present but failing any check (the caller drops it).
  ValuePtr read(const std::string& key, bool* corrupt, uint32_t* crc_out);
  // With `sync` the removal is durable on return; else after sync_all().
  void remove(const std::string& key, bool sync = false);
  // Calls `found` for every valid record header; removes leftovers of
  // interrupted writes. Returns the number of unreadable records skipped.
  size_t scan(const std::function<void(RecordInfo&&)>& found);
  // Makes every write since the last call durable (one syncfs for all).
  void sync_all();
  bool direct_io() const { return direct_io_; }

  // The index snapshot written at a clean shutdown, so the next start need
  // not open every record. Loading it deletes it first: after a crash the
  // node always rebuilds from the records themselves.
  void save_index(const std::vector<RecordInfo>& records);
  bool load_index(std::vector<RecordInfo>* records);

 private:
  std::string path_for(const std::string& key, std::string* shard_dir) const;

  std::string root_;
  bool direct_io_ = true;
  bool unsynced_ = false;
  std::shared_ptr<Arena> arena_;
};

}  // namespace memkv
