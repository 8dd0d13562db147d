// The plugin's embedded Python runtime. Config and licence checks run in
// Python (the same chain as every other MemKV component) when a backend is
// created: inside the host's interpreter when there is one, else in one the
// plugin starts itself. The data path never touches Python.
#pragma once
#include <string>

#include "abi.hpp"
#include "settings.hpp"

namespace memkv::nixl {

// Runs nixl_memkv.nixl_backend.configure_backend(params). False (with the
// message in *error) when config or licence are bad or Python is unusable.
bool configure_with_python(const Params& params, PluginSettings* out, std::string* error);

}  // namespace memkv::nixl
