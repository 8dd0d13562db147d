// Key -> primary server, by rendezvous (highest-random-weight) hashing over
// the configured server names. Every client, replica and plugin computes the
// same answer from the same server list, in any order; adding or removing a
// server moves only the keys that belong to it. The hash is specified in
// docs/protocol.md so other implementations can agree.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace memkv {

class Router {
 public:
  explicit Router(std::vector<std::string> servers);
  size_t route(std::string_view key) const;
  size_t size() const { return servers_.size(); }
  const std::string& server(size_t i) const { return servers_[i]; }

  static uint64_t hash(std::string_view bytes);  // FNV-1a 64 + a splitmix64 finaliser

 private:
  std::vector<std::string> servers_;
  std::vector<uint64_t> seeds_;
};

}  // namespace memkv
