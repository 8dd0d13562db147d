#include "cuda_staging.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <mutex>
#include <cstdlib>
#include <cstring>

#include "../common/error.hpp"
#include "../common/log.hpp"

namespace memkv::nixl {

namespace {
constexpr int kCudaMemcpyDefault = 4;     // cudaMemcpyKind: infer direction (unified addressing)
constexpr unsigned kCudaHostAllocPortable = 1;
}  // namespace

struct CudaLoader {
  static CudaRuntime* load() {
    void* lib = nullptr;
    for (const char* name : {"libcudart.so.12", "libcudart.so.13", "libcudart.so"}) {
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib) break;
    }
    if (!lib) return nullptr;
    auto count = reinterpret_cast<CudaRuntime::GetCount>(dlsym(lib, "cudaGetDeviceCount"));
    auto* rt = new CudaRuntime();
    rt->memcpy_ = reinterpret_cast<CudaRuntime::Memcpy>(dlsym(lib, "cudaMemcpy"));
    rt->host_alloc_ = reinterpret_cast<CudaRuntime::HostAlloc>(dlsym(lib, "cudaHostAlloc"));
    rt->free_host_ = reinterpret_cast<CudaRuntime::FreeHost>(dlsym(lib, "cudaFreeHost"));
    rt->error_string_ = reinterpret_cast<CudaRuntime::ErrorString>(dlsym(lib, "cudaGetErrorString"));
    rt->set_device_ = reinterpret_cast<CudaRuntime::SetDevice>(dlsym(lib, "cudaSetDevice"));
    int devices = 0;
    if (!count || !rt->memcpy_ || !rt->host_alloc_ || !rt->free_host_ || count(&devices) != 0 || devices == 0) {
      delete rt;
      return nullptr;
    }
    log(LogLevel::Info, "MEMKV: CUDA runtime found with " + std::to_string(devices) +
                            " device(s); VRAM_SEG is staged through pinned host memory");
    return rt;
  }
};

CudaRuntime* CudaRuntime::get() {
  // A found runtime is kept for the process; a miss is probed again next
  // time (torch may load libcudart later).
  static std::mutex mu;
  static CudaRuntime* rt = nullptr;
  std::lock_guard<std::mutex> lk(mu);
  if (!rt) rt = CudaLoader::load();
  return rt;
}

bool CudaRuntime::loaded() {
  for (const char* name : {"libcudart.so.12", "libcudart.so.13", "libcudart.so"})
    if (void* h = dlopen(name, RTLD_NOW | RTLD_NOLOAD)) {
      dlclose(h);
      return true;
    }
  return false;
}

bool CudaRuntime::set_device(int device, std::string* error) {
  if (!set_device_) return true;
  int rc = set_device_(device);
  if (rc == 0) return true;
  *error = "cudaSetDevice(" + std::to_string(device) + ") failed: " +
           (error_string_ ? error_string_(rc) : std::to_string(rc));
  return false;
}

namespace {
int host_memcpy(void* d, const void* s, size_t n, int) {
  std::memcpy(d, s, n);
  return 0;
}
int host_alloc(void** p, size_t n, unsigned) {
  *p = std::malloc(n);
  return *p ? 0 : 2;
}
int host_free(void* p) {
  std::free(p);
  return 0;
}
}  // namespace

CudaRuntime* CudaRuntime::host_stand_in() {
  static CudaRuntime* rt = [] {
    auto* r = new CudaRuntime();
    r->memcpy_ = host_memcpy;
    r->host_alloc_ = host_alloc;
    r->free_host_ = host_free;
    return r;
  }();
  return rt;
}

bool CudaRuntime::stage_dram() {
  static const bool on = [] {
    const char* v = std::getenv("MEMKV_STAGE_DRAM");
    return v && std::strcmp(v, "1") == 0;
  }();
  return on;
}

bool CudaRuntime::copy(void* dst, const void* src, size_t n, std::string* error) {
  int rc = memcpy_(dst, src, n, kCudaMemcpyDefault);
  if (rc == 0) return true;
  *error = std::string("cudaMemcpy failed: ") + (error_string_ ? error_string_(rc) : std::to_string(rc));
  return false;
}

void* CudaRuntime::alloc_pinned(size_t n) {
  void* p = nullptr;
  if (host_alloc_(&p, n, kCudaHostAllocPortable) != 0) return nullptr;
  return p;
}

void CudaRuntime::free_pinned(void* p) { free_host_(p); }

StagingPool::StagingPool(CudaRuntime* cuda, uint64_t total_bytes, uint64_t slot_bytes)
    : cuda_(cuda), slot_(std::max<uint64_t>(slot_bytes, 1)) {
  size_t n = static_cast<size_t>(std::max<uint64_t>(total_bytes / slot_, 1));
  for (size_t i = 0; i < n; ++i) {
    auto* p = static_cast<uint8_t*>(cuda_->alloc_pinned(slot_));
    if (!p) {
      for (uint8_t* q : base_) cuda_->free_pinned(q);
      fail(ErrorKind::Config, "cannot pin " + std::to_string(total_bytes) +
                                  " bytes of staging memory for VRAM transfers (lower MEMKV_STAGING_SIZE_MB, or "
                                  "raise the memlock limit)");
    }
    base_.push_back(p);
  }
  free_ = base_;
}

StagingPool::~StagingPool() {
  for (uint8_t* p : base_) cuda_->free_pinned(p);
}

std::vector<uint8_t*> StagingPool::acquire(size_t n) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return free_.size() >= n; });
  std::vector<uint8_t*> out(free_.end() - static_cast<std::ptrdiff_t>(n), free_.end());
  free_.resize(free_.size() - n);
  return out;
}

void StagingPool::release(const std::vector<uint8_t*>& slots) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    free_.insert(free_.end(), slots.begin(), slots.end());
  }
  cv_.notify_all();
}

}  // namespace memkv::nixl
