#include "verbs.hpp"

#include <dlfcn.h>

#include <mutex>

namespace memkv::rdma {

bool built_with_verbs() { return MEMKV_WITH_VERBS != 0; }

#if MEMKV_WITH_VERBS

namespace {

template <class F>
bool bind(void* lib, const char* name, F* out, std::string* missing) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  if (!*out) *missing += std::string(missing->empty() ? "" : ", ") + name;
  return *out != nullptr;
}

struct Loaded {
  Verbs v{};
  std::string why;
  bool ok = false;
};

const Loaded& load() {
  static Loaded* l = [] {
    auto* r = new Loaded();
    void* lib = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
      r->why = std::string("libibverbs.so.1 cannot be loaded (") + dlerror() +
               "); install rdma-core / libibverbs1 and the provider for your NIC (ibverbs-providers)";
      return r;
    }
    std::string missing;
    Verbs& v = r->v;
    bind(lib, "ibv_get_device_list", &v.get_device_list, &missing);
    bind(lib, "ibv_free_device_list", &v.free_device_list, &missing);
    bind(lib, "ibv_get_device_name", &v.get_device_name, &missing);
    bind(lib, "ibv_open_device", &v.open_device, &missing);
    bind(lib, "ibv_close_device", &v.close_device, &missing);
    bind(lib, "ibv_query_device", &v.query_device, &missing);
    bind(lib, "ibv_query_port", &v.query_port, &missing);
    bind(lib, "ibv_query_gid", &v.query_gid, &missing);
    bind(lib, "ibv_alloc_pd", &v.alloc_pd, &missing);
    bind(lib, "ibv_dealloc_pd", &v.dealloc_pd, &missing);
    bind(lib, "ibv_reg_mr", &v.reg_mr, &missing);
    bind(lib, "ibv_dereg_mr", &v.dereg_mr, &missing);
    bind(lib, "ibv_create_cq", &v.create_cq, &missing);
    bind(lib, "ibv_destroy_cq", &v.destroy_cq, &missing);
    bind(lib, "ibv_create_qp", &v.create_qp, &missing);
    bind(lib, "ibv_modify_qp", &v.modify_qp, &missing);
    bind(lib, "ibv_destroy_qp", &v.destroy_qp, &missing);
    bind(lib, "ibv_wc_status_str", &v.wc_status_str, &missing);
    bind(lib, "ibv_create_comp_channel", &v.create_comp_channel, &missing);
    bind(lib, "ibv_destroy_comp_channel", &v.destroy_comp_channel, &missing);
    bind(lib, "ibv_get_cq_event", &v.get_cq_event, &missing);
    bind(lib, "ibv_ack_cq_events", &v.ack_cq_events, &missing);
    v.reg_dmabuf_mr = reinterpret_cast<decltype(v.reg_dmabuf_mr)>(dlsym(lib, "ibv_reg_dmabuf_mr"));
    if (!missing.empty()) {
      r->why = "libibverbs.so.1 lacks " + missing + " (rdma-core too old?)";
      return r;
    }
    r->ok = true;
    return r;
  }();
  return *l;
}

}  // namespace

const Verbs* verbs(std::string* why) {
  const Loaded& l = load();
  if (!l.ok) {
    if (why) *why = l.why;
    return nullptr;
  }
  return &l.v;
}

std::string verbs_unavailable_reason() {
  std::string why;
  return verbs(&why) ? std::string() : why;
}

#else

std::string verbs_unavailable_reason() {
  return "this build of MemKV has no RDMA transport (it was built without <infiniband/verbs.h>: install "
         "libibverbs-dev and reinstall)";
}

#endif

}  // namespace memkv::rdma
