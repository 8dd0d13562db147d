// The node side of the RDMA transport: the devices the node serves
// (--rdma-devices), its value memory registered with each of them for local
// access only (the node never exposes its memory to clients), and one queue
// pair per connection that asked for one. The node drives every transfer:
// it READs a put's value from the client's memory into its own, and WRITEs a
// get's bytes into the client's memory before sending the sealed reply.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mover.hpp"
#include "rdma.hpp"

namespace memkv::transport {

#if MEMKV_WITH_VERBS

class RdmaNode {
 public:
  // Opens every device; throws a Config error naming the one that fails.
  explicit RdmaNode(const std::vector<std::string>& devices);
  // Registers node memory (before serving starts) with every device.
  void add_region(void* base, uint64_t len);
  std::string devices() const;
  // Serves RDMA_CONNECT on session s (request metadata in `in`) and sends
  // the reply. Returns the connection's mover, or null when the queue pair
  // could not be set up (the client was told why).
  std::unique_ptr<NodeMover> accept(wire::Session& s, ByteReader& in, int timeout_ms);

 private:
  std::vector<rdma::DevicePtr> devices_;
  std::vector<std::vector<std::unique_ptr<rdma::MemoryRegion>>> regions_;  // [device][region]
};

#else

class RdmaNode {};

#endif

}  // namespace memkv::transport
