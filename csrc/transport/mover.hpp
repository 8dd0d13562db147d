// The transport seam: how the value bytes of one request move. The wire
// session (handshake, MAC'd headers and metadata, sequence numbers, seals)
// is the same for every transport; a mover only decides where value bytes
// travel. TCP streams them inside the frame after its metadata; RDMA lets
// the node READ them from, or WRITE them into, the client's registered
// memory, described in a transport section appended to the request's
// metadata (flag kFlagRdma, docs/protocol.md §11).
//
// The client side (ClientMover) and the node side (NodeMover) each have a
// TCP and an RDMA implementation; the client and the server call only these
// interfaces.
#pragma once
#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../common/bytes.hpp"
#include "../wire/session.hpp"

namespace memkv {

// A piece of an object in the caller's memory: object bytes
// [offset, offset + len) live at ptr. Writes gather an object from segments
// that tile [0, total) exactly; reads scatter an object's bytes into
// segments (sorted, non-overlapping, any subset).
struct Segment {
  uint64_t offset = 0;
  void* ptr = nullptr;
  uint64_t len = 0;
};
using SegmentList = std::vector<Segment>;

namespace transport {

// Where one item of a read lands: the reply brings object bytes starting at
// `lo` (the start of the requested range), scattered into `segs` by their
// object offsets. With no segments, `alloc(size, len)` gives the
// destination once the reply names the object's size (reads of unknown size).
struct ReadTarget {
  uint64_t lo = 0;
  const SegmentList* segs = nullptr;
  std::function<uint8_t*(uint64_t size, uint64_t len)> alloc;
};

// A read request that was sent: lands each item's bytes once the reply's
// metadata has been read. Holds whatever the transport needed (staging
// memory, temporary registrations) until it is destroyed.
class PendingRead {
 public:
  virtual ~PendingRead() = default;
  // data_len the reply must carry when its items bring `value_bytes` in all.
  virtual uint64_t reply_data_len(uint64_t value_bytes) const = 0;
  // Places item k's `len` bytes (object size `size`) into its target and
  // returns their CRC-32C. Items are landed in order.
  virtual uint32_t land(wire::Session& s, size_t k, uint64_t size, uint64_t len, int timeout_ms) = 0;
  // False when item k landed in GPU memory the host cannot read: land()
  // could not checksum it (the RDMA link's own CRC covered those bytes).
  virtual bool verifies(size_t) const { return true; }
};

// A value-carrying request that was sent: keeps the memory the node reads
// from valid until the reply has been received.
class PendingWrite {
 public:
  virtual ~PendingWrite() = default;
};

class ClientMover {
 public:
  virtual ~ClientMover() = default;
  virtual const char* name() const = 0;
  // False once the connection's transport failed (its queue pair is in the
  // error state): the connection must not go back to the pool.
  virtual bool usable() const { return true; }
  // Whether values may lie in registered GPU memory (GPUDirect): only a
  // mover that never touches value bytes on the host.
  virtual bool carries_device_memory() const { return false; }
  // Sends a request carrying values (PUT, BATCH_PUT, PUT_PART): values[i]
  // lists value i's pieces in order.
  virtual std::unique_ptr<PendingWrite> send_values(wire::Session& s, uint8_t op, std::vector<uint8_t> meta,
                                                    const std::vector<std::vector<struct iovec>>& values,
                                                    int timeout_ms) = 0;
  // Sends a read request (GET, BATCH_GET) whose items land in `targets`
  // (which must outlive the returned PendingRead).
  virtual std::unique_ptr<PendingRead> send_read(wire::Session& s, uint8_t op, std::vector<uint8_t> meta,
                                                 const std::vector<ReadTarget>& targets, int timeout_ms) = 0;
};

// TCP: value bytes ride inside the frame.
class TcpClientMover : public ClientMover {
 public:
  const char* name() const override { return "tcp"; }
  std::unique_ptr<PendingWrite> send_values(wire::Session& s, uint8_t op, std::vector<uint8_t> meta,
                                            const std::vector<std::vector<struct iovec>>& values,
                                            int timeout_ms) override;
  std::unique_ptr<PendingRead> send_read(wire::Session& s, uint8_t op, std::vector<uint8_t> meta,
                                         const std::vector<ReadTarget>& targets, int timeout_ms) override;
};

// Receives n streamed bytes into their targets' segments, skipping bytes
// that fall between segments; the TCP read path, also used by RDMA for reads
// it sends inline.
uint32_t land_streamed(wire::Session& s, const ReadTarget& t, uint64_t size, uint64_t len, int timeout_ms);

// The node side of one connection.
class NodeMover {
 public:
  virtual ~NodeMover() = default;
  // Reads the request's transport section (after the op's own metadata)
  // for `items` items; `reads` tells a read request from a write.
  virtual void begin(ByteReader& in, uint32_t items, bool reads) = 0;
  // The data_len a value-carrying request must have for `items` values of
  // `value_bytes` in all (each value is followed by its seal either way).
  virtual uint64_t request_data_len(uint64_t value_bytes, uint32_t items) const = 0;
  // Whether values can be started ahead of the one being received
  // (RDMA: the next value's READs overlap this one's checksum and commit).
  virtual bool pipelined() const { return false; }
  // Starts moving item i's value into dst; receive() finishes it.
  virtual void start_receive(wire::Session&, uint32_t, uint8_t*, uint64_t, int) {}
  // A started item will not be received (the request failed): stop every
  // transfer into our memory before that memory is reused.
  virtual void abandon() {}
  // Moves item i's value (size bytes) into dst (or finishes what
  // start_receive began); returns its CRC-32C.
  virtual uint32_t receive(wire::Session& s, uint32_t i, uint8_t* dst, uint64_t size, int timeout_ms) = 0;
  // True when the client could not checksum put item i (GPUDirect): the CRC
  // receive() computed is the value's, and the seal carries 0.
  virtual bool checksummed_here(uint32_t) const { return false; }
  // Drops item i's value (the node refused it).
  virtual void skip(wire::Session& s, uint32_t i, uint64_t size, int timeout_ms) = 0;
  // Sends a reply whose item k brings the bytes values[k] (possibly empty).
  virtual void reply(wire::Session& s, uint8_t op, uint16_t status, const std::vector<uint8_t>& meta,
                     const std::vector<struct iovec>& values, int timeout_ms) = 0;
};

class TcpNodeMover : public NodeMover {
 public:
  void begin(ByteReader&, uint32_t, bool) override {}
  uint64_t request_data_len(uint64_t value_bytes, uint32_t items) const override;
  uint32_t receive(wire::Session& s, uint32_t i, uint8_t* dst, uint64_t size, int timeout_ms) override;
  void skip(wire::Session& s, uint32_t i, uint64_t size, int timeout_ms) override;
  void reply(wire::Session& s, uint8_t op, uint16_t status, const std::vector<uint8_t>& meta,
             const std::vector<struct iovec>& values, int timeout_ms) override;
};

// Receives and drops n bytes of a frame's data section.
void drain(wire::Session& s, uint64_t n, int timeout_ms);

}  // namespace transport
}  // namespace memkv
