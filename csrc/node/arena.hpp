// The node's value memory: one mapping of --dram-capacity bytes, reserved at
// start and pre-faulted in the background (huge pages where the kernel
// allows), carved into page-granular extents. Large values live here, so a
// put of a new key lands in memory that is already faulted in (no page
// faults or kernel zeroing on the hot path), and the node registers the
// whole arena with its RDMA devices once.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>

namespace memkv {

class Arena {
 public:
  // Reserves `capacity` bytes (rounded up to whole pages). Throws when the
  // address space cannot be reserved.
  explicit Arena(uint64_t capacity);
  ~Arena();
  Arena(const Arena&) = delete;

  // Faults the whole arena in on a background thread at idle priority.
  void prefault_in_background();
  // `bytes` (a multiple of the page size) of arena memory, or nullptr when
  // no free extent is large enough (the caller allocates elsewhere).
  void* alloc(uint64_t bytes);
  void free(void* p, uint64_t bytes);

  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }
  bool contains(const void* p) const {
    auto* b = static_cast<const uint8_t*>(p);
    return b >= base_ && b < base_ + size_;
  }
  uint64_t prefaulted_bytes() const { return prefaulted_.load(std::memory_order_relaxed); }
  uint64_t free_bytes() const;

 private:
  void insert_free_locked(uint64_t off, uint64_t len);
  void erase_free_locked(std::map<uint64_t, uint64_t>::iterator it);

  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  mutable std::mutex mu_;
  std::map<uint64_t, uint64_t> free_by_off_;       // offset -> length
  std::multimap<uint64_t, uint64_t> free_by_len_;  // length -> offset (best fit)
  uint64_t free_total_ = 0;
  std::thread prefaulter_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> prefaulted_{0};
};

}  // namespace memkv
