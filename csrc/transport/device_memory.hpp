// GPUDirect RDMA: registering CUDA device memory with an RDMA device, so the
// node READs puts straight out of, and WRITEs gets straight into, GPU memory
// with no host copy. Two kernel paths exist, tried in this order:
//   * dma-buf: the CUDA driver exports the range as a dma-buf file
//     (cuMemGetHandleForAddressRange) and ibv_reg_dmabuf_mr registers it;
//     needs an open GPU kernel module and rdma-core >= 34;
//   * peer memory: plain ibv_reg_mr on the device address, which works when
//     the nvidia-peermem kernel module is loaded.
// libcuda is found at run time (dlopen), like libibverbs, so nothing here
// is needed on hosts without a GPU.
//
// The host cannot read such memory, so nothing on the client checksums it:
// see docs/protocol.md §11 for what protects those bytes instead.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "rdma.hpp"

namespace memkv::rdma {

#if MEMKV_WITH_VERBS

// Registers device memory [p, p + n) with `dev`. Sets *how to "dmabuf",
// "peer-memory" or "stand-in"; throws a Connection error saying why each path
// failed when none works (the caller falls back to staging through the host).
std::unique_ptr<MemoryRegion> register_device_memory(const DevicePtr& dev, void* p, uint64_t n, int access,
                                                     std::string* how);

#endif

// MEMKV_GPUDIRECT_STAND_IN=1 (tests only): host memory is registered and
// treated as device memory (never read by the client, checksummed by the
// node), so the GPUDirect protocol path runs on machines without a GPU.
bool gpudirect_stand_in();

}  // namespace memkv::rdma
