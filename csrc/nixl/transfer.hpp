// A NIXL transfer as MemKV ops: the descriptor lists of one request grouped
// into objects (gather lists for WRITE, scatter lists for READ), and the
// executor threads that run posted requests through the native client, so
// postXfer returns at once and checkXfer only polls.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../client/client.hpp"
#include "abi.hpp"

namespace memkv::nixl {

// What registerMem returns for an OBJ_SEG registration: the object's key.
class ObjectMD : public BackendMD {
 public:
  ObjectMD(std::string key, uint64_t dev_id, uint64_t len) : BackendMD(true), key(std::move(key)), dev_id(dev_id), len(len) {}
  const std::string key;
  const uint64_t dev_id;
  const uint64_t len;  // registered length (2^64-1 for "unbounded")
};

// DRAM_SEG and VRAM_SEG registrations: DRAM is also registered with the
// RDMA rails (when there are any), so transfers from and to it are zero-copy.
class LocalMD : public BackendMD {
 public:
  LocalMD() : BackendMD(true) {}
  void* rdma_registered = nullptr;  // base address given to Client::register_memory
};

class Transfer : public RequestHandle {
 public:
  XferOp op = kRead;
  bool device = false;                // local descriptors are VRAM_SEG: staged through pinned memory
  bool host_staged = false;           // DRAM staged the same way (MEMKV_STAGE_DRAM=1, tests)
  bool gpudirect = false;             // VRAM (or MEMKV_GPUDIRECT_STAND_IN DRAM): tried GPUDirect first
  int gpu = 0;                        // VRAM: the GPU that owns the local buffers
  std::vector<std::string> keys;
  std::vector<SegmentList> segments;  // per key, sorted by object offset
  std::vector<uint64_t> needed;       // READ: the object must hold at least this many bytes

  // Builds the plan; on bad input returns an error status and sets *why.
  static Status plan(const XferOp& op, const MetaDescList& local, const MetaDescList& remote, Transfer* out,
                     std::string* why);

  std::atomic<int> status{kErrNotPosted};
  std::mutex mu;
  std::condition_variable done_cv;
  bool running = false;  // guarded by mu
};

class StagingPool;
class CudaRuntime;

class Executor {
 public:
  Executor(Client* client, int threads, uint64_t staging_bytes, uint64_t staging_slot_bytes);
  ~Executor();
  // Starts t (status IN_PROG); false if it is still running.
  bool submit(Transfer* t);
  // Blocks until t is not running.
  static void wait(Transfer* t);

 private:
  void run(Transfer* t);
  // One batch of whole objects through the client; the transfer's status.
  // Memory::Gpu: items that cannot go GPUDirect are not failures; their
  // indexes are added to *needs_host.
  Status move(XferOp op, const std::vector<std::string>& keys, const std::vector<SegmentList>& segments,
              const std::vector<uint64_t>& needed, Memory memory = Memory::Host,
              std::vector<size_t>* needs_host = nullptr);
  Status move_staged(Transfer* t);
  // GPUDirect where every buffer is registered GPU memory and the node's
  // connection is RDMA; the rest through move_staged (or, stand-in, as DRAM).
  Status move_gpudirect(Transfer* t);
  StagingPool* staging(CudaRuntime* cuda, std::string* error);
  void worker();

  Client* client_;
  uint64_t staging_bytes_, staging_slot_bytes_;
  std::mutex staging_mu_;
  std::unique_ptr<StagingPool> staging_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Transfer*> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace memkv::nixl
