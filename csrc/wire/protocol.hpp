// The MemKV wire protocol, version 1: constants, op codes, statuses and the
// fixed frame header. docs/protocol.md is the prose description of this file;
// the node and the client both build on it, nothing else defines the format.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>

namespace memkv::wire {

// Integers are copied in host order throughout: the format is little-endian
// because every supported host is (x86-64, aarch64). Refuse to build otherwise.
static_assert(std::endian::native == std::endian::little, "MemKV's wire and disk formats are little-endian");

constexpr uint16_t kVersion = 1;
constexpr uint16_t kMinVersion = 1;

constexpr size_t kMaxKeyLen = 512;
constexpr size_t kMaxMetaLen = 16u << 20;            // keys + sizes of one frame
constexpr uint64_t kMaxDataLen = 1ull << 40;         // bulk bytes of one frame
constexpr uint32_t kMaxBatchItems = 65536;
constexpr uint64_t kMissing = ~0ull;                 // "no such object" in size arrays

// Handshake messages (fixed size, before any session key exists).
// Magics read as ASCII on the wire ("MKVH" is the bytes 4D 4B 56 48).
constexpr uint32_t kHelloMagic = 0x48564B4D;        // "MKVH"  client -> node
constexpr uint32_t kServerHelloMagic = 0x53564B4D;  // "MKVS"  node -> client
constexpr uint32_t kAuthMagic = 0x41564B4D;         // "MKVA"  client -> node
constexpr uint32_t kAuthResultMagic = 0x52564B4D;   // "MKVR"  node -> client
constexpr uint32_t kFrameMagic = 0x46564B4D;        // "MKVF"
constexpr size_t kNonceLen = 32;
constexpr size_t kMaxTenantLen = 23;
// A key as the node stores it: a tenant's keys carry 0x00 name '/' in front (§2).
constexpr size_t kMaxStoredKeyLen = 1 + kMaxTenantLen + 1 + kMaxKeyLen;
constexpr size_t kNodeIdLen = 16;

#pragma pack(push, 1)
struct ClientHello {  // 64 bytes
  uint32_t magic;
  uint16_t min_version;
  uint16_t max_version;
  uint8_t nonce[kNonceLen];
  uint8_t tenant_len;  // 0: the cluster key; else the tenant whose key the client proves
  char tenant[23];     // its name, tenant_len bytes; the rest 0
};
struct ServerHello {  // 128 bytes
  uint32_t magic;
  uint16_t version;  // chosen; 0 when none of the client's range is spoken
  uint16_t status;
  uint8_t nonce[kNonceLen];
  uint8_t node_id[kNodeIdLen];
  uint64_t max_value_bytes;  // largest value this node accepts
  uint8_t proof[32];  // HMAC(K, "memkv/1 server" | ClientHello | ServerHello bytes before `proof`)
  uint8_t reserved[32];
};
struct ClientAuth {  // 64 bytes
  uint32_t magic;
  uint32_t reserved0;
  uint8_t proof[32];  // HMAC(K, "memkv/1 client" | client nonce | server nonce)
  uint8_t reserved[24];
};
struct AuthResult {  // 16 bytes
  uint32_t magic;
  uint16_t status;
  uint8_t reserved[10];
};
// Every frame after the handshake, in both directions.
struct FrameHeader {  // 64 bytes
  uint32_t magic;
  uint8_t op;
  uint8_t flags;
  uint16_t status;    // responses only
  uint64_t seq;       // per direction, 1, 2, 3 ... (replay and reorder guard)
  uint32_t meta_len;  // metadata after the header, covered by the MAC
  uint32_t reserved;
  uint64_t data_len;  // bulk bytes after the metadata (values: each followed by its seal in requests;
                      // responses carry value CRCs in their metadata)
  uint8_t mac[32];    // HMAC(direction key, header[0:32] | metadata)
};
#pragma pack(pop)
static_assert(sizeof(ClientHello) == 64);
static_assert(sizeof(ServerHello) == 128);
static_assert(sizeof(ClientAuth) == 64);
static_assert(sizeof(AuthResult) == 16);
static_assert(sizeof(FrameHeader) == 64);
constexpr size_t kMacCovered = 32;  // header bytes before `mac`

// In frames that carry values (PUT, BATCH_PUT, PUT_PART) every value is
// followed by its seal: its CRC-32C and an HMAC binding that CRC to the frame
// (its header MAC) and the value's index. The writer checksums each piece
// just before sending it (while it is hot in cache), and the node can verify
// and publish each value as soon as its seal arrives.
constexpr size_t kSealLen = 4 + 32;

enum Op : uint8_t {
  kPut = 0x01,
  kGet = 0x02,
  kExists = 0x03,
  kDelete = 0x04,
  kStat = 0x05,
  kPing = 0x06,
  kBatchPut = 0x10,
  kBatchGet = 0x11,
  kBatchExists = 0x12,
  kBatchDelete = 0x13,
  kPutPart = 0x20,
  kAbortPart = 0x21,
  kRdmaConnect = 0x30,  // sets up this connection's RDMA queue pair (docs/protocol.md §11)
};

// FrameHeader.flags
constexpr uint8_t kFlagRdma = 0x01;  // value bytes move by RDMA; the metadata ends with a transport section
// In a put item's `nseg` (transport section): the value lies in memory the
// client cannot read (GPU memory, GPUDirect), so its seal carries CRC 0 and
// the node's own CRC of the landed bytes is the value's.
constexpr uint32_t kSegNodeChecksum = 1u << 31;

enum Status : uint16_t {
  kOk = 0,
  kNotFound = 1,
  kBadRequest = 2,
  kAuthFailed = 3,
  kTooLarge = 4,
  kChecksumMismatch = 5,
  kNoSpace = 6,
  kInternal = 7,
  kVersionUnsupported = 8,
  kBadRange = 9,
  kShuttingDown = 10,
  kKeyInvalid = 11,
  kRdmaUnavailable = 12,  // the node serves no RDMA (reply metadata: why)
  kOverQuota = 13,        // the value can never fit in its tenant's DRAM or disk quota
  kNodeBusy = 14,         // ServerHello only: the node holds its maximum of connections
};

inline const char* op_name(uint8_t op) {
  switch (op) {
    case kPut: return "put";
    case kGet: return "get";
    case kExists: return "exists";
    case kDelete: return "delete";
    case kStat: return "stat";
    case kPing: return "ping";
    case kBatchPut: return "batch_put";
    case kBatchGet: return "batch_get";
    case kBatchExists: return "batch_exists";
    case kBatchDelete: return "batch_delete";
    case kPutPart: return "put_part";
    case kAbortPart: return "abort_part";
    case kRdmaConnect: return "rdma_connect";
    default: return "unknown";
  }
}

inline const char* status_name(uint16_t s) {
  switch (s) {
    case kOk: return "ok";
    case kNotFound: return "not found";
    case kBadRequest: return "bad request";
    case kAuthFailed: return "authentication failed";
    case kTooLarge: return "value too large";
    case kChecksumMismatch: return "checksum mismatch";
    case kNoSpace: return "no space";
    case kInternal: return "internal error";
    case kVersionUnsupported: return "protocol version unsupported";
    case kBadRange: return "range outside the object";
    case kShuttingDown: return "node shutting down";
    case kKeyInvalid: return "invalid key";
    case kRdmaUnavailable: return "RDMA unavailable on the node";
    case kOverQuota: return "value larger than the tenant's quota (raise dram_quota/disk_quota in the node's tenants file)";
    case kNodeBusy: return "the node holds its maximum of connections (raise --max-connections on the node)";
    default: return "unknown status";
  }
}

}  // namespace memkv::wire
