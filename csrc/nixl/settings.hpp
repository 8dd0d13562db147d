// What the embedded Python config chain hands the engine: the client's
// options plus plugin-level knobs. Filled by cython/nixl_bridge.pyx.
#pragma once
#include <cstring>
#include <string>

#include "../client/client.hpp"

namespace memkv::nixl {

struct PluginSettings {
  ClientOptions client;
  std::string key_prefix;  // the `namespace` param: prepended to every object key
  int workers = 4;         // threads running posted transfers
  uint64_t staging_bytes = 256ull << 20;  // pinned host memory for VRAM_SEG transfers
  uint64_t staging_slot_bytes = 16ull << 20;
  bool gpudirect = true;  // MEMKV_GPUDIRECT=auto: VRAM_SEG registered with the rails when it can be
};

inline void settings_add_server(PluginSettings* s, const std::string& name, const std::string& host, int port) {
  s->client.servers.push_back(ServerAddr{name, host, static_cast<uint16_t>(port)});
}
inline void settings_set_key(PluginSettings* s, const unsigned char* key) {
  std::memcpy(s->client.auth_key.data(), key, s->client.auth_key.size());
}
inline void settings_set_tenant(PluginSettings* s, const std::string& tenant) { s->client.tenant = tenant; }
inline void settings_set_gpudirect(PluginSettings* s, bool on) { s->gpudirect = on; }
inline void settings_set(PluginSettings* s, int num_connections, int connect_timeout_ms, int op_timeout_ms,
                         const std::string& key_prefix, int workers, int staging_size_mb, int staging_slot_mb) {
  s->staging_bytes = static_cast<uint64_t>(staging_size_mb) << 20;
  s->staging_slot_bytes = static_cast<uint64_t>(staging_slot_mb) << 20;
  s->client.num_connections = num_connections;
  s->client.connect_timeout_ms = connect_timeout_ms;
  s->client.op_timeout_ms = op_timeout_ms;
  s->key_prefix = key_prefix;
  s->workers = workers;
  s->client.transport.staging_bytes = s->staging_bytes;
  s->client.transport.staging_slot_bytes = s->staging_slot_bytes;
}
// mode: "tcp", "rdma" or "auto" (nixl_memkv.transport.native_transport_mode);
// devices: the rails, comma-separated.
inline void settings_set_transport(PluginSettings* s, const std::string& mode, const std::string& devices) {
  s->client.transport.mode =
      mode == "rdma" ? transport::Mode::Rdma : mode == "auto" ? transport::Mode::Auto : transport::Mode::Tcp;
  s->client.transport.rdma_devices.clear();
  size_t start = 0;
  while (start < devices.size()) {
    size_t comma = devices.find(',', start);
    if (comma == std::string::npos) comma = devices.size();
    if (comma > start) s->client.transport.rdma_devices.push_back(devices.substr(start, comma - start));
    start = comma + 1;
  }
}

}  // namespace memkv::nixl
