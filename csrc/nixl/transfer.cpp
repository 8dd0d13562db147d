#include "transfer.hpp"

#include <algorithm>
#include <unordered_map>

#include "../common/error.hpp"
#include "../common/log.hpp"
#include "../transport/device_memory.hpp"
#include "cuda_staging.hpp"

namespace memkv::nixl {

Status Transfer::plan(const XferOp& op, const MetaDescList& local, const MetaDescList& remote, Transfer* out,
                      std::string* why) {
  if (op != kRead && op != kWrite) {
    *why = "unknown transfer op " + std::to_string(op);
    return kErrInvalidParam;
  }
  bool device_ok = local.type == kVram && CudaRuntime::get();
  if ((local.type != kDram && !device_ok) || remote.type != kObj) {
    *why = "MEMKV moves bytes between DRAM_SEG (or, with CUDA, VRAM_SEG) local descriptors and OBJ_SEG remote "
           "ones; got local type " + std::to_string(local.type) + ", remote type " + std::to_string(remote.type);
    return kErrNotSupported;
  }
  out->host_staged = local.type == kDram && CudaRuntime::stage_dram();
  out->gpu = local.size() ? static_cast<int>(local[0].dev_id) : 0;
  if (local.type == kVram)
    for (size_t i = 1; i < local.size(); ++i)
      if (static_cast<int>(local[i].dev_id) != out->gpu) {
        *why = "one VRAM transfer must use buffers of a single GPU (descriptors name GPUs " +
               std::to_string(out->gpu) + " and " + std::to_string(local[i].dev_id) + ")";
        return kErrInvalidParam;
      }
  out->device = local.type == kVram || out->host_staged;
  out->gpudirect = local.type == kVram || (local.type == kDram && rdma::gpudirect_stand_in());
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

Executor::Executor(Client* client, int threads, uint64_t staging_bytes, uint64_t staging_slot_bytes)
    : client_(client), staging_bytes_(staging_bytes), staging_slot_bytes_(staging_slot_bytes) {
  try {
    for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { worker(); });
  } catch (...) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();  // never leave a joinable thread behind (std::terminate)
    throw;
  }
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

Status Executor::move(XferOp op, const std::vector<std::string>& key_list, const std::vector<SegmentList>& segments,
                      const std::vector<uint64_t>& needed, Memory memory, std::vector<size_t>* needs_host) {
  std::vector<std::string> errors;
  std::vector<std::string_view> keys(key_list.begin(), key_list.end());
  Status result = kSuccess;
  if (op == kWrite) {
    std::vector<int> st;
    client_->batch_put_segments(keys, segments, &st, &errors, memory);
    std::vector<std::string> failed;
    for (size_t i = 0; i < st.size(); ++i)
      if (st[i] == kStatusNeedsHost && needs_host)
        needs_host->push_back(i);
      else if (st[i] != 0)
        failed.push_back(key_list[i]);
    if (!failed.empty()) {
      result = kErrBackend;
      log(LogLevel::Error, "MEMKV WRITE failed for " + std::to_string(failed.size()) + " object(s) " +
                               first_few(failed) + (errors.empty() ? "" : ": " + errors.front()));
    }
    return result;
  }
  std::vector<int64_t> res;
  client_->batch_get_segments(keys, segments, &res, &errors, memory);
  std::vector<std::string> missing, short_objs, broken;
  for (size_t i = 0; i < res.size(); ++i) {
    if (res[i] == kItemNeedsHost && needs_host)
      needs_host->push_back(i);
    else if (res[i] == kItemMissing)
      missing.push_back(key_list[i]);
    else if (res[i] >= 0 && static_cast<uint64_t>(res[i]) < needed[i])
      short_objs.push_back(key_list[i] + "' (" + std::to_string(res[i]) + " bytes, transfer reads up to " +
                           std::to_string(needed[i]) + ")");
    else if (res[i] < 0)
      broken.push_back(key_list[i]);
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
  return result;
}

StagingPool* Executor::staging(CudaRuntime* cuda, std::string* error) {
  // Created on first use (pinning memory nobody needs is waste); a failure,
  // say a low memlock limit, is retried on the next VRAM transfer.
  std::lock_guard<std::mutex> lk(staging_mu_);
  if (!staging_) {
    try {
      staging_ = std::make_unique<StagingPool>(cuda, staging_bytes_, staging_slot_bytes_);
    } catch (const std::exception& e) {
      *error = e.what();
    }
  }
  return staging_.get();
}

// VRAM_SEG: objects go through pinned slots, a group at a time. Device
// segments are split at slot boundaries, so one object may span slots; the
// host-side segment lists keep the object's offsets, so WRITE tiling and READ
// scatter work exactly as for DRAM.
Status Executor::move_staged(Transfer* t) {
  CudaRuntime* cuda = t->host_staged ? CudaRuntime::host_stand_in() : CudaRuntime::get();
  std::string why = "no CUDA runtime";
  StagingPool* pool = cuda ? staging(cuda, &why) : nullptr;
  if (!pool) {
    log(LogLevel::Error, "MEMKV VRAM transfer failed: " + why);
    return kErrNotSupported;
  }
  if (!t->host_staged && !cuda->set_device(t->gpu, &why)) {
    log(LogLevel::Error, "MEMKV VRAM transfer failed: " + why);
    return kErrBackend;
  }
  const uint64_t slot = pool->slot_bytes();
  const uint64_t capacity = slot * pool->slots();
  struct Copy {
    uint8_t* device;
    uint8_t* host;
    uint64_t len;
  };
  size_t first = 0;
  Status result = kSuccess;
  while (first < t->keys.size() && result == kSuccess) {
    // Take objects while they fit in the pool.
    size_t last = first;
    uint64_t bytes = 0;
    while (last < t->keys.size()) {
      uint64_t b = 0;
      for (const Segment& g : t->segments[last]) b += g.len;
      if (b > capacity) {
        log(LogLevel::Error, "MEMKV VRAM transfer: object '" + t->keys[last] + "' (" + std::to_string(b) +
                                 " bytes) exceeds the staging pool; raise MEMKV_STAGING_SIZE_MB");
        return kErrInvalidParam;
      }
      if (last > first && bytes + b > capacity) break;
      bytes += b;
      ++last;
    }
    struct Slots {  // returned to the pool however this group ends
      StagingPool* pool;
      std::vector<uint8_t*> v;
      ~Slots() { pool->release(v); }
    } held{pool, pool->acquire(static_cast<size_t>((bytes + slot - 1) / slot))};
    const std::vector<uint8_t*>& slots = held.v;
    std::vector<std::string> keys(t->keys.begin() + first, t->keys.begin() + last);
    std::vector<uint64_t> needed(t->needed.begin() + first, t->needed.begin() + last);
    std::vector<SegmentList> host(keys.size());
    std::vector<std::vector<Copy>> copies(keys.size());
    size_t k = 0;
    uint64_t used = 0;  // bytes used in slots[k]
    for (size_t o = 0; o < keys.size(); ++o) {
      for (const Segment& g : t->segments[first + o]) {
        uint64_t done = 0;
        while (done < g.len) {
          if (used == slot) {
            ++k;
            used = 0;
          }
          uint64_t n = std::min(g.len - done, slot - used);
          uint8_t* h = slots[k] + used;
          host[o].push_back(Segment{g.offset + done, h, n});
          copies[o].push_back(Copy{static_cast<uint8_t*>(g.ptr) + done, h, n});
          done += n;
          used += n;
        }
      }
    }
    std::string err;
    bool copied = true;
    if (t->op == kWrite)
      for (auto& obj : copies)
        for (const Copy& c : obj) copied = copied && cuda->copy(c.host, c.device, c.len, &err);
    if (!copied) {
      log(LogLevel::Error, "MEMKV VRAM WRITE failed: " + err);
      result = kErrBackend;
    } else {
      result = move(t->op, keys, host, needed);
      if (t->op == kRead && result == kSuccess)
        for (auto& obj : copies)
          for (const Copy& c : obj)
            if (!cuda->copy(c.device, c.host, c.len, &err)) {
              log(LogLevel::Error, "MEMKV VRAM READ failed: " + err);
              result = kErrBackend;
            }
    }
    first = last;
  }
  return result;
}

Status Executor::move_gpudirect(Transfer* t) {
  std::vector<size_t> rest;
  bool registered = false;  // nothing is (TCP, MEMKV_GPUDIRECT=off, registration failed): skip the try
  for (const SegmentList& segs : t->segments)
    for (const Segment& g : segs) registered = registered || (g.len && client_->is_device_registered(g.ptr, g.len));
  Status result;
  if (registered) {
    result = move(t->op, t->keys, t->segments, t->needed, Memory::Gpu, &rest);
  } else {
    result = kSuccess;
    for (size_t i = 0; i < t->keys.size(); ++i) rest.push_back(i);
  }
  if (result != kSuccess || rest.empty()) return result;
  // Objects on nodes reached over TCP, gapped reads, memory that is not
  // registered: through pinned host slots, as without GPUDirect (the
  // stand-in stages its "GPU" memory the same way, with host copies).
  Transfer host;
  host.op = t->op;
  host.device = true;
  host.host_staged = !t->device;
  host.gpu = t->gpu;
  for (size_t i : rest) {
    host.keys.push_back(t->keys[i]);
    host.segments.push_back(t->segments[i]);
    host.needed.push_back(t->needed[i]);
  }
  return move_staged(&host);
}

void Executor::run(Transfer* t) {
  Status result;
  try {
    if (t->gpudirect)
      result = move_gpudirect(t);
    else
      result = t->device ? move_staged(t) : move(t->op, t->keys, t->segments, t->needed);
  } catch (const std::exception& e) {
    result = kErrBackend;
    log(LogLevel::Error, std::string("MEMKV transfer failed: ") + e.what());
  }
  // Notify while holding the lock: releaseReqH may delete t as soon as it
  // can take the lock and see running == false.
  std::lock_guard<std::mutex> lk(t->mu);
  t->status = result;
  t->running = false;
  t->done_cv.notify_all();
}

}  // namespace memkv::nixl
