// Authenticated connections to one node, reused across ops and threads, at
// most `size` at a time (MEMKV_NUM_CONNECTIONS). Each new connection gets its
// mover (TCP, or its own RDMA queue pair) from the client's transport. A
// connection that saw any error is closed rather than returned: its framing
// state is unknown.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../transport/client_transport.hpp"
#include "../wire/session.hpp"

namespace memkv {

struct ServerAddr {
  std::string name;  // as configured: "host:port" (the routing identity)
  std::string host;
  uint16_t port = 0;
};

class ServerPool {
 public:
  // `tenant`: whose key `key` is ("" = the cluster key).
  ServerPool(ServerAddr addr, size_t index, const wire::Key32& key, std::string tenant, int size,
             int connect_timeout_ms, int op_timeout_ms, transport::ClientTransport* transport);
  ~ServerPool();

  struct Lease {
    transport::Connection conn;
    bool reused = false;  // came from the idle list (may have gone stale)
  };
  Lease acquire();
  void release(Lease&& lease, bool healthy);
  void close_idle();

  const ServerAddr& addr() const { return addr_; }
  uint64_t max_value_bytes() const { return max_value_bytes_; }
  uint64_t connects() const { return connects_; }

 private:
  ServerAddr addr_;
  size_t index_;
  wire::Key32 key_;
  std::string tenant_;
  int size_;
  int connect_timeout_ms_;
  int op_timeout_ms_;
  std::mutex mu_;
  std::condition_variable cv_;
  transport::ClientTransport* transport_;
  std::vector<transport::Connection> idle_;
  int in_use_ = 0;
  uint64_t max_value_bytes_ = 0;
  uint64_t connects_ = 0;
};

}  // namespace memkv
