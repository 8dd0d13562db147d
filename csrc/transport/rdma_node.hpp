// The node side of the RDMA transport: the devices the node serves
// (--rdma-devices), its value memory registered with each of them for local
// access only (the node never exposes its memory to clients), and one queue
// pair per connection that asked for one. The node drives every transfer:
// it READs a put's value from the client's memory into its own, and WRITEs a
// get's bytes into the client's memory before sending the sealed reply.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../node/arena.hpp"

#include "mover.hpp"
#include "rdma.hpp"

namespace memkv::transport {

#if MEMKV_WITH_VERBS

class RdmaNode {
 public:
  // Opens every device; throws a Config error naming the one that fails.
  explicit RdmaNode(const std::vector<std::string>& devices);
  ~RdmaNode();
  // Registers the node's value arena with every device, for local access
  // only, on a background thread (pinning faults the arena in, which takes
  // a while for large tiers). Until it is done, transfers go through each
  // connection's registered bounce buffer.
  void add_region_async(std::shared_ptr<Arena> arena);
  // The registration holding node memory [p, p + n) on device d, or null.
  const rdma::MemoryRegion* local(size_t d, const void* p, uint64_t n) const;
  std::string devices() const;
  // Serves RDMA_CONNECT on session s (request metadata in `in`) and sends
  // the reply. Returns the connection's mover, or null when the queue pair
  // could not be set up (the client was told why).
  std::unique_ptr<NodeMover> accept(wire::Session& s, ByteReader& in, int timeout_ms);

 private:
  std::vector<rdma::DevicePtr> devices_;
  std::shared_ptr<Arena> arena_;                             // kept mapped while registered
  std::vector<std::unique_ptr<rdma::MemoryRegion>> arena_mrs_;  // [device], complete once arena_ready_
  std::atomic<bool> arena_ready_{false};
  std::thread registrar_;
};

#else

class RdmaNode {};

#endif

}  // namespace memkv::transport
