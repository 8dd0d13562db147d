# Declarations of the native core (csrc/) for the extension modules.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libcpp cimport bool as cbool
from libcpp.string cimport string
from libcpp.vector cimport vector


cdef extern from "<string_view>" namespace "std" nogil:
    cppclass string_view:
        string_view()
        string_view(const char*, size_t)


cdef extern from "py_glue.hpp" namespace "memkv::py":
    void raise_py_error()
    void install_log_sink(int min_level)


cdef extern from "../csrc/wire/session.hpp" namespace "memkv::wire":
    cppclass Key32:
        pass


cdef extern from "py_glue.hpp" namespace "memkv::py":
    void copy_key(Key32& dst, const unsigned char* src)


cdef extern from "../csrc/common/crc32c.hpp" namespace "memkv" nogil:
    uint32_t crc32c(uint32_t crc, const void* data, size_t length)
    const char* crc32c_impl()
