// VRAM_SEG support without linking CUDA: the CUDA runtime is found at run
// time (dlopen), and device memory moves through pinned host staging memory
// sized by MEMKV_STAGING_SIZE_MB and handed out in MEMKV_STAGING_SLOT_MB slots.
// On a machine without CUDA (or without a device) none of this is active and
// the backend does not advertise VRAM_SEG.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace memkv::nixl {

class CudaRuntime {
 public:
  // The process-wide runtime, or nullptr when no usable CUDA device exists.
  static CudaRuntime* get();
  // Stand-in with host memcpy/malloc, used when MEMKV_STAGE_DRAM=1 routes
  // DRAM_SEG transfers through the staging path, so the slicing and grouping
  // logic is exercised on machines without a GPU (tests only).
  static CudaRuntime* host_stand_in();
  static bool stage_dram();
  // True when libcudart is already loaded in this process (e.g. by torch),
  // without initialising CUDA: what the plugin advertises before a backend exists.
  static bool loaded();
  bool set_device(int device, std::string* error);
  // Synchronous copy between any host/device pointers (unified addressing).
  bool copy(void* dst, const void* src, size_t n, std::string* error);
  void* alloc_pinned(size_t n);
  void free_pinned(void* p);

 private:
  CudaRuntime() = default;
  using GetCount = int (*)(int*);
  using Memcpy = int (*)(void*, const void*, size_t, int);
  using HostAlloc = int (*)(void**, size_t, unsigned);
  using FreeHost = int (*)(void*);
  using ErrorString = const char* (*)(int);
  using SetDevice = int (*)(int);
  SetDevice set_device_ = nullptr;
  Memcpy memcpy_ = nullptr;
  HostAlloc host_alloc_ = nullptr;
  FreeHost free_host_ = nullptr;
  ErrorString error_string_ = nullptr;
  friend struct CudaLoader;
};

// Fixed-size pinned slots; a transfer takes the slots it needs for a group
// of objects and gives them back when that group is done.
class StagingPool {
 public:
  StagingPool(CudaRuntime* cuda, uint64_t total_bytes, uint64_t slot_bytes);
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;

  uint64_t slot_bytes() const { return slot_; }
  size_t slots() const { return base_.size(); }
  // Blocks until n slots are free (n <= slots()).
  std::vector<uint8_t*> acquire(size_t n);
  void release(const std::vector<uint8_t*>& slots);

 private:
  CudaRuntime* cuda_;
  uint64_t slot_;
  std::vector<uint8_t*> base_;
  std::vector<uint8_t*> free_;
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace memkv::nixl
