// The node's tenants: who may connect with which key, and what each did.
// A session that proves a tenant's key is bound to that tenant for its life:
// every key it names is stored under the tenant's prefix (store.hpp), so it
// cannot name another tenant's keys at all. Sessions proving the cluster key
// keep the cluster keyspace, as without tenants.
//
// A reload replaces the table. A tenant it removes, or whose credentials it
// changes, is revoked: its open sessions are closed at their next op, and
// their reconnects fail the handshake. S3 requests are each authenticated
// against the table as it is when they arrive.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "../wire/protocol.hpp"
#include "../wire/session.hpp"

namespace memkv {

struct TenantSpec {
  std::string name;
  wire::Key32 key{};
  std::string s3_access_key, s3_secret_key;  // the S3 door's credentials
  uint64_t dram_quota = 0, disk_quota = 0;  // 0: no limit
};

// Per tenant, for the node's life (reloads keep them).
struct TenantCounters {
  std::atomic<uint64_t> ops{0}, bytes_in{0}, bytes_out{0}, hits{0}, misses{0}, over_quota{0}, connections{0};
};

struct TenantCounterSnapshot {
  std::string name;
  bool active = false;  // in the current table
  uint64_t ops = 0, bytes_in = 0, bytes_out = 0, hits = 0, misses = 0, over_quota = 0, connections = 0;
};

struct Tenant {
  std::string name;
  wire::Key32 key{};
  std::string s3_access_key, s3_secret_key;
  std::string prefix;  // kTenantMark name '/': prepended to every key the tenant names
  std::atomic<bool> revoked{false};
  TenantCounters* counters = nullptr;
};

// Whether `name` can name a tenant: 1..kMaxTenantLen of [A-Za-z0-9._-].
bool tenant_name_ok(std::string_view name);

class TenantTable {
 public:
  // Installs `specs` (names already validated and unique). Reports the names
  // added and the ones revoked (removed, or given a new key).
  void replace(const std::vector<TenantSpec>& specs, std::vector<std::string>* added,
               std::vector<std::string>* revoked);
  std::shared_ptr<Tenant> find(std::string_view name) const;
  std::shared_ptr<Tenant> find_by_access_key(const std::string& access_key) const;
  std::vector<TenantCounterSnapshot> counters() const;

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Tenant>> by_name_;
  std::unordered_map<std::string, std::shared_ptr<Tenant>> by_access_key_;
  std::unordered_map<std::string, std::unique_ptr<TenantCounters>> counters_;
};

}  // namespace memkv
