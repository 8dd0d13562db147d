// Glue between the native core and CPython, shared by every extension
// module: C++ exceptions become nixl_memkv.errors exceptions, native log
// lines go to the `memkv.native` logger, and small adapters for what Cython
// cannot declare (std::array keys, std::function callbacks).
#pragma once
#include <Python.h>

#include <cstdio>
#include <cstring>
#include <new>
#include <string>

#include "../csrc/common/error.hpp"
#include "../csrc/common/log.hpp"
#include "../csrc/wire/session.hpp"

namespace memkv::py {

inline const char* error_class(ErrorKind k) {
  switch (k) {
    case ErrorKind::Config: return "ConfigError";
    case ErrorKind::Auth: return "AuthError";
    case ErrorKind::Protocol: return "ProtocolError";
    case ErrorKind::Connection: return "ConnectionFailed";
    case ErrorKind::Checksum: return "ChecksumError";
    case ErrorKind::KeyTooLong: return "KeyTooLong";
    case ErrorKind::Server: return "ServerError";
    default: return "MemKVError";
  }
}

// Called by Cython (`except +raise_py_error`) with a C++ exception in flight.
inline void raise_py_error() {
  try {
    throw;
  } catch (const Error& e) {
    PyObject* mod = PyImport_ImportModule("nixl_memkv.errors");
    PyObject* cls = mod ? PyObject_GetAttrString(mod, error_class(e.kind())) : nullptr;
    PyErr_Clear();
    PyErr_SetString(cls ? cls : PyExc_RuntimeError, e.what());
    Py_XDECREF(cls);
    Py_XDECREF(mod);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "unknown native error");
  }
}

inline bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

inline void log_to_python(int level, const char* msg) {
  if (!Py_IsInitialized() || interpreter_finalizing()) {
    std::fprintf(stderr, "memkv %s\n", msg);
    return;
  }
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject* logging = PyImport_ImportModule("logging");
  PyObject* logger = logging ? PyObject_CallMethod(logging, "getLogger", "s", "memkv.native") : nullptr;
  PyObject* r = logger ? PyObject_CallMethod(logger, "log", "is", level, msg) : nullptr;
  if (!r) {
    PyErr_Clear();
    std::fprintf(stderr, "memkv %s\n", msg);
  }
  Py_XDECREF(r);
  Py_XDECREF(logger);
  Py_XDECREF(logging);
  PyGILState_Release(g);
}

inline void install_log_sink(int min_level) { set_log_sink(&log_to_python, min_level); }

using NodeId = std::array<uint8_t, wire::kNodeIdLen>;

inline void copy_key(wire::Key32& dst, const unsigned char* src) { std::memcpy(dst.data(), src, dst.size()); }
inline void copy_node_id(NodeId& dst, const unsigned char* src) {
  std::memcpy(dst.data(), src, dst.size());
}

}  // namespace memkv::py
