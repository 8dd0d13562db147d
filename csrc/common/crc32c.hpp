// CRC-32C (Castagnoli): the end-to-end checksum carried with every value on
// the wire and stored with it on disk. Standard parameters (iSCSI, ext4):
// reflected, init 0xFFFFFFFF, final xor 0xFFFFFFFF; crc32c("123456789") ==
// 0xE3069283.
#pragma once
#include <cstddef>
#include <cstdint>

namespace memkv {

// Extends `crc` (0 for a fresh checksum) over `len` bytes. Chaining calls over
// consecutive pieces gives the checksum of the concatenation.
uint32_t crc32c(uint32_t crc, const void* data, size_t len) noexcept;

// Copies len bytes from src to dst and extends `crc` over them, a cache-sized
// piece at a time so each piece is checksummed while still hot.
uint32_t crc32c_copy(uint32_t crc, void* dst, const void* src, size_t len) noexcept;

// Name of the implementation picked for this CPU (for logs and benchmarks).
const char* crc32c_impl() noexcept;

}  // namespace memkv
