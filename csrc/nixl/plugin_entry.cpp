// The two symbols NIXL looks up in libplugin_MEMKV.so. Everything else in
// the library is hidden (see plugin.map).
#include "../common/log.hpp"
#include "engine.hpp"

namespace memkv::nixl {
namespace {

EngineBase* create_engine(const InitParams* params) {
  try {
    return new MemKVEngine(params);  // init_err_ set: NIXL reports it and destroys the engine
  } catch (const std::exception& e) {
    log(LogLevel::Error, std::string("MEMKV backend creation failed: ") + e.what());
  } catch (...) {
    log(LogLevel::Error, "MEMKV backend creation failed");
  }
  return nullptr;
}

void destroy_engine(EngineBase* engine) { delete engine; }
const char* plugin_name() { return "MEMKV"; }
const char* plugin_version() { return MEMKV_VERSION; }
Params backend_options() { return MemKVEngine::default_params(); }
MemList backend_mems() { return MemKVEngine::advertised_mems(); }

PluginRecord g_record{kPluginApiVersion, create_engine, destroy_engine, plugin_name,
                      plugin_version,    backend_options, backend_mems};

}  // namespace
}  // namespace memkv::nixl

// Idempotent: NIXL may init and fini the plugin several times per process.
extern "C" __attribute__((visibility("default"))) memkv::nixl::PluginRecord* nixl_plugin_init() {
  return &memkv::nixl::g_record;
}

extern "C" __attribute__((visibility("default"))) void nixl_plugin_fini() {}
