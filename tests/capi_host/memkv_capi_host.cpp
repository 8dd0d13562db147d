// A non-Python host: a plain C++ program that drives NIXL through
// libnixl_capi.so and offloads/onboards blocks through the MEMKV backend.
// The C prototypes below are our own declarations of the wheel's C API.
// Config comes from MEMKV_* environment variables (the plugin's config chain).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
typedef int nixl_capi_status_t;  // 0 success, 1 in progress, < 0 error
typedef struct nixl_capi_agent_s* nixl_capi_agent_t;
typedef struct nixl_capi_params_s* nixl_capi_params_t;
typedef struct nixl_capi_backend_s* nixl_capi_backend_t;
typedef struct nixl_capi_opt_args_s* nixl_capi_opt_args_t;
typedef struct nixl_capi_reg_dlist_s* nixl_capi_reg_dlist_t;
typedef struct nixl_capi_xfer_dlist_s* nixl_capi_xfer_dlist_t;
typedef struct nixl_capi_xfer_req_s* nixl_capi_xfer_req_t;
enum { MEM_DRAM = 0, MEM_OBJECT = 3 };
enum { OP_READ = 0, OP_WRITE = 1 };
struct nixl_capi_agent_config_t {  // 40 bytes in nixl-cu12 1.5.1
  bool enable_prog_thread;
  bool enable_listen_thread;
  int listen_port;
  int thread_sync;
  unsigned num_workers;
  uint64_t pthr_delay_us;
  uint64_t lthr_delay_us;
  bool capture_telemetry;
};
static_assert(sizeof(nixl_capi_agent_config_t) == 40);

nixl_capi_status_t nixl_capi_create_configured_agent(const char*, const nixl_capi_agent_config_t*, nixl_capi_agent_t*);
nixl_capi_status_t nixl_capi_destroy_agent(nixl_capi_agent_t);
nixl_capi_status_t nixl_capi_create_params(nixl_capi_params_t*);
nixl_capi_status_t nixl_capi_destroy_params(nixl_capi_params_t);
nixl_capi_status_t nixl_capi_create_backend(nixl_capi_agent_t, const char*, nixl_capi_params_t, nixl_capi_backend_t*);
nixl_capi_status_t nixl_capi_destroy_backend(nixl_capi_backend_t);
nixl_capi_status_t nixl_capi_create_opt_args(nixl_capi_opt_args_t*);
nixl_capi_status_t nixl_capi_destroy_opt_args(nixl_capi_opt_args_t);
nixl_capi_status_t nixl_capi_opt_args_add_backend(nixl_capi_opt_args_t, nixl_capi_backend_t);
nixl_capi_status_t nixl_capi_create_reg_dlist(int, nixl_capi_reg_dlist_t*);
nixl_capi_status_t nixl_capi_destroy_reg_dlist(nixl_capi_reg_dlist_t);
nixl_capi_status_t nixl_capi_reg_dlist_add_desc(nixl_capi_reg_dlist_t, uintptr_t, size_t, uint64_t, const void*, size_t);
nixl_capi_status_t nixl_capi_register_mem(nixl_capi_agent_t, nixl_capi_reg_dlist_t, nixl_capi_opt_args_t);
nixl_capi_status_t nixl_capi_deregister_mem(nixl_capi_agent_t, nixl_capi_reg_dlist_t, nixl_capi_opt_args_t);
nixl_capi_status_t nixl_capi_create_xfer_dlist(int, nixl_capi_xfer_dlist_t*);
nixl_capi_status_t nixl_capi_destroy_xfer_dlist(nixl_capi_xfer_dlist_t);
nixl_capi_status_t nixl_capi_xfer_dlist_add_desc(nixl_capi_xfer_dlist_t, uintptr_t, size_t, uint64_t);
nixl_capi_status_t nixl_capi_create_xfer_req(nixl_capi_agent_t, int, nixl_capi_xfer_dlist_t, nixl_capi_xfer_dlist_t,
                                             const char*, nixl_capi_xfer_req_t*, nixl_capi_opt_args_t);
nixl_capi_status_t nixl_capi_post_xfer_req(nixl_capi_agent_t, nixl_capi_xfer_req_t, nixl_capi_opt_args_t);
nixl_capi_status_t nixl_capi_get_xfer_status(nixl_capi_agent_t, nixl_capi_xfer_req_t);
nixl_capi_status_t nixl_capi_release_xfer_req(nixl_capi_agent_t, nixl_capi_xfer_req_t);
nixl_capi_status_t nixl_capi_destroy_xfer_req(nixl_capi_xfer_req_t);
}

#define CHECK(call)                                                           \
  do {                                                                        \
    nixl_capi_status_t st_ = (call);                                          \
    if (st_ < 0) {                                                            \
      std::fprintf(stderr, "capi host: %s failed with %d\n", #call, st_);    \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

static int run(nixl_capi_agent_t agent, nixl_capi_opt_args_t opts, int op, uint8_t* buf, size_t block,
               const std::vector<uint64_t>& hashes) {
  nixl_capi_xfer_dlist_t local, remote;
  CHECK(nixl_capi_create_xfer_dlist(MEM_DRAM, &local));
  CHECK(nixl_capi_create_xfer_dlist(MEM_OBJECT, &remote));
  for (size_t i = 0; i < hashes.size(); ++i) {
    CHECK(nixl_capi_xfer_dlist_add_desc(local, reinterpret_cast<uintptr_t>(buf + i * block), block, 0));
    CHECK(nixl_capi_xfer_dlist_add_desc(remote, 0, block, hashes[i]));
  }
  nixl_capi_xfer_req_t req;
  CHECK(nixl_capi_create_xfer_req(agent, op, local, remote, "capi-host", &req, opts));
  nixl_capi_status_t st = nixl_capi_post_xfer_req(agent, req, opts);
  while (st == 1) st = nixl_capi_get_xfer_status(agent, req);
  CHECK(nixl_capi_release_xfer_req(agent, req));
  CHECK(nixl_capi_destroy_xfer_req(req));
  CHECK(nixl_capi_destroy_xfer_dlist(local));
  CHECK(nixl_capi_destroy_xfer_dlist(remote));
  return st;
}

int main() {
  const size_t block = 1 << 20, n = 8;
  std::vector<uint64_t> hashes;
  for (size_t i = 0; i < n; ++i) hashes.push_back(0xC0FFEE0000000000ull + i);
  std::vector<uint8_t> src(block * n), dst(block * n, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);

  nixl_capi_agent_config_t cfg{};
  cfg.enable_prog_thread = false;
  nixl_capi_agent_t agent;
  CHECK(nixl_capi_create_configured_agent("capi-host", &cfg, &agent));
  nixl_capi_params_t params;
  CHECK(nixl_capi_create_params(&params));
  nixl_capi_backend_t backend;
  CHECK(nixl_capi_create_backend(agent, "MEMKV", params, &backend));
  nixl_capi_opt_args_t opts;
  CHECK(nixl_capi_create_opt_args(&opts));
  CHECK(nixl_capi_opt_args_add_backend(opts, backend));

  nixl_capi_reg_dlist_t dram, objs;
  CHECK(nixl_capi_create_reg_dlist(MEM_DRAM, &dram));
  CHECK(nixl_capi_reg_dlist_add_desc(dram, reinterpret_cast<uintptr_t>(src.data()), src.size(), 0, "", 0));
  CHECK(nixl_capi_reg_dlist_add_desc(dram, reinterpret_cast<uintptr_t>(dst.data()), dst.size(), 0, "", 0));
  CHECK(nixl_capi_register_mem(agent, dram, opts));
  CHECK(nixl_capi_create_reg_dlist(MEM_OBJECT, &objs));
  for (uint64_t h : hashes) CHECK(nixl_capi_reg_dlist_add_desc(objs, 0, block, h, "", 0));
  CHECK(nixl_capi_register_mem(agent, objs, opts));

  int w = run(agent, opts, OP_WRITE, src.data(), block, hashes);
  int r = run(agent, opts, OP_READ, dst.data(), block, hashes);
  bool same = src == dst;
  std::printf("capi host: write=%d read=%d equal=%s\n", w, r, same ? "yes" : "no");

  CHECK(nixl_capi_deregister_mem(agent, objs, opts));
  CHECK(nixl_capi_deregister_mem(agent, dram, opts));
  CHECK(nixl_capi_destroy_reg_dlist(objs));
  CHECK(nixl_capi_destroy_reg_dlist(dram));
  CHECK(nixl_capi_destroy_opt_args(opts));
  CHECK(nixl_capi_destroy_backend(backend));
  CHECK(nixl_capi_destroy_params(params));
  CHECK(nixl_capi_destroy_agent(agent));
  return w == 0 && r == 0 && same ? 0 : 1;
}
