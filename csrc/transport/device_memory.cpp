#include "device_memory.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "../common/error.hpp"

namespace memkv::rdma {

bool gpudirect_stand_in() {
  // Read each time (per registration and per transfer plan, never per byte),
  // so a test can switch it for one agent.
  const char* v = std::getenv("MEMKV_GPUDIRECT_STAND_IN");
  return v && std::strcmp(v, "1") == 0;
}

#if MEMKV_WITH_VERBS

namespace {

// The few CUDA driver entry points used (CUresult is an int; 0 = success).
constexpr int kRangeHandleDmaBufFd = 1;  // CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD
constexpr int kPointerMemoryType = 2;    // CU_POINTER_ATTRIBUTE_MEMORY_TYPE
constexpr unsigned kMemoryTypeDevice = 2;  // CU_MEMORYTYPE_DEVICE

struct CudaDriver {
  int (*get_handle)(void*, unsigned long long, size_t, int, unsigned long long) = nullptr;
  int (*pointer_attribute)(void*, int, unsigned long long) = nullptr;
  int (*error_string)(int, const char**) = nullptr;
  std::string why;  // empty when loaded

  std::string error(int rc) const {
    const char* s = nullptr;
    if (error_string && error_string(rc, &s) == 0 && s) return s;
    return "CUDA error " + std::to_string(rc);
  }
};

const CudaDriver& driver() {
  static const CudaDriver d = [] {
    CudaDriver r;
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
      r.why = "libcuda.so.1 cannot be loaded (no NVIDIA driver)";
      return r;
    }
    r.pointer_attribute = reinterpret_cast<decltype(r.pointer_attribute)>(dlsym(lib, "cuPointerGetAttribute"));
    r.error_string = reinterpret_cast<decltype(r.error_string)>(dlsym(lib, "cuGetErrorString"));
    // Present from CUDA 11.7 drivers on.
    r.get_handle = reinterpret_cast<decltype(r.get_handle)>(dlsym(lib, "cuMemGetHandleForAddressRange"));
    if (!r.pointer_attribute) r.why = "libcuda.so.1 lacks cuPointerGetAttribute";
    return r;
  }();
  return d;
}

// dma-buf export works on whole host pages: register the pages around
// [p, p + n), at the offset of p inside them, with p itself as the address
// the peer uses (iova).
ibv_mr* register_dmabuf(const Device& dev, const CudaDriver& cu, void* p, uint64_t n, int access, std::string* why) {
  if (!cu.get_handle) {
    *why = "dma-buf: the driver lacks cuMemGetHandleForAddressRange (CUDA 11.7+)";
    return nullptr;
  }
  if (!dev.v().reg_dmabuf_mr) {
    *why = "dma-buf: libibverbs lacks ibv_reg_dmabuf_mr (rdma-core 34+)";
    return nullptr;
  }
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t addr = reinterpret_cast<uint64_t>(p);
  const uint64_t start = addr & ~(page - 1);
  const uint64_t span = ((addr + n + page - 1) & ~(page - 1)) - start;
  int fd = -1;
  int rc = cu.get_handle(&fd, start, span, kRangeHandleDmaBufFd, 0);
  if (rc != 0 || fd < 0) {
    *why = "dma-buf: cuMemGetHandleForAddressRange failed: " + cu.error(rc);
    return nullptr;
  }
  ibv_mr* mr = dev.v().reg_dmabuf_mr(dev.pd(), addr - start, n, addr, fd, access);
  int err = errno;
  close(fd);  // the registration holds its own reference to the buffer
  if (!mr) *why = std::string("dma-buf: ibv_reg_dmabuf_mr failed: ") + std::strerror(err);
  return mr;
}

}  // namespace

std::unique_ptr<MemoryRegion> register_device_memory(const DevicePtr& dev, void* p, uint64_t n, int access,
                                                     std::string* how) {
  if (gpudirect_stand_in()) {
    *how = "stand-in";
    return std::make_unique<MemoryRegion>(dev, p, n, access);
  }
  const CudaDriver& cu = driver();
  if (!cu.why.empty())
    fail(ErrorKind::Connection, "GPUDirect registration with " + dev->name() + " impossible: " + cu.why);
  unsigned type = 0;
  int rc = cu.pointer_attribute(&type, kPointerMemoryType, reinterpret_cast<unsigned long long>(p));
  if (rc != 0 || type != kMemoryTypeDevice)
    fail(ErrorKind::Config, "GPUDirect registration: the address is not CUDA device memory (" +
                                (rc ? cu.error(rc) : "memory type " + std::to_string(type)) + ")");
  std::string dmabuf_why;
  if (ibv_mr* mr = register_dmabuf(*dev, cu, p, n, access, &dmabuf_why)) {
    *how = "dmabuf";
    return std::make_unique<MemoryRegion>(dev, mr);
  }
  ibv_mr* mr = dev->v().reg_mr(dev->pd(), p, n, access);
  if (mr) {
    *how = "peer-memory";
    return std::make_unique<MemoryRegion>(dev, mr);
  }
  fail(ErrorKind::Connection, "GPUDirect registration of " + std::to_string(n) + " bytes with " + dev->name() +
                                  " failed: " + dmabuf_why + "; peer memory: ibv_reg_mr failed: " +
                                  std::strerror(errno) + " (load nvidia-peermem, or use the open GPU kernel module "
                                  "for dma-buf)");
}

#endif

}  // namespace memkv::rdma
