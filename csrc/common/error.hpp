// One exception type for the native core; `kind` tells the Python layer which
// MemKV exception to raise, the message says what happened and what to do.
#pragma once
#include <stdexcept>
#include <string>

namespace memkv {

enum class ErrorKind {
  Config,      // bad option or argument
  Auth,        // key mismatch during the handshake
  Protocol,    // a frame broke the protocol
  Connection,  // refused, reset, closed or timed out
  Checksum,    // end-to-end checksum mismatch
  KeyTooLong,  // empty key or longer than the wire limit
  Server,      // the node answered with an error status
  Internal,
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& msg) : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void fail(ErrorKind kind, const std::string& msg) { throw Error(kind, msg); }

}  // namespace memkv
