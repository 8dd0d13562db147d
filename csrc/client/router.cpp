#include "router.hpp"

namespace memkv {
namespace {

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

uint64_t Router::hash(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return mix64(h);
}

Router::Router(std::vector<std::string> servers) : servers_(std::move(servers)) {
  seeds_.reserve(servers_.size());
  for (const std::string& s : servers_) seeds_.push_back(hash(s));
}

size_t Router::route(std::string_view key) const {
  const uint64_t k = hash(key);
  size_t best = 0;
  uint64_t best_w = 0;
  for (size_t i = 0; i < seeds_.size(); ++i) {
    uint64_t w = mix64(k ^ seeds_[i]);
    if (i == 0 || w > best_w || (w == best_w && servers_[i] < servers_[best])) {
      best = i;
      best_w = w;
    }
  }
  return best;
}

}  // namespace memkv
