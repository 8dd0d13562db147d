// The client side of the RDMA transport. One RdmaClient per Client holds the
// rails (the devices of MEMKV_RDMA_DEVICES; server i uses rail i mod n), the
// memory the caller registered (NIXL registerMem, Client.register_memory),
// and the staging pool that unregistered buffers go through. Each pooled
// connection gets its own queue pair through connect(); the node then moves
// the bytes (it READs puts from, and WRITEs gets into, this memory), so the
// client posts no work and needs no progress thread.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "mover.hpp"
#include "rdma.hpp"

namespace memkv::transport {

#if MEMKV_WITH_VERBS

// Memory registered with every rail, found by address.
class Registrations {
 public:
  struct Entry {
    uint8_t* base = nullptr;
    uint64_t len = 0;
    bool device = false;  // GPU memory (GPUDirect): the host never reads or writes it
    std::vector<std::unique_ptr<rdma::MemoryRegion>> per_rail;
  };
  using EntryPtr = std::shared_ptr<const Entry>;
  void add(EntryPtr e);
  bool remove(const void* base);
  // The registration that holds all of [p, p + n), or null.
  EntryPtr find(const void* p, uint64_t n) const;
  uint64_t bytes() const;

 private:
  mutable std::shared_mutex mu_;
  std::map<uintptr_t, EntryPtr> by_base_;
  uint64_t bytes_ = 0;
};

// Pinned, registered slots that unregistered buffers are copied through.
// A request takes all the slots it needs at once (or waits), so two
// requests can never each hold part of what the other waits for.
class StagingPool {
 public:
  StagingPool(const std::vector<rdma::DevicePtr>& rails, uint64_t total_bytes, uint64_t slot_bytes);
  ~StagingPool();
  uint64_t slot_bytes() const { return slot_bytes_; }
  size_t slots() const { return n_slots_; }
  uint8_t* slot(size_t i) const { return base_ + i * slot_bytes_; }
  const rdma::MemoryRegion& region(size_t rail) const { return *mrs_[rail]; }
  // Takes n slots, waiting up to timeout_ms for them; throws when they do not free up.
  std::vector<size_t> take(size_t n, int timeout_ms);
  void give(const std::vector<size_t>& slots);
  uint64_t waits() const { return waits_.load(std::memory_order_relaxed); }

 private:
  uint8_t* base_ = nullptr;
  uint64_t total_ = 0, slot_bytes_ = 0;
  size_t n_slots_ = 0;
  std::vector<std::unique_ptr<rdma::MemoryRegion>> mrs_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<size_t> free_;
  std::atomic<uint64_t> waits_{0};
};

struct RdmaClientStats {
  uint64_t zero_copy_bytes = 0, staged_bytes = 0, temp_registered_bytes = 0, inline_frames = 0, staging_waits = 0;
  uint64_t registered_bytes = 0;
};

class RdmaClient {
 public:
  RdmaClient(const std::vector<std::string>& devices, uint64_t staging_bytes, uint64_t slot_bytes);
  size_t rails() const { return rails_.size(); }
  const rdma::DevicePtr& rail(size_t i) const { return rails_[i % rails_.size()]; }

  // Registers [p, p + n) with every rail for zero-copy transfers. The memory
  // must stay valid until unregister_memory.
  void register_memory(void* p, uint64_t n);
  // Registers GPU memory [p, p + n) with every rail (GPUDirect: dma-buf or
  // peer memory; the caller made its GPU current). Returns how ("dmabuf",
  // "peer-memory"); throws when it cannot be registered.
  std::string register_device_memory(void* p, uint64_t n);
  bool unregister_memory(void* p);
  Registrations::EntryPtr find(const void* p, uint64_t n) const { return regs_.find(p, n); }
  StagingPool& staging() { return staging_; }

  // Sets up a queue pair for this connection over its authenticated session
  // (RDMA_CONNECT). Returns null when the node offers no RDMA (why in *declined).
  std::unique_ptr<ClientMover> connect(wire::Session& s, size_t rail, int timeout_ms, std::string* declined);

  RdmaClientStats stats() const;
  void count(uint64_t zero_copy, uint64_t staged, uint64_t temp, bool inline_frame);

 private:
  std::vector<rdma::DevicePtr> rails_;
  Registrations regs_;
  StagingPool staging_;
  mutable std::mutex stats_mu_;
  RdmaClientStats stats_;
};

#else

class RdmaClient {};

#endif

}  // namespace memkv::transport
