# cython: language_level=3
# distutils: language = c++
"""Compiled into libplugin_MEMKV.so (not a standalone module): the engine
calls memkv_nixl_configure when NIXL creates a MEMKV backend. It runs the
MemKV config chain and licence check in Python and fills PluginSettings."""

from cpython.bytes cimport PyBytes_AS_STRING
from cython.operator cimport dereference as deref, preincrement as inc
from libcpp.string cimport string
from libcpp.unordered_map cimport unordered_map


cdef extern from "../csrc/nixl/settings.hpp" namespace "memkv::nixl":
    cppclass PluginSettings:
        pass
    void settings_add_server(PluginSettings*, const string&, const string&, int)
    void settings_set_key(PluginSettings*, const unsigned char*)
    void settings_set(PluginSettings*, int, int, int, const string&, int, int, int)
    void settings_set_transport(PluginSettings*, const string&, const string&)
    void settings_set_tenant(PluginSettings*, const string&)
    void settings_set_gpudirect(PluginSettings*, bint)


cdef public int memkv_nixl_configure(const unordered_map[string, string]* params, PluginSettings* out,
                                     string* error) noexcept with gil:
    cdef unordered_map[string, string].const_iterator it = params.begin()
    try:
        given = {}
        while it != params.end():
            given[deref(it).first.decode()] = deref(it).second.decode()
            inc(it)
        from nixl_memkv.nixl_backend import configure_backend
        s = configure_backend(given)
        for name, host, port in s["servers"]:
            settings_add_server(out, name.encode(), host.encode(), port)
        key = s["auth_key"]
        settings_set_key(out, <const unsigned char*>PyBytes_AS_STRING(key))
        settings_set(out, s["num_connections"], s["connect_timeout_ms"], s["op_timeout_ms"],
                     s["namespace"].encode(), s["workers"], s["staging_size_mb"], s["staging_slot_mb"])
        settings_set_transport(out, s["transport"].encode(), s["rdma_devices"].encode())
        settings_set_tenant(out, s["tenant"].encode())
        settings_set_gpudirect(out, s["gpudirect"])
        return 0
    except BaseException as e:
        error[0] = str(e).encode(errors="replace")
        return -1
