#include "tenants.hpp"

#include "../common/hmac.hpp"
#include "store.hpp"

namespace memkv {

bool tenant_name_ok(std::string_view name) {
  if (name.empty() || name.size() > wire::kMaxTenantLen) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-';
    if (!ok) return false;
  }
  return true;
}

void TenantTable::replace(const std::vector<TenantSpec>& specs, std::vector<std::string>* added,
                          std::vector<std::string>* revoked) {
  std::lock_guard<std::mutex> lk(mu_);
  std::unordered_map<std::string, std::shared_ptr<Tenant>> next;
  for (const TenantSpec& spec : specs) {
    auto old = by_name_.find(spec.name);
    if (old != by_name_.end() && equal_const_time(old->second->key.data(), spec.key.data(), spec.key.size()) &&
        old->second->s3_access_key == spec.s3_access_key && old->second->s3_secret_key == spec.s3_secret_key) {
      next[spec.name] = old->second;  // unchanged: its sessions stay
      continue;
    }
    auto t = std::make_shared<Tenant>();
    t->name = spec.name;
    t->key = spec.key;
    t->s3_access_key = spec.s3_access_key;
    t->s3_secret_key = spec.s3_secret_key;
    t->prefix = std::string(1, kTenantMark) + spec.name + "/";
    auto& c = counters_[spec.name];
    if (!c) c = std::make_unique<TenantCounters>();
    t->counters = c.get();
    next[spec.name] = std::move(t);
    if (old == by_name_.end()) added->push_back(spec.name);
  }
  for (auto& kv : by_name_) {
    auto now = next.find(kv.first);
    if (now == next.end() || now->second != kv.second) {
      kv.second->revoked = true;
      revoked->push_back(kv.first);
    }
  }
  by_name_ = std::move(next);
  by_access_key_.clear();
  for (auto& kv : by_name_)
    if (!kv.second->s3_access_key.empty()) by_access_key_[kv.second->s3_access_key] = kv.second;
}

std::shared_ptr<Tenant> TenantTable::find_by_access_key(const std::string& access_key) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = by_access_key_.find(access_key);
  return it == by_access_key_.end() ? nullptr : it->second;
}

std::shared_ptr<Tenant> TenantTable::find(std::string_view name) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : it->second;
}

std::vector<TenantCounterSnapshot> TenantTable::counters() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<TenantCounterSnapshot> out;
  for (const auto& kv : counters_) {
    const TenantCounters& c = *kv.second;
    out.push_back(TenantCounterSnapshot{kv.first, by_name_.count(kv.first) > 0, c.ops.load(), c.bytes_in.load(),
                                        c.bytes_out.load(), c.hits.load(), c.misses.load(), c.over_quota.load(),
                                        c.connections.load()});
  }
  return out;
}

}  // namespace memkv
