#include "transfer.hpp"

#include <algorithm>
#include <unordered_map>

#include "../common/error.hpp"
#include "../common/log.hpp"

namespace memkv::nixl {

Status Transfer::plan(const XferOp& op, const MetaDescList& local, const MetaDescList& remote, Transfer* out,
                      std::string* why) {
  if (op != kRead && op != kWrite) {
    *why = "unknown transfer op " + std::to_string(op);
    return kErrInvalidParam;
  }
  if (local.type != kDram || remote.type != kObj) {
    *why = "MEMKV moves bytes between DRAM_SEG (local) and OBJ_SEG (remote) descriptors; got local type " +
           std::to_string(local.type) + ", remote type " + std::to_string(remote.type);
    return kErrNotSupported;
  }
  if (local.size() != remote.size()) {
    *why = "local and remote descriptor lists differ in length";
    return kErrInvalidParam;
  }
  out->op = op;
  out->keys.clear();
  out->segments.clear();
  out->needed.clear();
  std::unordered_map<const ObjectMD*, size_t> slot;
  std::unordered_map<std::string, size_t> by_key;
  for (size_t i = 0; i < local.size(); ++i) {
    const MetaDesc& l = local[i];
    const MetaDesc& r = remote[i];
    if (l.len != r.len) {
      *why = "descriptor " + std::to_string(i) + ": local length " + std::to_string(l.len) +
             " differs from remote length " + std::to_string(r.len);
      return kErrInvalidParam;
    }
    const auto* md = static_cast<const ObjectMD*>(r.metadata);
    if (!md) {
      *why = "descriptor " + std::to_string(i) + " has no MEMKV registration";
      return kErrInvalidParam;
    }
    auto s = slot.find(md);
    size_t k;
    if (s != slot.end()) {
      k = s->second;
    } else {
      // Two registrations of one key are one object.
      auto [it, fresh] = by_key.emplace(md->key, out->keys.size());
      if (fresh) {
        out->keys.push_back(md->key);
        out->segments.emplace_back();
        out->needed.push_back(0);
      }
      k = it->second;
      slot.emplace(md, k);
    }
    // On the OBJ side, addr is the byte offset inside the object.
    out->segments[k].push_back(Segment{r.addr, reinterpret_cast<void*>(l.addr), l.len});
    out->needed[k] = std::max<uint64_t>(out->needed[k], r.addr + r.len);
  }
  for (size_t k = 0; k < out->keys.size(); ++k) {
    auto& segs = out->segments[k];
    std::sort(segs.begin(), segs.end(), [](const Segment& a, const Segment& b) { return a.offset < b.offset; });
    if (op == kWrite) {
      // A WRITE stores whole objects: its descriptors for one object must
      // tile it from offset 0, so the object is complete when it appears.
      uint64_t total = 0;
      std::string gap = Client::check_tiling(segs, &total);
      if (!gap.empty()) {
        *why = "WRITE to object '" + out->keys[k] + "' has " + gap +
               ": a transfer must cover its objects from offset 0 without gaps or overlaps";
        return kErrInvalidParam;
      }
    } else {
      for (size_t j = 1; j < segs.size(); ++j)
        if (segs[j].offset < segs[j - 1].offset + segs[j - 1].len) {
          *why = "READ of object '" + out->keys[k] + "' has overlapping descriptors";
          return kErrInvalidParam;
        }
    }
  }
  return kSuccess;
}

Executor::Executor(Client* client, int threads) : client_(client) {
  for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { worker(); });
}

Executor::~Executor() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

bool Executor::submit(Transfer* t) {
  {
    std::lock_guard<std::mutex> lk(t->mu);
    if (t->running) return false;
    t->running = true;
    t->status = kInProg;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    queue_.push_back(t);
  }
  cv_.notify_one();
  return true;
}

void Executor::wait(Transfer* t) {
  std::unique_lock<std::mutex> lk(t->mu);
  t->done_cv.wait(lk, [t] { return !t->running; });
}

void Executor::worker() {
  for (;;) {
    Transfer* t;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything queued has run
      t = queue_.front();
      queue_.pop_front();
    }
    run(t);
  }
}

namespace {

std::string first_few(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < 3; ++i) s += (i ? ", '" : "'") + v[i] + "'";
  if (v.size() > 3) s += " and " + std::to_string(v.size() - 3) + " more";
  return s;
}

}  // namespace

void Executor::run(Transfer* t) {
  Status result = kSuccess;
  std::vector<std::string> errors;
  try {
    std::vector<std::string_view> keys(t->keys.begin(), t->keys.end());
    if (t->op == kWrite) {
      std::vector<int> st;
      client_->batch_put_segments(keys, t->segments, &st, &errors);
      std::vector<std::string> failed;
      for (size_t i = 0; i < st.size(); ++i)
        if (st[i] != 0) failed.push_back(t->keys[i]);
      if (!failed.empty()) {
        result = kErrBackend;
        log(LogLevel::Error, "MEMKV WRITE failed for " + std::to_string(failed.size()) + " object(s) " +
                                 first_few(failed) + (errors.empty() ? "" : ": " + errors.front()));
      }
    } else {
      std::vector<int64_t> res;
      client_->batch_get_segments(keys, t->segments, &res, &errors);
      std::vector<std::string> missing, short_objs, broken;
      for (size_t i = 0; i < res.size(); ++i) {
        if (res[i] == kItemMissing)
          missing.push_back(t->keys[i]);
        else if (res[i] >= 0 && static_cast<uint64_t>(res[i]) < t->needed[i])
          short_objs.push_back(t->keys[i] + "' (" + std::to_string(res[i]) + " bytes, transfer reads up to " +
                               std::to_string(t->needed[i]) + ")");
        else if (res[i] < 0)
          broken.push_back(t->keys[i]);
      }
      if (!missing.empty()) {
        result = kErrNotFound;
        log(LogLevel::Error, "MEMKV READ failed: object(s) " + first_few(missing) + " not found");
      }
      if (!short_objs.empty()) {
        result = kErrInvalidParam;
        log(LogLevel::Error, "MEMKV READ failed: object(s) " + first_few(short_objs) + " too small");
      }
      if (!broken.empty()) {
        result = kErrBackend;
        log(LogLevel::Error, "MEMKV READ failed for object(s) " + first_few(broken) +
                                 (errors.empty() ? " (checksum or node error)" : ": " + errors.front()));
      }
    }
  } catch (const std::exception& e) {
    result = kErrBackend;
    log(LogLevel::Error, std::string("MEMKV transfer failed: ") + e.what());
  }
  {
    std::lock_guard<std::mutex> lk(t->mu);
    t->status = result;
    t->running = false;
  }
  t->done_cv.notify_all();
}

}  // namespace memkv::nixl
