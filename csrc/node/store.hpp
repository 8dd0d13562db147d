// The node's object store: the key index, the DRAM tier (LRU), write-back to
// the shard files by one flusher thread, and multi-part writes that become
// visible only when complete.
//
// Invariants: DRAM usage (values + per-entry overhead + reservations for
// values being received) never exceeds dram_capacity; disk usage never
// exceeds disk_capacity; an object is visible only after its bytes were
// received and verified; unflushed ("dirty") values are never evicted, so an
// acknowledged put reaches its shard unless the process dies first. All file
// creation and removal happens on the flusher thread, in queue order, so
// writes and deletes of one key can never overtake each other on disk.
//
// Tenants: the node stores tenant T's key K as kTenantMark T '/' K (no client
// key may start with kTenantMark), and charges its bytes to T's account. A
// tenant over its DRAM or disk quota makes room from its own LRU first.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "shard_files.hpp"
#include "value.hpp"

namespace memkv {

constexpr char kTenantMark = '\0';
struct Account;  // a tenant's usage, quotas and LRU lists (store.cpp)
// "" for a key outside every tenant's keyspace (the cluster key's).
std::string tenant_of_key(const std::string& key);

struct StoreConfig {
  std::string data_dir;
  uint64_t dram_capacity = 1ull << 30;
  uint64_t disk_capacity = 0;  // 0: DRAM only, nothing persisted
  FsyncMode fsync = FsyncMode::Interval;
  int fsync_interval_ms = 1000;
  int space_wait_ms = 30000;          // how long a put may wait for the flusher to free DRAM
  int part_idle_timeout_ms = 120000;  // abandoned multi-part writes are dropped after this
  bool arena = true;                  // large values in one pre-faulted arena of dram_capacity bytes
};

struct StoreStats {
  uint64_t keys = 0, dram_keys = 0, disk_keys = 0;
  uint64_t dram_used = 0, disk_used = 0, dirty_bytes = 0;
  uint64_t dram_capacity = 0, disk_capacity = 0;
  uint64_t evictions_dram = 0, evictions_disk = 0, evictions_dropped = 0;
  uint64_t corrupt_detected = 0, flush_errors = 0, flushed = 0, pending_parts = 0;
  uint64_t disk_reads = 0;
  uint64_t arena_bytes = 0, arena_free = 0, arena_prefaulted = 0;
};

// One tenant's share of the store.
struct AccountStats {
  std::string tenant;
  uint64_t dram_quota = 0, disk_quota = 0;  // 0: no limit
  uint64_t dram_used = 0, disk_used = 0, keys = 0;
  uint64_t evictions_dram = 0, evictions_disk = 0;
};

// OverQuota: the value can never fit in its tenant's DRAM or disk quota.
enum class PutResult { Ok, TooLarge, NoSpace, ShuttingDown, BadRange, Internal, OverQuota };

// DRAM reserved for a value while it is being received. Releases itself
// unless handed to Store::commit.
class Reservation {
 public:
  Reservation() = default;
  Reservation(Reservation&& o) noexcept : store_(o.store_), bytes_(o.bytes_), account_(o.account_) {
    o.store_ = nullptr;
  }
  Reservation& operator=(Reservation&& o) noexcept;
  ~Reservation();
  uint64_t bytes() const { return bytes_; }
  explicit operator bool() const { return store_ != nullptr; }

 private:
  friend class Store;
  Reservation(class Store* s, uint64_t b, Account* a) : store_(s), bytes_(b), account_(a) {}
  class Store* store_ = nullptr;
  uint64_t bytes_ = 0;
  Account* account_ = nullptr;
};

struct ObjectInfo {
  uint64_t size = 0;
  uint32_t crc = 0;
  uint64_t written_ns = 0;
  bool in_dram = false, on_disk = false;
};

class Store {
 public:
  explicit Store(StoreConfig cfg);
  ~Store();
  Store(const Store&) = delete;

  // Rebuilds the index from the shard files and starts the flusher.
  void open();
  // Flushes every dirty value, syncs, stops the flusher.
  void close();

  uint64_t max_value_bytes() const;
  // DRAM accounted for one value of `size` bytes under `key_len`.
  static uint64_t charge(uint64_t size, size_t key_len);

  // DRAM for a value of `size` bytes under `key`, charged to its tenant.
  // wait=false: NoSpace at once rather than waiting for the flusher to free DRAM.
  PutResult reserve(uint64_t size, const std::string& key, Reservation* out, bool wait = true);
  // Publishes a received, verified value. Waits for the shard write when
  // fsync=always. `wanted` (if given) is asked under the index lock, just
  // before publishing: false drops the value (ShuttingDown).
  PutResult commit(const std::string& key, ValuePtr v, uint32_t crc, Reservation&& r,
                   const std::function<bool()>& wanted = nullptr);

  // Returns the value (loading and verifying it from its shard if needed), or
  // nullptr on a miss.
  ValuePtr get(const std::string& key, uint32_t* crc);
  bool info(const std::string& key, ObjectInfo* out);
  bool remove(const std::string& key);

  // Multi-part writes: parts of one (key, upload id) land in a pending
  // object, in any order, over any connections; the object is published
  // atomically once every byte of [0, total) has arrived. Parts must not
  // overlap, except that resending a part already received is accepted (and
  // ignored), so retries are safe. A part that fails its checksum leaves its
  // range unreceived; resend it.
  struct PartTarget {
    ValuePtr buffer;
    uint64_t total = 0;
    bool duplicate = false;  // already received: drain the data, write nothing
  };
  PutResult part_begin(const std::string& key, uint64_t upload_id, uint64_t total, uint64_t offset, uint64_t len,
                       PartTarget* target);
  PutResult part_done(const std::string& key, uint64_t upload_id, uint64_t offset, uint64_t len, bool ok,
                      bool* complete, uint64_t* remaining);
  bool part_abort(const std::string& key, uint64_t upload_id);

  StoreStats stats();
  // Keys that start with `prefix` and sort after `after`, in byte order, at
  // most `max` of them; *truncated says whether more follow. A scan of the
  // index (listing is an admin path, not the data path).
  struct Listed {
    std::string key;
    uint64_t size = 0;
    uint32_t crc = 0;
    uint64_t written_ns = 0;
  };
  std::vector<Listed> list(const std::string& prefix, const std::string& after, size_t max, bool* truncated);
  // Sets a tenant's quotas (0: no limit); lowering one takes effect as its
  // next values arrive.
  void set_quota(const std::string& tenant, uint64_t dram_quota, uint64_t disk_quota);
  std::vector<AccountStats> account_stats();
  // A DRAM buffer for a value of `size` bytes (from the arena when it fits).
  ValuePtr make_value(uint64_t size) const { return Value::make(size, arena_); }
  // The arena holding large values (null when disabled): the node registers it for RDMA.
  const std::shared_ptr<Arena>& arena() const { return arena_; }
  bool direct_io() const { return files_ ? files_->direct_io() : false; }
  uint64_t startup_ms() const { return startup_ms_; }

 private:
  friend class Reservation;
  friend struct Account;
  struct Entry {
    std::string key;
    uint64_t size = 0;
    uint32_t crc = 0;
    uint64_t written_ns = 0;
    uint64_t version = 0;
    ValuePtr dram;
    uint64_t charged = 0;  // DRAM accounted while resident
    bool dirty = false;    // resident, not yet on its shard
    bool on_disk = false;  // the shard holds this version
    bool in_lru = false;
    std::list<Entry*>::iterator lru;  // clean, resident entries only
    Account* account = nullptr;  // null: the cluster key's keyspace
    std::list<Entry*>::iterator account_lru;
  };
  struct DiskRecord {
    uint64_t bytes = 0;
    std::list<std::string>::iterator lru;
    Account* account = nullptr;
    std::list<std::string>::iterator account_lru;
  };
  struct FlushTask {
    bool write;  // else remove
    std::string key;
    uint64_t version;
    uint64_t queued_ms = 0;
    uint64_t waiter = 0;  // a removal someone waits on (fsync=always): its key in durable_removals_
  };
  struct Part {
    ValuePtr buffer;
    uint64_t total = 0;
    uint64_t received = 0;
    std::map<uint64_t, uint64_t> ranges;    // offset -> end of bytes already written
    std::map<uint64_t, uint64_t> inflight;  // offset -> end of parts being received
    uint64_t reserved = 0;  // DRAM charged for the buffer
    Account* account = nullptr;
    int writers = 0;
    bool aborted = false;
    uint64_t last_active_ms = 0;
  };

  void release_dram(Account* a, uint64_t bytes);
  void dram_add_locked(Account* a, uint64_t bytes);
  void dram_sub_locked(Account* a, uint64_t bytes);
  // The account of the key's tenant (created on first use), or null.
  Account* account_locked(const std::string& key);
  // Room for `need` more bytes of DRAM: within the capacity and a's quota.
  bool dram_fits_locked(Account* a, uint64_t need) const;
  // Evicts the LRU value of a's quota if a is over it, else of the node.
  bool make_room_locked(Account* a, uint64_t need);
  bool evict_one_locked();  // the node's LRU value
  bool evict_locked(Entry* e);
  void index_erase_locked(Entry* e);
  void disk_insert_locked(const std::string& key, uint64_t bytes);
  void disk_erase_locked(std::unordered_map<std::string, DiskRecord>::iterator it);
  // Drops the record of `victim` from the disk tier (the file goes later, off the lock).
  void disk_evict_locked(const std::string& victim);
  void drop_entry_locked(Entry* e);
  void lru_touch_locked(Entry* e);
  void lru_unlink_locked(Entry* e);
  void disk_touch_locked(const std::string& key);
  void publish_locked(const std::string& key, ValuePtr v, uint32_t crc, uint64_t charged, uint64_t* version);
  void flusher_main();
  void flush_one(const FlushTask& t);
  void expire_parts_locked(uint64_t now_ms);

  StoreConfig cfg_;
  std::shared_ptr<Arena> arena_;
  std::unique_ptr<ShardFiles> files_;
  std::mutex mu_;
  std::condition_variable space_cv_;    // DRAM freed / entries cleaned
  std::condition_variable flush_cv_;    // work for the flusher
  std::condition_variable durable_cv_;  // a version reached its shard
  std::unordered_map<std::string, std::unique_ptr<Entry>> index_;
  std::list<Entry*> lru_;  // front = most recently used
  std::unordered_map<std::string, DiskRecord> disk_;
  std::list<std::string> disk_lru_;
  std::deque<FlushTask> flush_queue_;
  std::map<std::pair<std::string, uint64_t>, Part> parts_;
  std::unordered_map<std::string, std::unique_ptr<Account>> accounts_;  // by tenant; kept for the node's life
  uint64_t dram_used_ = 0, disk_used_ = 0, dirty_bytes_ = 0, next_version_ = 0;
  uint64_t evictions_dram_ = 0, evictions_disk_ = 0, evictions_dropped_ = 0, corrupt_ = 0, flush_errors_ = 0,
           flushed_ = 0, disk_reads_ = 0;
  bool stopping_ = false;
  int space_waiters_ = 0;
  // fsync=always: version -> -1 pending, 1 on its shard, 0 shard write failed
  std::unordered_map<uint64_t, int> durable_results_;
  std::unordered_map<uint64_t, int> durable_removals_;  // fsync=always deletes: -1 pending, 1 done
  uint64_t next_removal_ = 0;
  std::thread flusher_;
  uint64_t startup_ms_ = 0;
};

}  // namespace memkv
