// libibverbs, loaded at run time. The wheel and the NIXL plugin must load on
// hosts without rdma-core (TCP keeps working there), so nothing links
// against libibverbs: its entry points are looked up once with dlopen/dlsym.
// The types come from the build host's <infiniband/verbs.h>; the hot calls
// (post_send, poll_cq) are inline dispatches through the device's ops table
// and need no symbol at all.
#pragma once
#include <string>

#if MEMKV_WITH_VERBS
#include <infiniband/verbs.h>

namespace memkv::rdma {

struct Verbs {
  ibv_device** (*get_device_list)(int*);
  void (*free_device_list)(ibv_device**);
  const char* (*get_device_name)(ibv_device*);
  ibv_context* (*open_device)(ibv_device*);
  int (*close_device)(ibv_context*);
  int (*query_device)(ibv_context*, ibv_device_attr*);
  int (*query_port)(ibv_context*, uint8_t, ibv_port_attr*);
  int (*query_gid)(ibv_context*, uint8_t, int, ibv_gid*);
  ibv_pd* (*alloc_pd)(ibv_context*);
  int (*dealloc_pd)(ibv_pd*);
  ibv_mr* (*reg_mr)(ibv_pd*, void*, size_t, int);
  int (*dereg_mr)(ibv_mr*);
  ibv_cq* (*create_cq)(ibv_context*, int, void*, ibv_comp_channel*, int);
  int (*destroy_cq)(ibv_cq*);
  ibv_qp* (*create_qp)(ibv_pd*, ibv_qp_init_attr*);
  int (*modify_qp)(ibv_qp*, ibv_qp_attr*, int);
  int (*destroy_qp)(ibv_qp*);
  const char* (*wc_status_str)(ibv_wc_status);
  ibv_comp_channel* (*create_comp_channel)(ibv_context*);
  int (*destroy_comp_channel)(ibv_comp_channel*);
  int (*get_cq_event)(ibv_comp_channel*, ibv_cq**, void**);
  void (*ack_cq_events)(ibv_cq*, unsigned int);
  // Optional (rdma-core 34+, GPUDirect over dma-buf); null when absent.
  ibv_mr* (*reg_dmabuf_mr)(ibv_pd*, uint64_t, size_t, uint64_t, int, int);
};

// The loaded library, or nullptr with the reason in *why (not installed,
// or missing an entry point).
const Verbs* verbs(std::string* why);

}  // namespace memkv::rdma
#endif

namespace memkv::rdma {
// Whether this build carries the RDMA transport at all.
bool built_with_verbs();
// Empty when libibverbs loads here; else why not (for error messages).
std::string verbs_unavailable_reason();
}  // namespace memkv::rdma
