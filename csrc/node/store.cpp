#include "store.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>

#include "../common/crc32c.hpp"
#include "../common/error.hpp"
#include "../common/log.hpp"
#include "../wire/protocol.hpp"

namespace memkv {
namespace {

// Index entry, LRU links and key copies: charged so that many small values
// cannot push real memory use past the configured capacity.
constexpr uint64_t kEntryOverhead = 192;

uint64_t now_ns() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}
uint64_t mono_ms() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

}  // namespace

std::string tenant_of_key(const std::string& key) {
  if (key.empty() || key[0] != kTenantMark) return {};
  size_t slash = key.find('/', 1);
  return key.substr(1, slash == std::string::npos ? std::string::npos : slash - 1);
}

struct Account {
  std::string tenant;
  uint64_t dram_quota = 0, disk_quota = 0;
  uint64_t dram_used = 0, disk_used = 0, keys = 0;
  uint64_t evictions_dram = 0, evictions_disk = 0;
  std::list<Store::Entry*> lru;    // its clean, resident entries; front = most recent
  std::list<std::string> disk_lru;  // its shard records
};

Reservation& Reservation::operator=(Reservation&& o) noexcept {
  if (this != &o) {
    if (store_) store_->release_dram(account_, bytes_);
    store_ = o.store_;
    bytes_ = o.bytes_;
    account_ = o.account_;
    o.store_ = nullptr;
  }
  return *this;
}

Reservation::~Reservation() {
  if (store_) store_->release_dram(account_, bytes_);
}

Store::Store(StoreConfig cfg) : cfg_(std::move(cfg)) {}

Store::~Store() {
  if (flusher_.joinable()) close();
}

uint64_t Store::charge(uint64_t size, size_t key_len) { return Value::alloc_size(size) + key_len + kEntryOverhead; }

uint64_t Store::max_value_bytes() const {
  uint64_t m = cfg_.dram_capacity > kEntryOverhead + wire::kMaxStoredKeyLen + kPage
                   ? cfg_.dram_capacity - kEntryOverhead - wire::kMaxStoredKeyLen - kPage
                   : 0;
  // A durable node only acknowledges what its shards can hold.
  // A record takes a header page plus the value padded to whole pages.
  if (cfg_.disk_capacity) m = std::min(m, cfg_.disk_capacity > kPage ? (cfg_.disk_capacity - kPage) & ~(kPage - 1) : 0);
  return m;
}

void Store::open() {
  auto t0 = std::chrono::steady_clock::now();
  if (cfg_.arena) {
    arena_ = std::make_shared<Arena>(cfg_.dram_capacity);
    arena_->prefault_in_background();
  }
  if (cfg_.disk_capacity) {
    files_ = std::make_unique<ShardFiles>(cfg_.data_dir, arena_);
    std::vector<RecordInfo> records;
    size_t skipped = 0;
    if (files_->load_index(&records)) {
      log(LogLevel::Info, "index snapshot from the last clean shutdown: " + std::to_string(records.size()) +
                              " records");
    } else {
      records.clear();
      skipped = files_->scan([&](RecordInfo&& r) { records.push_back(std::move(r)); });
      std::sort(records.begin(), records.end(),
                [](const RecordInfo& a, const RecordInfo& b) { return a.written_ns < b.written_ns; });
    }
    std::lock_guard<std::mutex> lk(mu_);
    for (RecordInfo& r : records) {
      auto e = std::make_unique<Entry>();
      e->key = r.key;
      e->size = r.size;
      e->crc = r.crc;
      e->written_ns = r.written_ns;
      e->version = ++next_version_;
      e->on_disk = true;
      e->account = account_locked(r.key);
      if (e->account) ++e->account->keys;
      disk_insert_locked(r.key, r.file_bytes);
      index_[r.key] = std::move(e);
    }
    // A smaller disk capacity than last run: drop the oldest records.
    while (disk_used_ > cfg_.disk_capacity && !disk_lru_.empty()) {
      std::string victim = disk_lru_.back();
      disk_evict_locked(victim);
      auto e = index_.find(victim);
      if (e != index_.end()) index_erase_locked(e->second.get());
      files_->remove(victim);
    }
    if (skipped) log(LogLevel::Warning, "dropped " + std::to_string(skipped) + " unreadable shard records at start-up");
  }
  startup_ms_ = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
  // Also runs on DRAM-only nodes: it expires abandoned multi-part writes.
  flusher_ = std::thread([this] { flusher_main(); });
}

void Store::close() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  flush_cv_.notify_all();
  space_cv_.notify_all();
  durable_cv_.notify_all();
  if (flusher_.joinable()) flusher_.join();
  if (!files_) return;
  // Every record is written and synced: describe them for a fast restart,
  // least recently used first, so the disk LRU comes back in order.
  std::vector<RecordInfo> records;
  {
    std::lock_guard<std::mutex> lk(mu_);
    records.reserve(disk_.size());
    for (auto it = disk_lru_.rbegin(); it != disk_lru_.rend(); ++it) {
      auto e = index_.find(*it);
      if (e == index_.end() || !e->second->on_disk) continue;
      const Entry& en = *e->second;
      records.push_back(RecordInfo{en.key, en.size, en.crc, en.written_ns, ShardFiles::file_bytes(en.size)});
    }
  }
  files_->save_index(records);
}

void Store::release_dram(Account* a, uint64_t bytes) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    dram_sub_locked(a, bytes);
  }
  space_cv_.notify_all();
}

void Store::dram_add_locked(Account* a, uint64_t bytes) {
  dram_used_ += bytes;
  if (a) a->dram_used += bytes;
}

void Store::dram_sub_locked(Account* a, uint64_t bytes) {
  dram_used_ -= bytes;
  if (a) a->dram_used -= bytes;
}

Account* Store::account_locked(const std::string& key) {
  if (key.empty() || key[0] != kTenantMark) return nullptr;
  std::string tenant = tenant_of_key(key);
  auto it = accounts_.find(tenant);
  if (it != accounts_.end()) return it->second.get();
  auto a = std::make_unique<Account>();
  a->tenant = tenant;
  return accounts_.emplace(tenant, std::move(a)).first->second.get();
}

void Store::lru_touch_locked(Entry* e) {
  lru_unlink_locked(e);
  lru_.push_front(e);
  e->lru = lru_.begin();
  if (e->account) {
    e->account->lru.push_front(e);
    e->account_lru = e->account->lru.begin();
  }
  e->in_lru = true;
}

void Store::lru_unlink_locked(Entry* e) {
  if (e->in_lru) {
    lru_.erase(e->lru);
    if (e->account) e->account->lru.erase(e->account_lru);
  }
  e->in_lru = false;
}

void Store::disk_touch_locked(const std::string& key) {
  auto it = disk_.find(key);
  if (it == disk_.end()) return;
  disk_lru_.splice(disk_lru_.begin(), disk_lru_, it->second.lru);
  if (Account* a = it->second.account) a->disk_lru.splice(a->disk_lru.begin(), a->disk_lru, it->second.account_lru);
}

void Store::disk_insert_locked(const std::string& key, uint64_t bytes) {
  disk_lru_.push_front(key);
  DiskRecord& d = disk_[key];
  d.bytes = bytes;
  d.lru = disk_lru_.begin();
  d.account = account_locked(key);
  if (d.account) {
    d.account->disk_lru.push_front(key);
    d.account_lru = d.account->disk_lru.begin();
    d.account->disk_used += bytes;
  }
  disk_used_ += bytes;
}

void Store::disk_erase_locked(std::unordered_map<std::string, DiskRecord>::iterator it) {
  disk_used_ -= it->second.bytes;
  disk_lru_.erase(it->second.lru);
  if (Account* a = it->second.account) {
    a->disk_used -= it->second.bytes;
    a->disk_lru.erase(it->second.account_lru);
  }
  disk_.erase(it);
}

void Store::disk_evict_locked(const std::string& victim) {
  auto d = disk_.find(victim);
  if (Account* a = d->second.account) ++a->evictions_disk;
  disk_erase_locked(d);
  ++evictions_disk_;
}

void Store::index_erase_locked(Entry* e) {
  if (e->account) --e->account->keys;
  index_.erase(e->key);
}

void Store::drop_entry_locked(Entry* e) {
  lru_unlink_locked(e);
  if (e->dram) dram_sub_locked(e->account, e->charged);
  if (e->dirty) dirty_bytes_ -= e->size;
  index_erase_locked(e);
}

bool Store::evict_locked(Entry* e) {
  lru_unlink_locked(e);
  dram_sub_locked(e->account, e->charged);
  e->dram.reset();
  e->charged = 0;
  ++evictions_dram_;
  if (e->account) ++e->account->evictions_dram;
  if (!e->on_disk) {  // not on a shard: evicting it forgets it
    ++evictions_dropped_;
    index_erase_locked(e);
  }
  return true;
}

bool Store::evict_one_locked() { return !lru_.empty() && evict_locked(lru_.back()); }

bool Store::dram_fits_locked(Account* a, uint64_t need) const {
  return dram_used_ + need <= cfg_.dram_capacity && !(a && a->dram_quota && a->dram_used + need > a->dram_quota);
}

bool Store::make_room_locked(Account* a, uint64_t need) {
  if (a && a->dram_quota && a->dram_used + need > a->dram_quota)
    return !a->lru.empty() && evict_locked(a->lru.back());
  return evict_one_locked();
}

PutResult Store::reserve(uint64_t size, const std::string& key, Reservation* out, bool wait) {
  uint64_t need = charge(size, key.size());
  if (size > max_value_bytes()) return PutResult::TooLarge;
  std::unique_lock<std::mutex> lk(mu_);
  Account* a = account_locked(key);
  if (a && ((a->dram_quota && need > a->dram_quota) ||
            (files_ && a->disk_quota && ShardFiles::file_bytes(size) > a->disk_quota)))
    return PutResult::OverQuota;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg_.space_wait_ms);
  while (!dram_fits_locked(a, need)) {
    if (stopping_) return PutResult::ShuttingDown;
    if (make_room_locked(a, need)) continue;
    if (!wait) return PutResult::NoSpace;
    // Everything resident is still being flushed: wait for the shards.
    ++space_waiters_;
    flush_cv_.notify_one();
    bool timed_out = space_cv_.wait_until(lk, deadline) == std::cv_status::timeout;
    --space_waiters_;
    if (timed_out && !dram_fits_locked(a, need) && !make_room_locked(a, need)) return PutResult::NoSpace;
  }
  if (stopping_) return PutResult::ShuttingDown;
  dram_add_locked(a, need);
  *out = Reservation(this, need, a);
  return PutResult::Ok;
}

void Store::publish_locked(const std::string& key, ValuePtr v, uint32_t crc, uint64_t charged, uint64_t* version) {
  auto it = index_.find(key);
  if (it != index_.end()) {
    Entry* old = it->second.get();
    // The old shard goes first, so a crash before the new one lands reads
    // as a miss, not as the previous value. Queued even when the old value
    // is not known to be on disk: its write may be in flight right now.
    if (files_) flush_queue_.push_back({false, key, old->version, mono_ms()});
    drop_entry_locked(old);
  }
  auto e = std::make_unique<Entry>();
  e->key = key;
  e->size = v->size;
  e->crc = crc;
  e->written_ns = now_ns();
  e->version = ++next_version_;
  e->dram = std::move(v);
  e->charged = charged;
  e->account = account_locked(key);
  if (e->account) ++e->account->keys;
  *version = e->version;
  if (files_) {
    e->dirty = true;
    dirty_bytes_ += e->size;
    flush_queue_.push_back({true, key, e->version, mono_ms()});
    flush_cv_.notify_one();
  } else {
    lru_touch_locked(e.get());
  }
  index_[key] = std::move(e);
}

PutResult Store::commit(const std::string& key, ValuePtr v, uint32_t crc, Reservation&& r,
                        const std::function<bool()>& wanted) {
  std::unique_lock<std::mutex> lk(mu_);
  if (stopping_ || (wanted && !wanted())) return PutResult::ShuttingDown;
  uint64_t version = 0;
  uint64_t charged = r.bytes_;
  r.store_ = nullptr;  // the entry owns the charge now
  publish_locked(key, std::move(v), crc, charged, &version);
  // A put waiting for DRAM may find room now: a value published without a
  // disk tier is clean at once, so it can be evicted for the waiter (with a
  // disk tier the flusher wakes waiters once it is written).
  if (space_waiters_ > 0 && !files_) space_cv_.notify_all();
  if (cfg_.fsync != FsyncMode::Always || !files_) return PutResult::Ok;
  durable_results_[version] = -1;  // pending: the flusher reports here
  for (;;) {
    int r = durable_results_[version];
    if (r >= 0) {
      durable_results_.erase(version);
      return r ? PutResult::Ok : PutResult::Internal;
    }
    auto it = index_.find(key);
    if (it == index_.end() || it->second->version != version) {  // superseded before its write
      durable_results_.erase(version);
      return PutResult::Ok;
    }
    if (stopping_ && flush_queue_.empty()) {
      durable_results_.erase(version);
      return PutResult::Internal;
    }
    durable_cv_.wait(lk);
  }
}

ValuePtr Store::get(const std::string& key, uint32_t* crc) {
  uint64_t version;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    Entry* e = it->second.get();
    if (e->dram) {
      if (e->in_lru) lru_touch_locked(e);
      if (e->on_disk) disk_touch_locked(key);
      *crc = e->crc;
      return e->dram;
    }
    if (!e->on_disk || !files_) return nullptr;
    version = e->version;
    ++disk_reads_;
  }
  bool corrupt = false;
  uint32_t file_crc = 0;
  ValuePtr v = files_->read(key, &corrupt, &file_crc);
  std::lock_guard<std::mutex> lk(mu_);
  auto it = index_.find(key);
  bool same = it != index_.end() && it->second->version == version && !it->second->dram;
  // The record must be the value the index describes (its size and CRC, from
  // the snapshot or the scan): else the index would promise one size and the
  // read bring another. A mismatch is dropped like any corrupt record.
  if (v && same && (v->size != it->second->size || file_crc != it->second->crc)) {
    v.reset();
    corrupt = true;
  }
  if (!v) {
    if (corrupt) {
      ++corrupt_;
      log(LogLevel::Warning, "shard record failed verification and was dropped (key length " +
                                 std::to_string(key.size()) + "); serving a miss");
      if (same) {
        it->second->on_disk = false;
        drop_entry_locked(it->second.get());
        flush_queue_.push_back({false, key, version, mono_ms()});
        flush_cv_.notify_one();
      }
    }
    return nullptr;
  }
  *crc = file_crc;
  if (same) {
    // Promote into DRAM if it fits after evicting colder clean values.
    Entry* e = it->second.get();
    uint64_t need = charge(v->size, key.size());
    // (A value over its tenant's quota, lowered since it was written, is served from its shard.)
    bool could_fit = !(e->account && e->account->dram_quota && need > e->account->dram_quota);
    while (could_fit && !dram_fits_locked(e->account, need) && make_room_locked(e->account, need)) {
    }
    auto again = index_.find(key);  // eviction may not touch e (not in the LRU), but be explicit
    if (again != index_.end() && again->second.get() == e && dram_fits_locked(e->account, need)) {
      e->dram = v;
      e->charged = need;
      dram_add_locked(e->account, need);
      lru_touch_locked(e);
    }
    disk_touch_locked(key);
  }
  return v;
}

bool Store::info(const std::string& key, ObjectInfo* out) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  const Entry* e = it->second.get();
  out->size = e->size;
  out->crc = e->crc;
  out->written_ns = e->written_ns;
  out->in_dram = e->dram != nullptr;
  out->on_disk = e->on_disk;
  return true;
}

bool Store::remove(const std::string& key) {
  std::unique_lock<std::mutex> lk(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  Entry* e = it->second.get();
  // Always queued with a disk tier: a write of this key may be in flight
  // on the flusher, and its file must not outlive the delete.
  uint64_t waiter = 0;
  if (files_) {
    // With fsync=always a delete, like a put, is acknowledged once durable:
    // a crash must not bring the value back.
    if (cfg_.fsync == FsyncMode::Always) durable_removals_[waiter = ++next_removal_] = -1;
    flush_queue_.push_back({false, key, e->version, mono_ms(), waiter});
    flush_cv_.notify_one();
  }
  drop_entry_locked(e);
  space_cv_.notify_all();
  while (waiter) {
    if (durable_removals_[waiter] >= 0 || (stopping_ && flush_queue_.empty())) {
      durable_removals_.erase(waiter);
      break;
    }
    durable_cv_.wait(lk);
  }
  return true;
}

void Store::flusher_main() {
  // Write-back runs at idle priority: on a busy node it yields the cores to
  // the request path, and DRAM back-pressure (reserve) bounds how far behind
  // it may fall. On an idle node it drains at full disk speed.
  // With fsync=always, whenever a put waits for DRAM, and whenever the oldest
  // queued task (write or removal) is older than two sync intervals (so acknowledged data
  // stays within the interval of its shard), it runs at normal priority.
  // Leaving SCHED_IDLE needs CAP_SYS_NICE or a permissive RLIMIT_NICE, so
  // idle mode is used only where a probe thread shows the way back works.
  static const bool can_idle = [] {
    bool ok = false;
    std::thread([&ok] {
      struct sched_param sp {};
      ok = pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) == 0 &&
           pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp) == 0;
    }).join();
    return ok;
  }();
  bool idle_now = false;
  auto set_idle = [&](bool idle) {
    if (!can_idle || idle == idle_now) return;
    struct sched_param sp {};
    if (pthread_setschedparam(pthread_self(), idle ? SCHED_IDLE : SCHED_OTHER, &sp) == 0) idle_now = idle;
  };
  bool unsynced = false;
  uint64_t last_sync = mono_ms();
  const bool interval = cfg_.fsync == FsyncMode::Interval;
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    if (flush_queue_.empty()) {
      if (stopping_) break;
      int wait_ms = interval && unsynced ? std::max(1, cfg_.fsync_interval_ms) : 1000;
      flush_cv_.wait_for(lk, std::chrono::milliseconds(wait_ms));
    }
    uint64_t now = mono_ms();
    set_idle(!stopping_ && cfg_.fsync != FsyncMode::Always && space_waiters_ == 0 &&
             (flush_queue_.empty() ||
              now - flush_queue_.front().queued_ms < 2 * static_cast<uint64_t>(cfg_.fsync_interval_ms)));
    expire_parts_locked(now);
    if (files_ && unsynced && (now - last_sync >= static_cast<uint64_t>(cfg_.fsync_interval_ms) ||
                               (stopping_ && flush_queue_.empty()))) {
      lk.unlock();
      files_->sync_all();
      lk.lock();
      unsynced = false;
      last_sync = mono_ms();
    }
    if (flush_queue_.empty()) continue;
    FlushTask t = std::move(flush_queue_.front());
    flush_queue_.pop_front();
    flush_one(t);
    unsynced = unsynced || interval;  // writes and removals alike
  }
  lk.unlock();
  // A clean stop leaves every record durable, whatever the fsync mode.
  if (files_) files_->sync_all();
}

// Called with mu_ held (through the flusher's lock); drops it around I/O.
void Store::flush_one(const FlushTask& t) {
  std::unique_lock<std::mutex> lk(mu_, std::adopt_lock);
  struct Release {  // hand the lock back to the caller's unique_lock
    std::unique_lock<std::mutex>& l;
    ~Release() { l.release(); }
  } release{lk};

  if (!t.write) {
    // Earlier writes of the key have all run (one flusher, in queue order):
    // with no record there is nothing to remove.
    if (auto d = disk_.find(t.key); d != disk_.end()) {
      disk_erase_locked(d);
      lk.unlock();
      files_->remove(t.key, cfg_.fsync == FsyncMode::Always);
      lk.lock();
    }
    if (auto w = durable_removals_.find(t.waiter); t.waiter && w != durable_removals_.end()) {
      w->second = 1;
      durable_cv_.notify_all();
    }
    return;
  }

  auto it = index_.find(t.key);
  if (it == index_.end() || it->second->version != t.version || !it->second->dirty) return;
  Entry* e = it->second.get();
  ValuePtr v = e->dram;
  const uint32_t crc = e->crc;
  const uint64_t written_ns = e->written_ns;
  const uint64_t need = ShardFiles::file_bytes(v->size);
  auto old = disk_.find(t.key);
  if (old != disk_.end()) disk_erase_locked(old);  // replaced by the rename below
  std::vector<std::string> victims;
  Account* a = e->account;
  // Over its disk quota, a tenant's own oldest records go first.
  auto over_quota = [&] {
    return a && a->disk_quota && a->disk_used + need > a->disk_quota && !a->disk_lru.empty();
  };
  while (over_quota() || (disk_used_ + need > cfg_.disk_capacity && !disk_lru_.empty())) {
    std::string victim = over_quota() ? a->disk_lru.back() : disk_lru_.back();
    disk_evict_locked(victim);
    auto ve = index_.find(victim);
    if (ve != index_.end() && ve->second->on_disk) {
      ve->second->on_disk = false;
      if (!ve->second->dram && !ve->second->dirty) {
        ++evictions_dropped_;
        drop_entry_locked(ve->second.get());
      }
    }
    victims.push_back(std::move(victim));
  }
  disk_insert_locked(t.key, need);  // reserved before the write so capacity holds throughout
  lk.unlock();

  for (const std::string& k : victims) files_->remove(k);
  bool ok = true;
  try {
    files_->write(t.key, *v, crc, written_ns, cfg_.fsync == FsyncMode::Always);
  } catch (const std::exception& ex) {
    ok = false;
    log(LogLevel::Error, std::string("shard write failed; the value stays in DRAM only: ") + ex.what());
  }

  lk.lock();
  if (!ok) {
    ++flush_errors_;
    auto d = disk_.find(t.key);
    if (d != disk_.end()) disk_erase_locked(d);
    files_->remove(t.key);
  } else {
    ++flushed_;
  }
  auto now_it = index_.find(t.key);
  if (now_it != index_.end() && now_it->second->version == t.version) {
    Entry* cur = now_it->second.get();
    cur->dirty = false;
    dirty_bytes_ -= cur->size;
    cur->on_disk = ok;
    if (!ok && cfg_.fsync == FsyncMode::Always)
      drop_entry_locked(cur);  // its put is answered with an error: do not leave it visible
    else
      lru_touch_locked(cur);
  }
  auto waiter = durable_results_.find(t.version);
  if (waiter != durable_results_.end()) waiter->second = ok ? 1 : 0;
  space_cv_.notify_all();
  durable_cv_.notify_all();
}

namespace {

// True if [start, end) intersects any range of `m` (offset -> end).
bool overlaps(const std::map<uint64_t, uint64_t>& m, uint64_t start, uint64_t end) {
  auto it = m.upper_bound(start);
  if (it != m.begin() && std::prev(it)->second > start) return true;
  return it != m.end() && it->first < end;
}

// True if [start, end) lies inside one range of `m` (ranges are merged).
bool covered(const std::map<uint64_t, uint64_t>& m, uint64_t start, uint64_t end) {
  auto it = m.upper_bound(start);
  if (it == m.begin()) return false;
  --it;
  return it->first <= start && it->second >= end;
}

}  // namespace

PutResult Store::part_begin(const std::string& key, uint64_t upload_id, uint64_t total, uint64_t offset,
                            uint64_t len, PartTarget* target) {
  if (total > max_value_bytes()) return PutResult::TooLarge;
  if (offset > total || len > total - offset) return PutResult::BadRange;
  auto id = std::make_pair(key, upload_id);
  auto claim = [&](Part& p) -> PutResult {
    if (p.total != total || p.aborted) return PutResult::BadRange;
    p.last_active_ms = mono_ms();
    target->buffer = p.buffer;
    target->total = total;
    if (len && covered(p.ranges, offset, offset + len)) {
      target->duplicate = true;
      return PutResult::Ok;
    }
    if (len && (overlaps(p.ranges, offset, offset + len) || overlaps(p.inflight, offset, offset + len)))
      return PutResult::BadRange;
    if (len) p.inflight[offset] = offset + len;
    ++p.writers;
    return PutResult::Ok;
  };
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = parts_.find(id);
    if (it != parts_.end()) return claim(it->second);
  }
  Reservation r;
  PutResult pr = reserve(total, key, &r);
  if (pr != PutResult::Ok) return pr;
  ValuePtr buf = make_value(total);
  std::lock_guard<std::mutex> lk(mu_);
  Part& p = parts_[id];
  if (!p.buffer) {  // else another connection created it meanwhile; `r` is released after the lock
    p.buffer = std::move(buf);
    p.total = total;
    p.reserved = r.bytes_;
    p.account = r.account_;
    r.store_ = nullptr;
  }
  return claim(p);
}

PutResult Store::part_done(const std::string& key, uint64_t upload_id, uint64_t offset, uint64_t len, bool ok,
                           bool* complete, uint64_t* remaining) {
  *complete = false;
  Part done;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = parts_.find({key, upload_id});
    if (it == parts_.end()) return PutResult::BadRange;
    Part& p = it->second;
    if (len) p.inflight.erase(offset);
    --p.writers;
    p.last_active_ms = mono_ms();
    if (p.aborted) {
      if (p.writers == 0) {
        dram_sub_locked(p.account, p.reserved);
        parts_.erase(it);
        space_cv_.notify_all();
      }
      return PutResult::BadRange;
    }
    if (ok && len) {
      // Merge [offset, offset+len) into the received ranges (it overlaps none).
      uint64_t start = offset, end = offset + len;
      auto next = p.ranges.lower_bound(start);
      if (next != p.ranges.end() && next->first == end) {
        end = next->second;
        p.ranges.erase(next);
      }
      auto r = p.ranges.lower_bound(start);
      if (r != p.ranges.begin() && std::prev(r)->second == start) {
        auto prev = std::prev(r);
        prev->second = end;
      } else {
        p.ranges[start] = end;
      }
      p.received += len;
    }
    *remaining = p.total - p.received;
    if (!ok) return PutResult::Internal;  // the caller answers checksum mismatch; never completes here
    if (p.received != p.total || p.writers != 0) return PutResult::Ok;
    done = std::move(p);
    parts_.erase(it);
  }
  *complete = true;
  *remaining = 0;
  // Every part was verified against its own checksum on arrival; this one
  // covers the assembled object from here on (shards, reads).
  uint32_t crc = crc32c(0, done.buffer->data, done.buffer->size);
  return commit(key, std::move(done.buffer), crc, Reservation(this, done.reserved, done.account));
}

bool Store::part_abort(const std::string& key, uint64_t upload_id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = parts_.find({key, upload_id});
  if (it == parts_.end() || it->second.aborted) return false;
  if (it->second.writers > 0) {
    it->second.aborted = true;  // the last writer in flight releases it
    return true;
  }
  dram_sub_locked(it->second.account, it->second.reserved);
  parts_.erase(it);
  space_cv_.notify_all();
  return true;
}

void Store::expire_parts_locked(uint64_t now_ms) {
  for (auto it = parts_.begin(); it != parts_.end();) {
    Part& p = it->second;
    if (p.writers == 0 && now_ms - p.last_active_ms > static_cast<uint64_t>(cfg_.part_idle_timeout_ms)) {
      dram_sub_locked(p.account, p.reserved);
      space_cv_.notify_all();
      log(LogLevel::Warning, "dropped an incomplete multi-part write after " +
                                 std::to_string(cfg_.part_idle_timeout_ms) + " ms without progress");
      it = parts_.erase(it);
    } else {
      ++it;
    }
  }
}

StoreStats Store::stats() {
  std::lock_guard<std::mutex> lk(mu_);
  StoreStats s;
  s.keys = index_.size();
  for (const auto& kv : index_) s.dram_keys += kv.second->dram ? 1 : 0;
  s.disk_keys = disk_.size();
  s.dram_used = dram_used_;
  s.disk_used = disk_used_;
  s.dirty_bytes = dirty_bytes_;
  s.dram_capacity = cfg_.dram_capacity;
  s.disk_capacity = cfg_.disk_capacity;
  s.evictions_dram = evictions_dram_;
  s.evictions_disk = evictions_disk_;
  s.evictions_dropped = evictions_dropped_;
  s.corrupt_detected = corrupt_;
  s.flush_errors = flush_errors_;
  s.flushed = flushed_;
  s.pending_parts = parts_.size();
  s.disk_reads = disk_reads_;
  if (arena_) {
    s.arena_bytes = arena_->size();
    s.arena_free = arena_->free_bytes();
    s.arena_prefaulted = arena_->prefaulted_bytes();
  }
  return s;
}

std::vector<Store::Listed> Store::list(const std::string& prefix, const std::string& after, size_t max,
                                       bool* truncated) {
  std::vector<Listed> out;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (const auto& kv : index_) {
      const std::string& k = kv.first;
      if (k.compare(0, prefix.size(), prefix) != 0 || k <= after) continue;
      const Entry& e = *kv.second;
      out.push_back(Listed{k, e.size, e.crc, e.written_ns});
    }
  }
  auto by_key = [](const Listed& a, const Listed& b) { return a.key < b.key; };
  *truncated = out.size() > max;
  if (*truncated) {
    std::nth_element(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(max), out.end(), by_key);
    out.resize(max);
  }
  std::sort(out.begin(), out.end(), by_key);
  return out;
}

void Store::set_quota(const std::string& tenant, uint64_t dram_quota, uint64_t disk_quota) {
  std::lock_guard<std::mutex> lk(mu_);
  Account* a = account_locked(std::string(1, kTenantMark) + tenant + "/");
  a->dram_quota = dram_quota;
  a->disk_quota = disk_quota;
}

std::vector<AccountStats> Store::account_stats() {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<AccountStats> out;
  out.reserve(accounts_.size());
  for (const auto& kv : accounts_) {
    const Account& a = *kv.second;
    out.push_back(AccountStats{a.tenant, a.dram_quota, a.disk_quota, a.dram_used, a.disk_used, a.keys,
                               a.evictions_dram, a.evictions_disk});
  }
  return out;
}

}  // namespace memkv
