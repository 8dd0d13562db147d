// The node's data port: serves wire-protocol ops against the Store on the
// connections the ConnectionLoop accepts and authenticates (connections.hpp:
// event-driven while they wait, a worker thread while an op runs, so each
// value still moves straight between the socket and its DRAM buffer).
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "../s3/door.hpp"
#include "connections.hpp"
#include "../transport/mover.hpp"
#include "../transport/rdma_node.hpp"
#include "../wire/session.hpp"
#include "store.hpp"
#include "tenants.hpp"

namespace memkv {

struct NodeOptions {
  std::string host = "0.0.0.0";
  uint16_t port = 9900;
  wire::Key32 auth_key{};
  std::array<uint8_t, wire::kNodeIdLen> node_id{};
  StoreConfig store;
  int max_connections = 10000;
  int io_timeout_ms = 60000;  // a peer that stalls mid-frame this long is dropped
  std::vector<std::string> rdma_devices;  // served to clients that ask (RDMA_CONNECT); empty: TCP only
  int s3_port = -1;  // the S3 door's port (0: any free one); -1: no door
};

constexpr int kOpSlots = 0x31;

struct NodeStats {
  StoreStats store;
  uint64_t ops[kOpSlots] = {};
  uint64_t op_errors[kOpSlots] = {};
  uint64_t bytes_in = 0, bytes_out = 0, hits = 0, misses = 0;
  uint64_t connections = 0, connections_total = 0, auth_failures = 0, protocol_errors = 0, rejected_connections = 0;
  uint64_t stalled_connections = 0;  // dropped mid-message after the I/O timeout
  uint64_t worker_threads = 0;
  uint64_t checksum_failures = 0;
  uint64_t rdma_connections = 0, rdma_bytes_in = 0, rdma_bytes_out = 0;
  uint64_t rdma_node_checksummed = 0;  // GPUDirect puts whose CRC the node computed
  s3::DoorStats s3;
};

class Node final : private ConnectionProtocol {
 public:
  explicit Node(NodeOptions opts);
  ~Node();
  Node(const Node&) = delete;

  // Opens the store (rebuilding the index), binds the port, starts accepting.
  void start();
  // Stops accepting, lets in-flight ops finish, flushes every acknowledged
  // value to its shard and syncs. Idempotent.
  void stop();
  uint16_t port() const { return bound_port_; }
  int s3_port() const { return door_ ? door_->port() : -1; }
  NodeStats stats();
  Store& store() { return *store_; }
  // Installs the tenant table (and each tenant's quotas); callable while
  // serving (a reload). See tenants.hpp for what it revokes.
  void set_tenants(const std::vector<TenantSpec>& specs, std::vector<std::string>* added,
                   std::vector<std::string>* revoked);
  std::vector<TenantCounterSnapshot> tenant_counters() const { return tenants_.counters(); }

 private:
  // The movers of one connection: TCP always; RDMA once the client set up
  // its queue pair. Each frame's flags say which one carries its values.
  struct Movers {
    transport::TcpNodeMover tcp;
    std::unique_ptr<transport::NodeMover> rdma;
  };
  // What a connection is bound to after its handshake.
  struct ConnState {
    Movers movers;
    std::shared_ptr<Tenant> tenant;  // null: the cluster key
    TenantCounters* counters() const { return tenant ? tenant->counters : nullptr; }
    // The stored key for a key the client named ("" if it is not a valid key).
    std::string scoped(std::string_view key) const;
  };
  struct NodeConnection : Connection {
    ConnState state;
  };
  // ConnectionProtocol: what the loop asks of the node.
  std::unique_ptr<Connection> make_connection() override { return std::make_unique<NodeConnection>(); }
  bool key_for(Connection& c, std::string_view tenant, wire::Key32* key) override;
  const std::array<uint8_t, wire::kNodeIdLen>& node_id() const override { return opts_.node_id; }
  uint64_t max_value_bytes() const override { return store_->max_value_bytes(); }
  void authenticated(Connection& c) override;
  void serve(Connection& c, const wire::FrameHeader& h, const std::vector<uint8_t>& meta) override {
    handle(*c.session, static_cast<NodeConnection&>(c).state, h, meta);
  }
  void handle(wire::Session& s, ConnState& conn, const wire::FrameHeader& h, const std::vector<uint8_t>& meta);
  // A value of a request on its way in: its DRAM reservation and buffer,
  // and whether its transfer has started (RDMA). Abandoned unfinished, it
  // stops the transfer before the buffer is freed.
  struct Incoming {
    uint16_t status = 0;  // wire status; not ok: refused, drain it
    bool deferred = false;  // prepared ahead without room yet: prepare it again in turn
    Reservation reservation;
    ValuePtr value;
    transport::NodeMover* started = nullptr;
    Incoming() = default;
    Incoming(Incoming&& o) noexcept
        : status(o.status), deferred(o.deferred), reservation(std::move(o.reservation)), value(std::move(o.value)),
          started(o.started) {
      o.started = nullptr;
    }
    ~Incoming() {
      if (started) started->abandon();
    }
  };
  // Value `index` of frame h: checks the key, reserves DRAM, allocates its
  // buffer and (RDMA) starts moving it there. `ahead` (prepared while the
  // previous value is still coming in): never wait for DRAM, defer instead.
  Incoming prepare_value(wire::Session& s, transport::NodeMover& m, uint32_t index, const std::string& key,
                         uint64_t size, bool ahead = false);
  // Receives it, verifies its seal and publishes it; returns the wire status.
  uint16_t finish_value(wire::Session& s, transport::NodeMover& m, const wire::FrameHeader& h, uint32_t index,
                        const std::string& key, uint64_t size, Incoming in, TenantCounters* counters);

  NodeOptions opts_;
  std::unique_ptr<Store> store_;
  TenantTable tenants_;
  std::unique_ptr<transport::RdmaNode> rdma_;
  std::unique_ptr<s3::Door> door_;
  std::unique_ptr<ConnectionLoop> loop_;
  int listen_fd_ = -1;
  uint16_t bound_port_ = 0;
  bool started_ = false, stopped_ = false;
  std::mutex stop_mu_;

  std::atomic<uint64_t> ops_[kOpSlots] = {};
  std::atomic<uint64_t> op_errors_[kOpSlots] = {};
  std::atomic<uint64_t> bytes_in_{0}, bytes_out_{0}, hits_{0}, misses_{0}, checksum_failures_{0},
      rdma_connections_{0}, rdma_bytes_in_{0}, rdma_bytes_out_{0}, node_checksummed_{0};
};

}  // namespace memkv
