#include "python_runtime.hpp"

#include <Python.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>

#include <mutex>

#include "../common/log.hpp"

// Cython-generated (cython/nixl_bridge.pyx, compiled into this library).
extern "C" PyObject* PyInit__nixl_bridge();
// (Cython gives `cdef public` functions C++ linkage when compiling C++.)
int memkv_nixl_configure(const memkv::nixl::Params* params, memkv::nixl::PluginSettings* out, std::string* error);

namespace memkv::nixl {
namespace {

std::once_flag g_python_once;
bool g_bridge_ready = false;  // guarded by the GIL

// Directory holding this library: site-packages/nixl_memkv/plugins.
std::string plugin_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&configure_with_python), &info) && info.dli_fname) {
    // NIXL usually opens us through a symlink (merged plugin dir, bind mount):
    // resolve it to the installed file.
    char real[PATH_MAX];
    std::string p = realpath(info.dli_fname, real) ? real : info.dli_fname;
    return p.substr(0, p.rfind('/'));
  }
  return {};
}

// Called with the GIL held. Initialises the bridge module the way the import
// system would (multi-phase init), then registers it in sys.modules.
bool init_bridge(std::string* error) {
  if (g_bridge_ready) return true;
  // A plugin loaded from its install location can always import its package.
  std::string dir = plugin_dir();
  if (!dir.empty()) {
    std::string site = dir.substr(0, dir.rfind('/'));  // .../nixl_memkv/plugins -> .../nixl_memkv
    site = site.substr(0, site.rfind('/'));            // -> site-packages
    PyObject* path = PySys_GetObject("path");          // borrowed
    PyObject* s = PyUnicode_FromString(site.c_str());
    if (path && s && !PySequence_Contains(path, s)) PyList_Append(path, s);
    Py_XDECREF(s);
  }
  PyObject* init = PyInit__nixl_bridge();
  if (!init) {
    PyErr_Print();
    *error = "the MEMKV plugin's Python bridge failed to initialise";
    return false;
  }
  PyObject* module = init;
  if (PyObject_TypeCheck(init, &PyModuleDef_Type)) {
    auto* def = reinterpret_cast<PyModuleDef*>(init);
    PyObject* machinery = PyImport_ImportModule("importlib.machinery");
    PyObject* spec = machinery ? PyObject_CallMethod(machinery, "ModuleSpec", "sO", "nixl_memkv._nixl_bridge", Py_None)
                               : nullptr;
    module = spec ? PyModule_FromDefAndSpec(def, spec) : nullptr;
    if (module && PyModule_ExecDef(module, def) != 0) Py_CLEAR(module);
    Py_XDECREF(spec);
    Py_XDECREF(machinery);
  }
  if (!module) {
    PyErr_Print();
    *error = "the MEMKV plugin's Python bridge failed to initialise";
    return false;
  }
  PyObject* modules = PyImport_GetModuleDict();  // borrowed
  PyDict_SetItemString(modules, "nixl_memkv._nixl_bridge", module);
  Py_DECREF(module);
  g_bridge_ready = true;
  return true;
}

}  // namespace

bool configure_with_python(const Params& params, PluginSettings* out, std::string* error) {
  // No C++ lock is held while waiting for the GIL (the host may hold the GIL
  // while it waits on us); the GIL itself serialises the bridge set-up.
  std::call_once(g_python_once, [] {
    if (Py_IsInitialized()) return;
    // A non-Python host (a C++ program using NIXL): start an interpreter for
    // the config and licence checks, then release the GIL for good. Our
    // libpython came in RTLD_LOCAL with this plugin; extension modules the
    // interpreter imports need its symbols, so promote it to global scope.
    Dl_info py{};
    if (dladdr(reinterpret_cast<void*>(&Py_InitializeEx), &py) && py.dli_fname)
      dlopen(py.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
    Py_InitializeEx(0);
    PyEval_SaveThread();
    log(LogLevel::Info, "started an embedded Python runtime for MEMKV config and licence checks");
  });
  PyGILState_STATE g = PyGILState_Ensure();
  bool ok = init_bridge(error) && memkv_nixl_configure(&params, out, error) == 0;
  PyGILState_Release(g);
  return ok;
}

}  // namespace memkv::nixl
