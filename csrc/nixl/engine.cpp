#include "engine.hpp"

#include "../common/error.hpp"
#include "../common/log.hpp"
#include "../transport/device_memory.hpp"
#include "../wire/protocol.hpp"
#include "cuda_staging.hpp"
#include "python_runtime.hpp"

namespace memkv::nixl {

MemList MemKVEngine::supported_mems() {
  if (CudaRuntime::get()) return {kDram, kObj, kVram};
  return {kDram, kObj};
}

MemList MemKVEngine::advertised_mems() {
  // Before any backend exists, do not initialise CUDA (a later fork() would
  // break it): VRAM_SEG is advertised when the host already loaded libcudart.
  if (CudaRuntime::loaded()) return {kDram, kObj, kVram};
  return {kDram, kObj};
}

Params MemKVEngine::default_params() {
  // Everything create_backend("MEMKV", {...}) accepts; empty = from the config chain.
  return {{"servers", ""},           {"auth_key", ""},         {"transport", ""},       {"rdma_devices", ""},
          {"license", ""},           {"license_pubkey", ""},   {"num_connections", ""}, {"staging_size_mb", ""},
          {"staging_slot_mb", ""},   {"connect_timeout_ms", ""}, {"op_timeout_ms", ""}, {"namespace", ""},
          {"tenant", ""},            {"gpudirect", ""},       {"workers", ""}};
}

MemKVEngine::MemKVEngine(const InitParams* params) : EngineBase(params) {
  PluginSettings settings;
  std::string error;
  if (!configure_with_python(custom_params_, &settings, &error)) {
    log(LogLevel::Error, "MEMKV backend creation failed: " + error);
    init_err_ = true;
    return;
  }
  try {
    client_ = std::make_unique<Client>(settings.client);
    executor_ = std::make_unique<Executor>(client_.get(), settings.workers, settings.staging_bytes,
                                           settings.staging_slot_bytes);
    key_prefix_ = settings.key_prefix;
    gpudirect_ = settings.gpudirect;
  } catch (const std::exception& e) {
    log(LogLevel::Error, std::string("MEMKV backend creation failed: ") + e.what());
    init_err_ = true;
    return;
  }
  log(LogLevel::Info, "MEMKV backend ready (servers=" + std::to_string(settings.client.servers.size()) +
                          ", workers=" + std::to_string(settings.workers) + ", agent=" + local_agent_ + ")");
}

MemKVEngine::~MemKVEngine() {
  executor_.reset();  // lets queued transfers finish, then joins
  client_.reset();
}

std::string MemKVEngine::object_key(const BlobDesc& d) const {
  return key_prefix_ + (d.meta_info.empty() ? std::to_string(d.dev_id) : d.meta_info);
}

Status MemKVEngine::registerMem(const BlobDesc& mem, const MemType& type, BackendMD*& out) {
  if (type == kDram || (type == kVram && CudaRuntime::get())) {
    auto* md = new LocalMD();
    if (mem.len) register_with_rails(mem, type, md);
    out = md;
    return kSuccess;
  }
  if (type != kObj) {
    log(LogLevel::Error, "MEMKV registers DRAM_SEG, OBJ_SEG and (with CUDA) VRAM_SEG memory only (got type " +
                             std::to_string(type) + ")");
    return kErrNotSupported;
  }
  std::string key = object_key(mem);
  if (key.size() > wire::kMaxKeyLen) {
    log(LogLevel::Error, "MEMKV object key is " + std::to_string(key.size()) +
                             " bytes; keys are at most 512 (shorten metaInfo or the namespace)");
    return kErrInvalidParam;
  }
  out = new ObjectMD(std::move(key), mem.dev_id, mem.len);
  return kSuccess;
}

// Memory is registered once here, not per transfer (the "pre-registered
// descriptor pools" KVBM users asked for; docs/compatibility.md). If registration fails (locked-memory limit, no
// GPUDirect support) transfers still work, through staging.
void MemKVEngine::register_with_rails(const BlobDesc& mem, const MemType& type, LocalMD* md) {
  void* p = reinterpret_cast<void*>(mem.addr);
  const bool gpu = type == kVram || (gpudirect_ && rdma::gpudirect_stand_in());
  if (gpu && !gpudirect_) return;  // MEMKV_GPUDIRECT=off: VRAM is always staged
  try {
    if (!gpu) {
      if (client_->register_memory(p, mem.len)) md->rdma_registered = p;
      return;
    }
    std::string why;
    if (type == kVram && !CudaRuntime::get()->set_device(static_cast<int>(mem.dev_id), &why))
      fail(ErrorKind::Config, why);
    std::string how = client_->register_device_memory(p, mem.len);
    if (how.empty()) return;  // TCP: nothing to register with
    md->rdma_registered = p;
    if (!gpudirect_logged_) {
      gpudirect_logged_ = true;
      log(LogLevel::Info, "MEMKV: GPU memory registered for GPUDirect RDMA (" + how + ", GPU " +
                              std::to_string(mem.dev_id) + "); VRAM transfers skip host staging");
    }
  } catch (const std::exception& e) {
    log(LogLevel::Warning, std::string("MEMKV: ") + (gpu ? "VRAM" : "DRAM") +
                               " registration stays unregistered for RDMA (staged instead): " + e.what());
  }
}

Status MemKVEngine::deregisterMem(BackendMD* meta) {
  if (auto* md = dynamic_cast<LocalMD*>(meta); md && md->rdma_registered) client_->unregister_memory(md->rdma_registered);
  delete meta;
  return kSuccess;
}

Status MemKVEngine::prepXfer(const XferOp& op, const MetaDescList& local, const MetaDescList& remote,
                             const std::string&, RequestHandle*& handle, const OptArgs*) const {
  auto t = std::make_unique<Transfer>();
  std::string why;
  Status st = Transfer::plan(op, local, remote, t.get(), &why);
  if (st != kSuccess) {
    log(LogLevel::Error, "MEMKV cannot prepare the transfer: " + why);
    return st;
  }
  handle = t.release();
  return kSuccess;
}

Status MemKVEngine::postXfer(const XferOp& op, const MetaDescList& local, const MetaDescList& remote,
                             const std::string& agent, RequestHandle*& handle, const OptArgs* args) const {
  if (!handle) {
    Status st = prepXfer(op, local, remote, agent, handle, args);
    if (st != kSuccess) return st;
  }
  auto* t = static_cast<Transfer*>(handle);
  if (!executor_->submit(t)) return kErrRepostActive;
  return kInProg;
}

Status MemKVEngine::checkXfer(RequestHandle* handle) const {
  return handle ? static_cast<Status>(static_cast<Transfer*>(handle)->status.load()) : kErrInvalidParam;
}

Status MemKVEngine::releaseReqH(RequestHandle* handle) const {
  if (!handle) return kSuccess;
  auto* t = static_cast<Transfer*>(handle);
  Executor::wait(t);  // a transfer in flight owns the caller's buffers until it ends
  delete t;
  return kSuccess;
}

Status MemKVEngine::queryMem(const BlobDescList& descs, std::vector<QueryResponse>& resp) const {
  resp.clear();
  resp.resize(descs.size());
  std::vector<std::string> keys;
  keys.reserve(descs.size());
  for (size_t i = 0; i < descs.size(); ++i) keys.push_back(object_key(descs[i]));
  std::vector<std::string_view> views(keys.begin(), keys.end());
  std::vector<int64_t> sizes;
  std::vector<std::string> errors;
  try {
    client_->batch_exists(views, &sizes, &errors);
  } catch (const std::exception& e) {
    log(LogLevel::Error, std::string("MEMKV query_memory failed: ") + e.what());
    return kErrBackend;
  }
  for (size_t i = 0; i < sizes.size(); ++i)
    if (sizes[i] >= 0) resp[i] = Params{{"size", std::to_string(sizes[i])}, {"key", keys[i]}};
  if (!errors.empty()) {
    log(LogLevel::Error, "MEMKV query_memory: " + errors.front());
    return kErrBackend;
  }
  return kSuccess;
}

}  // namespace memkv::nixl
