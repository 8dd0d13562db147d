// Which mover each new client connection gets (MEMKV_TRANSPORT): `tcp`
// always TCP; `rdma` an RDMA queue pair or a loud error; `auto` RDMA to the
// nodes that offer it when a local device is configured and opens, TCP (with
// one log line per node) otherwise.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "mover.hpp"
#include "rdma_client.hpp"

namespace memkv::transport {

enum class Mode { Tcp, Rdma, Auto };

struct TransportOptions {
  Mode mode = Mode::Tcp;
  std::vector<std::string> rdma_devices;  // rails, in order
  uint64_t staging_bytes = 256ull << 20;
  uint64_t staging_slot_bytes = 16ull << 20;
};

// An authenticated connection and the mover its values travel by.
struct Connection {
  std::unique_ptr<wire::Session> session;
  std::unique_ptr<ClientMover> mover;
};

class ClientTransport {
 public:
  explicit ClientTransport(const TransportOptions& opts);
  ~ClientTransport();
  // Gives a new connection to server `index` (`name` in messages) its mover.
  std::unique_ptr<ClientMover> attach(wire::Session& s, size_t index, const std::string& name, int timeout_ms);
  // The RDMA side, or null when every connection is TCP.
  RdmaClient* rdma() const { return rdma_.get(); }
  // The device server `index` uses ("" without RDMA).
  std::string rail_device(size_t index) const;

 private:
  Mode mode_;
  std::unique_ptr<RdmaClient> rdma_;
  std::mutex mu_;
  std::set<size_t> tcp_logged_;
};

}  // namespace memkv::transport
