// The native MemKV client: routes each key to its primary node, keeps a
// connection pool per node, and runs batches grouped per node, pipelined over
// several connections in parallel. Values move straight between the caller's
// memory and the socket, with CRC-32C verified on every byte that arrives.
// Everything here runs without the GIL; the Python layer is a thin shell.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../common/bytes.hpp"
#include "pool.hpp"
#include "router.hpp"

namespace memkv {

struct ClientOptions {
  std::vector<ServerAddr> servers;
  wire::Key32 auth_key{};
  std::string tenant;  // whose key auth_key is ("" = the cluster key)
  int num_connections = 4;
  int connect_timeout_ms = 5000;
  int op_timeout_ms = 30000;
  transport::TransportOptions transport;
};

// Per-item outcomes of batch reads (non-negative values are sizes).
constexpr int64_t kItemMissing = -1;
constexpr int64_t kItemChecksum = -2;     // bytes failed verification: never report them as the value
                                          // (they may already sit in the caller's buffer)
constexpr int64_t kItemTooSmall = -3;     // the caller's buffer is smaller than the value
constexpr int64_t kItemUnavailable = -4;  // the node could not be reached in time
constexpr int64_t kItemError = -5;        // the node answered with an error status
constexpr int64_t kItemNeedsHost = -6;    // GPU memory that cannot go GPUDirect to its node: stage it
// Per-item status of batch writes/deletes: wire::Status, or these.
constexpr int kStatusUnavailable = 1000;
constexpr int kStatusNeedsHost = 1001;  // as kItemNeedsHost; nothing was sent for it

// Where a segment batch's caller memory lies. Gpu: every segment must lie in
// a register_device_memory registration and travel GPUDirect; items whose
// node connection cannot (TCP, or the memory is not registered) are not sent
// and come back as kStatusNeedsHost / kItemNeedsHost for the caller to stage.
enum class Memory { Host, Gpu };

struct ObjectStat {
  uint64_t size = 0;
  uint32_t crc = 0;
  bool in_dram = false, on_disk = false;
  uint64_t written_ns = 0;
};

class Client {
 public:
  explicit Client(ClientOptions opts);
  ~Client();
  Client(const Client&) = delete;

  size_t num_servers() const { return pools_.size(); }
  const ServerAddr& server(size_t i) const { return pools_[i]->addr(); }
  size_t route(std::string_view key) const { return router_.route(key); }

  void put(std::string_view key, const void* data, uint64_t len);
  // Size of the value (written to buf), or kItemMissing. Throws when the value
  // does not fit (the message gives its size) or fails verification.
  int64_t get_into(std::string_view key, void* buf, uint64_t cap);
  // Reads a value of unknown size into memory from `alloc(size)`.
  int64_t get_alloc(std::string_view key, const std::function<uint8_t*(uint64_t)>& alloc);
  int64_t exists(std::string_view key);
  bool remove(std::string_view key);
  bool stat(std::string_view key, ObjectStat* out);
  std::string ping(size_t server);  // the node's id, hex

  // Multi-part write (one object, many pieces, any order, any connection):
  // returns true when this part completed the object.
  bool put_part(std::string_view key, uint64_t upload_id, uint64_t total, uint64_t offset, const void* data,
                uint64_t len);
  void abort_part(std::string_view key, uint64_t upload_id);

  // Batches. `errors` receives one message per node that failed.
  void batch_put(const std::vector<std::string_view>& keys, const std::vector<const void*>& data,
                 const std::vector<uint64_t>& lens, std::vector<int>* status, std::vector<std::string>* errors);
  void batch_get_into(const std::vector<std::string_view>& keys, const std::vector<void*>& bufs,
                      const std::vector<uint64_t>& caps, std::vector<int64_t>* result,
                      std::vector<std::string>* errors);
  void batch_exists(const std::vector<std::string_view>& keys, std::vector<int64_t>* result,
                    std::vector<std::string>* errors);
  // Gather/scatter forms of the batches (the NIXL plugin's data path): values
  // go straight from/to the segments, with no staging copy. Segment lists
  // must be sorted by offset; writes must tile [0, total) (see check_tiling).
  void batch_put_segments(const std::vector<std::string_view>& keys, const std::vector<SegmentList>& segs,
                          std::vector<int>* status, std::vector<std::string>* errors, Memory memory = Memory::Host);
  // Only the span the segments cover is requested. result: the object's
  // size (which may be smaller than the span), or a negative kItem* code.
  void batch_get_segments(const std::vector<std::string_view>& keys, const std::vector<SegmentList>& segs,
                          std::vector<int64_t>* result, std::vector<std::string>* errors, Memory memory = Memory::Host);
  // Empty when the sorted segments tile [0, total) exactly; else why not.
  static std::string check_tiling(const SegmentList& segs, uint64_t* total);
  void batch_remove(const std::vector<std::string_view>& keys, std::vector<int>* status,
                    std::vector<std::string>* errors);

  // Registers [p, p + n) with the RDMA rails so transfers to and from it
  // are zero-copy (no-op over TCP). The memory must stay valid until
  // unregister_memory(p). Returns false when there is no RDMA to register with.
  bool register_memory(void* p, uint64_t n);
  bool unregister_memory(void* p);
  // Registers GPU memory for GPUDirect RDMA (the caller made its GPU
  // current). Returns how ("dmabuf", "peer-memory"), or "" without RDMA;
  // throws when the memory cannot be registered. unregister_memory undoes it.
  std::string register_device_memory(void* p, uint64_t n);
  // Whether [p, p + n) lies inside a registration (false over TCP).
  bool is_registered(const void* p, uint64_t n) const;
  // Whether it lies inside a GPU memory registration.
  bool is_device_registered(const void* p, uint64_t n) const;
  // "rdma" when this client has RDMA rails, else "tcp"; the device server i uses.
  std::string transport_name() const;
  std::string rail_device(size_t server) const { return transport_->rail_device(server); }
  transport::ClientTransport& transport() { return *transport_; }

  void close();

 private:
  struct Frame {
    size_t server;
    std::vector<uint32_t> items;
  };
  std::vector<Frame> plan(const std::vector<std::string_view>& keys, const std::vector<uint64_t>* lens) const;
  void execute(const std::vector<Frame>& frames, const std::function<void(transport::Connection&, const Frame&)>& run,
               const std::function<void(const Frame&)>& unavailable, std::vector<std::string>* errors);
  template <class Fn>
  auto with_connection(size_t server, Fn&& fn, bool retry_stale = true)
      -> decltype(fn(std::declval<transport::Connection&>()));
  void check_key(std::string_view key) const;
  int64_t get_common(std::string_view key, uint64_t limit, const transport::ReadTarget& target);
  // Sends a batch request naming the frame's keys (plus per_item fields);
  // with `targets`, a read whose items land there (*pending lands them).
  ByteReader keys_request(transport::Connection& c, uint8_t op, const Frame& f, const std::vector<std::string_view>& keys,
                          wire::FrameHeader* h, std::vector<uint8_t>* meta,
                          const std::function<void(ByteWriter&, uint32_t)>& per_item = nullptr,
                          const std::vector<transport::ReadTarget>* targets = nullptr,
                          std::unique_ptr<transport::PendingRead>* pending = nullptr);
  // The `unavailable` callback of execute(): marks every item of a frame.
  template <class T, class V>
  static std::function<void(const Frame&)> mark_all(std::vector<T>* out, V value) {
    return [out, value](const Frame& f) {
      for (uint32_t i : f.items) (*out)[i] = static_cast<T>(value);
    };
  }
  void recv_response(wire::Session& s, uint8_t op, wire::FrameHeader* h, std::vector<uint8_t>* meta);
  // Memory::Gpu: whether a frame's items can go GPUDirect on connection c.
  // Reads also need gap-free segments (the node writes one contiguous range).
  bool gpudirect_ok(const transport::Connection& c, const Frame& f, const std::vector<SegmentList>& segs,
                    bool read) const;

  ClientOptions opts_;
  Router router_;
  std::unique_ptr<transport::ClientTransport> transport_;
  std::vector<std::unique_ptr<ServerPool>> pools_;
};

}  // namespace memkv
