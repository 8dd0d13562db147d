// An immutable value held in the DRAM tier. Large values are page-aligned
// and padded to whole pages so the shard writer can hand them to O_DIRECT
// as they are, and live in the node's arena (pre-faulted, RDMA-registered)
// when it has room; small ones are allocated exactly to keep the tier dense.
#pragma once
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace memkv {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kAlignedFrom = 64 * 1024;

inline uint64_t round_up_page(uint64_t n) { return (n + kPage - 1) & ~(kPage - 1); }

// Recycles large page-aligned buffers. A fresh 4 MiB allocation costs ~1000
// page faults and a kernel zero-fill on first touch, about as much as
// receiving the value; KV blocks come in few sizes, so exact-size free lists
// make steady-state puts touch only warm memory. Bounded by `limit` bytes.
class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool* p = new BufferPool();  // never destroyed: Values may outlive statics
    return *p;
  }
  void* take(uint64_t alloc) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = free_.find(alloc);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= alloc;
        return p;
      }
    }
    // MAP_POPULATE faults the whole buffer in one go (far cheaper than a
    // fault per page while the value streams in).
    void* p = mmap(nullptr, alloc, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;
  }
  void give(void* p, uint64_t alloc) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (cached_ + alloc <= limit_) {
        free_[alloc].push_back(p);
        cached_ += alloc;
        return;
      }
    }
    munmap(p, alloc);
  }

 private:
  std::mutex mu_;
  std::unordered_map<uint64_t, std::vector<void*>> free_;
  uint64_t cached_ = 0;
  static constexpr uint64_t limit_ = 256ull << 20;
};

class Arena;

struct Value {
  uint8_t* data = nullptr;
  uint64_t size = 0;
  uint64_t alloc = 0;  // bytes actually allocated (what the DRAM tier accounts)
  bool page_aligned = false;
  std::shared_ptr<Arena> arena;  // set when data lives in the arena

  Value() = default;
  Value(const Value&) = delete;
  ~Value();

  static uint64_t alloc_size(uint64_t size) { return size >= kAlignedFrom ? round_up_page(size) : (size ? size : 1); }

  // `arena` (may be null) is tried first for large values.
  static std::shared_ptr<Value> make(uint64_t size, const std::shared_ptr<Arena>& arena = nullptr);
};
using ValuePtr = std::shared_ptr<Value>;

}  // namespace memkv

#include "arena.hpp"

namespace memkv {

inline Value::~Value() {
  if (arena)
    arena->free(data, alloc);
  else if (page_aligned)
    BufferPool::instance().give(data, alloc);
  else
    std::free(data);
}

inline std::shared_ptr<Value> Value::make(uint64_t size, const std::shared_ptr<Arena>& arena) {
  auto v = std::make_shared<Value>();
  v->size = size;
  v->alloc = alloc_size(size);
  if (size >= kAlignedFrom) {
    if (arena && (v->data = static_cast<uint8_t*>(arena->alloc(v->alloc))))
      v->arena = arena;
    else  // no arena, or no extent left that fits: fresh (recycled) pages
      v->data = static_cast<uint8_t*>(BufferPool::instance().take(v->alloc));
    v->page_aligned = true;
    // The padding reaches the disk: never let it carry stale heap bytes.
    std::memset(v->data + size, 0, v->alloc - size);
  } else {
    v->data = static_cast<uint8_t*>(std::malloc(v->alloc));
    if (!v->data) throw std::bad_alloc();
  }
  return v;
}

}  // namespace memkv
