// Little-endian encoding of frame metadata. The reader bounds-checks every
// field so a malformed frame becomes a protocol error, never an overread.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "error.hpp"

namespace memkv {

class ByteWriter {
 public:
  void u8(uint8_t v) { buf_.push_back(v); }
  void u16(uint16_t v) { put(&v, 2); }
  void u32(uint32_t v) { put(&v, 4); }
  void u64(uint64_t v) { put(&v, 8); }
  void bytes(const void* p, size_t n) { put(p, n); }
  // Keys travel as u16 length + bytes.
  void key(std::string_view k) {
    u16(static_cast<uint16_t>(k.size()));
    put(k.data(), k.size());
  }
  const std::vector<uint8_t>& data() const { return buf_; }
  std::vector<uint8_t>& data() { return buf_; }
  size_t size() const { return buf_.size(); }
  void clear() { buf_.clear(); }
  void reserve(size_t n) { buf_.reserve(n); }

 private:
  void put(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  std::vector<uint8_t> buf_;
};

class ByteReader {
 public:
  ByteReader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  uint8_t u8() { return get<uint8_t>(); }
  uint16_t u16() { return get<uint16_t>(); }
  uint32_t u32() { return get<uint32_t>(); }
  uint64_t u64() { return get<uint64_t>(); }
  std::string_view key() {
    uint16_t n = u16();
    need(n);
    std::string_view k(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return k;
  }
  const uint8_t* raw(size_t n) {
    need(n);
    const uint8_t* r = p_;
    p_ += n;
    return r;
  }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }
  void expect_end() const {
    if (p_ != end_) fail(ErrorKind::Protocol, "frame metadata has trailing bytes");
  }

 private:
  void need(size_t n) const {
    if (static_cast<size_t>(end_ - p_) < n) fail(ErrorKind::Protocol, "frame metadata is truncated");
  }
  template <class T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }
  const uint8_t* p_;
  const uint8_t* end_;
};

}  // namespace memkv
