# cython: language_level=3, boundscheck=False, wraparound=False
# distutils: language = c++
"""The native client, exposed to nixl_memkv.client. Every call that touches
the network releases the GIL; values are passed as raw pointers into the
caller's buffers (bytes, bytearray, numpy arrays, torch CPU tensors)."""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE, PyBUF_ANY_CONTIGUOUS
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free, calloc
from libcpp cimport bool as cbool
from libcpp.memory cimport unique_ptr
from libcpp.string cimport string
from libcpp.vector cimport vector

from memkv_core cimport string_view, raise_py_error, install_log_sink, Key32, copy_key
cimport memkv_core as core

import logging


cdef extern from "../csrc/client/pool.hpp" namespace "memkv":
    cppclass ServerAddr:
        string name


cdef extern from "../csrc/client/client.hpp" namespace "memkv":
    cppclass ClientOptions:
        vector[ServerAddr] servers
        Key32 auth_key
        string tenant
        int num_connections
        int connect_timeout_ms
        int op_timeout_ms

    cppclass Segment:
        uint64_t offset
        void* ptr
        uint64_t len

    cppclass ObjectStat:
        uint64_t size
        uint32_t crc
        cbool in_dram
        cbool on_disk
        uint64_t written_ns

    cppclass Client:
        Client(ClientOptions) except +raise_py_error
        size_t num_servers()
        size_t route(string_view key) nogil
        void put(string_view, const void*, uint64_t) except +raise_py_error nogil
        int64_t get_into(string_view, void*, uint64_t) except +raise_py_error nogil
        int64_t exists(string_view) except +raise_py_error nogil
        cbool remove(string_view) except +raise_py_error nogil
        cbool stat(string_view, ObjectStat*) except +raise_py_error nogil
        string ping(size_t) except +raise_py_error nogil
        cbool put_part(string_view, uint64_t, uint64_t, uint64_t, const void*, uint64_t) except +raise_py_error nogil
        void abort_part(string_view, uint64_t) except +raise_py_error nogil
        void batch_put(const vector[string_view]&, const vector[const void*]&, const vector[uint64_t]&,
                       vector[int]*, vector[string]*) except +raise_py_error nogil
        void batch_get_into(const vector[string_view]&, const vector[void*]&, const vector[uint64_t]&,
                            vector[int64_t]*, vector[string]*) except +raise_py_error nogil
        void batch_exists(const vector[string_view]&, vector[int64_t]*, vector[string]*) except +raise_py_error nogil
        void batch_remove(const vector[string_view]&, vector[int]*, vector[string]*) except +raise_py_error nogil
        void batch_put_segments(const vector[string_view]&, const vector[vector[Segment]]&, vector[int]*,
                                vector[string]*) except +raise_py_error nogil
        void batch_get_segments(const vector[string_view]&, const vector[vector[Segment]]&, vector[int64_t]*,
                                vector[string]*) except +raise_py_error nogil
        void close() nogil
        cbool register_memory(void*, uint64_t) except +raise_py_error nogil
        cbool unregister_memory(void*) except +raise_py_error nogil
        cbool is_registered(const void*, uint64_t) nogil
        string transport_name()
        string rail_device(size_t)

    int64_t kItemMissing
    int64_t kItemChecksum
    int64_t kItemTooSmall
    int64_t kItemUnavailable
    int64_t kItemError
    int kStatusUnavailable


ctypedef uint8_t* (*AllocFn)(void* ctx, uint64_t size) noexcept

cdef extern from "client_glue.hpp" namespace "memkv::py":
    int64_t get_alloc_c(Client&, string_view, AllocFn, void*) except +raise_py_error nogil
    void set_server(ServerAddr&, const string&, const string&, uint16_t)
    void set_transport(ClientOptions&, int, const vector[string]&, uint64_t, uint64_t)
    vector[uint64_t] rdma_stats(Client&)
    cbool rdma_built()
    string rdma_unavailable_reason()
    vector[string] rdma_list_devices()
    cppclass RawSession:
        RawSession(const string&, uint16_t, const unsigned char*, int, const string&) except +raise_py_error
        string encode(uint8_t, const string&, const string&) except +raise_py_error
        string encode_sealed(uint8_t, const string&, const vector[string]&) except +raise_py_error
        void send_raw(const string&) except +raise_py_error nogil
        int recv_status() except +raise_py_error nogil


def install_native_logging():
    """Routes native log lines to the `memkv.native` logger at its current
    level (call again after configuring logging: lines below it are never
    formatted natively)."""
    install_log_sink(logging.getLogger("memkv.native").getEffectiveLevel())


install_native_logging()

ITEM_MISSING = kItemMissing
ITEM_CHECKSUM = kItemChecksum
ITEM_TOO_SMALL = kItemTooSmall
ITEM_UNAVAILABLE = kItemUnavailable
ITEM_ERROR = kItemError
STATUS_UNAVAILABLE = kStatusUnavailable


cdef class _Views:
    """Holds the memory of a list of Python objects for the length of one
    native call: buffer-protocol objects through Py_buffer, torch tensors
    through data_ptr() (torch does not export the buffer protocol)."""
    cdef Py_buffer* bufs
    cdef int n
    cdef vector[void*] ptrs
    cdef vector[uint64_t] lens
    cdef list keep

    def __cinit__(self):
        self.bufs = NULL
        self.n = 0
        self.keep = []

    cdef int acquire(self, list objs, bint writable, _RegistrationCache cache=None) except -1:
        cdef int flags = PyBUF_ANY_CONTIGUOUS | (PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
        cdef Py_ssize_t count = len(objs)
        self.bufs = <Py_buffer*>calloc(count if count else 1, sizeof(Py_buffer))
        if self.bufs == NULL:
            raise MemoryError()
        self.ptrs.reserve(count)
        self.lens.reserve(count)
        for obj in objs:
            if PyObject_CheckBuffer(obj):
                PyObject_GetBuffer(obj, &self.bufs[self.n], flags)
                self.ptrs.push_back(self.bufs[self.n].buf)
                self.lens.push_back(<uint64_t>self.bufs[self.n].len)
                self.n += 1
                if cache is not None and (type(obj) is bytes or hasattr(obj, "__array_interface__")):
                    cache.note(obj, self.ptrs.back(), self.lens.back(), writable)
            elif hasattr(obj, "data_ptr") and hasattr(obj, "element_size"):
                if getattr(obj, "device", None) is not None and obj.device.type != "cpu":
                    raise TypeError("tensor is on %s: MemKV reads and writes CPU memory (copy it to the CPU first)" % obj.device)
                if not obj.is_contiguous():
                    raise TypeError("tensor is not contiguous: call .contiguous() first")
                self.keep.append(obj)
                self.ptrs.push_back(<void*><size_t>obj.data_ptr())
                self.lens.push_back(<uint64_t>(obj.numel() * obj.element_size()))
                if cache is not None:
                    cache.note(obj, self.ptrs.back(), self.lens.back(), writable)
            else:
                raise TypeError("expected bytes, bytearray, memoryview, a numpy array or a CPU torch tensor, got %s"
                                % type(obj).__name__)
        return 0

    def __dealloc__(self):
        cdef int i
        if self.bufs != NULL:
            for i in range(self.n):
                PyBuffer_Release(&self.bufs[i])
            free(self.bufs)


cdef class _RegistrationCache:
    """Buffers passed again and again (a reused numpy array, a torch tensor,
    bytes) are registered with the RDMA rails on their second use, so later
    transfers from and to them are zero-copy instead of staged. Each
    registered object is kept alive while registered (so no other memory can
    take its address), and the whole is bounded in bytes, least recently
    used out first. Only those types: holding an export of a bytearray would
    stop its owner from resizing it."""
    cdef Client* c
    cdef object entries  # OrderedDict: (addr, len) -> object kept alive
    cdef object seen     # OrderedDict: (addr, len) seen once, bounded
    cdef uint64_t limit
    cdef readonly uint64_t used, registrations, evictions

    def __cinit__(self):
        import collections
        self.c = NULL
        self.entries = collections.OrderedDict()
        self.seen = collections.OrderedDict()

    cdef void attach(self, Client* c, uint64_t limit):
        self.c = c
        self.limit = limit

    cdef int note(self, object obj, void* ptr, uint64_t n, bint writable) except -1:
        if self.c == NULL or n < MIN_CACHED or n > self.limit:
            return 0
        key = (<size_t>ptr, n)
        if key in self.entries:
            self.entries.move_to_end(key)
            return 0
        if key not in self.seen:
            self.seen[key] = None
            if len(self.seen) > 4096:
                self.seen.popitem(last=False)
            return 0
        del self.seen[key]
        if self.c.is_registered(ptr, n):  # inside an explicit registration already
            return 0
        cdef cbool ok
        with nogil:
            ok = self.c.register_memory(ptr, n)
        if not ok:
            return 0
        # The tensor's storage (not the tensor, which may be resized onto new
        # memory) or the buffer's exporter stays alive while registered.
        self.entries[key] = obj.untyped_storage() if hasattr(obj, "untyped_storage") else obj
        self.used += n
        self.registrations += 1
        while self.used > self.limit:
            self._evict_oldest()
        return 0

    cdef void _evict_oldest(self):
        (addr, n), _ = self.entries.popitem(last=False)
        self.c.unregister_memory(<void*><size_t>addr)
        self.used -= n
        self.evictions += 1

    cdef void forget(self, size_t addr):
        for key in [k for k in self.entries if k[0] == addr]:
            del self.entries[key]
            self.c.unregister_memory(<void*>addr)
            self.used -= key[1]

    cdef void clear(self):
        if self.c != NULL:
            for addr, _ in self.entries:
                self.c.unregister_memory(<void*><size_t>addr)
        self.entries.clear()
        self.seen.clear()
        self.used = 0
        self.c = NULL

    def stats(self):
        return {"cached_bytes": self.used, "cached_buffers": len(self.entries), "limit_bytes": self.limit,
                "registrations": self.registrations, "evictions": self.evictions}


MIN_CACHED = 64 * 1024  # smaller buffers are cheaper to stage than to register


cdef extern from "Python.h":
    bint PyObject_CheckBuffer(object)


cdef class _Keys:
    """Keys as string_views into bytes objects kept alive alongside."""
    cdef vector[string_view] views
    cdef list keep

    def __cinit__(self, list keys):
        self.keep = []
        self.views.reserve(len(keys))
        cdef bytes b
        for k in keys:
            b = _key_bytes(k)
            self.keep.append(b)
            self.views.push_back(string_view(PyBytes_AS_STRING(b), len(b)))


cdef inline bytes _key_bytes(object key):
    if isinstance(key, bytes):
        return <bytes>key
    if isinstance(key, str):
        return (<str>key).encode("utf-8")
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise TypeError("key must be str or bytes, got %s" % type(key).__name__)


cdef uint8_t* _alloc_bytes(void* ctx, uint64_t size) noexcept with gil:
    cdef object b
    try:
        b = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>size)
    except MemoryError:
        return NULL
    (<list>ctx).append(b)
    return <uint8_t*>PyBytes_AS_STRING(b)


cdef class NativeClient:
    cdef unique_ptr[Client] c
    cdef readonly list servers
    cdef int _busy       # calls running with the GIL released
    cdef bint _closed
    cdef _RegistrationCache _regs

    def __cinit__(self, list servers, bytes auth_key, int num_connections, int connect_timeout_ms, int op_timeout_ms,
                  str transport="tcp", list rdma_devices=None, uint64_t staging_bytes=256 << 20,
                  uint64_t staging_slot_bytes=16 << 20, uint64_t registration_cache_bytes=1 << 30, str tenant=""):
        """servers: list of (name, host, port); name is the routing identity.
        transport: "tcp", "rdma" (RDMA or an error) or "auto" (RDMA to nodes
        that offer it). tenant: whose key auth_key is ("" = the cluster key)."""
        cdef ClientOptions opts
        cdef ServerAddr a
        cdef vector[string] devices
        for d in rdma_devices or []:
            devices.push_back(d.encode())
        set_transport(opts, {"tcp": 0, "rdma": 1, "auto": 2}[transport], devices, staging_bytes, staging_slot_bytes)
        if len(auth_key) != 32:
            raise ValueError("auth key must be 32 bytes")
        for name, host, port in servers:
            set_server(a, name.encode(), host.encode(), port)
            opts.servers.push_back(a)
        copy_key(opts.auth_key, <const unsigned char*>PyBytes_AS_STRING(auth_key))
        opts.tenant = tenant.encode()
        opts.num_connections = num_connections
        opts.connect_timeout_ms = connect_timeout_ms
        opts.op_timeout_ms = op_timeout_ms
        self.c.reset(new Client(opts))
        self.servers = [s[0] for s in servers]
        self._regs = _RegistrationCache()
        if self.c.get().transport_name() == b"rdma" and registration_cache_bytes:
            self._regs.attach(self.c.get(), registration_cache_bytes)

    def route(self, key):
        cdef bytes b = _key_bytes(key)
        cdef Client* cl = self._use()
        try:
            return cl.route(string_view(PyBytes_AS_STRING(b), len(b)))
        finally:
            self._done()

    def put(self, key, value):
        cdef bytes b = _key_bytes(key)
        cdef _Views v = _Views()
        v.acquire([value], False, self._regs)
        cdef string_view k = string_view(PyBytes_AS_STRING(b), len(b))
        cdef void* p = v.ptrs[0]
        cdef uint64_t n = v.lens[0]
        cdef Client* cl = self._use()
        try:
            with nogil:
                cl.put(k, p, n)
        finally:
            self._done()

    def get(self, key):
        cdef bytes b = _key_bytes(key)
        cdef string_view k = string_view(PyBytes_AS_STRING(b), len(b))
        cdef list out = []
        cdef int64_t r
        cdef Client* cl = self._use()
        try:
            with nogil:
                r = get_alloc_c(cl[0], k, _alloc_bytes, <void*>out)
        finally:
            self._done()
        if r < 0:
            return None
        return out[0]

    def get_into(self, key, buffer):
        cdef bytes b = _key_bytes(key)
        cdef _Views v = _Views()
        v.acquire([buffer], True, self._regs)
        cdef string_view k = string_view(PyBytes_AS_STRING(b), len(b))
        cdef void* p = v.ptrs[0]
        cdef uint64_t n = v.lens[0]
        cdef int64_t r
        cdef Client* cl = self._use()
        try:
            with nogil:
                r = cl.get_into(k, p, n)
        finally:
            self._done()
        return None if r < 0 else r

    def exists(self, key):
        cdef bytes b = _key_bytes(key)
        cdef string_view k = string_view(PyBytes_AS_STRING(b), len(b))
        cdef int64_t r
        cdef Client* cl = self._use()
        try:
            with nogil:
                r = cl.exists(k)
        finally:
            self._done()
        return None if r < 0 else r

    def remove(self, key):
        cdef bytes b = _key_bytes(key)
        cdef string_view k = string_view(PyBytes_AS_STRING(b), len(b))
        cdef cbool r
        cdef Client* cl = self._use()
        try:
            with nogil:
                r = cl.remove(k)
        finally:
            self._done()
        return r

    def stat(self, key):
        cdef bytes b = _key_bytes(key)
        cdef string_view k = string_view(PyBytes_AS_STRING(b), len(b))
        cdef ObjectStat st
        cdef cbool found
        cdef Client* cl = self._use()
        try:
            with nogil:
                found = cl.stat(k, &st)
        finally:
            self._done()
        if not found:
            return None
        return {"size": st.size, "crc32c": st.crc, "in_dram": st.in_dram, "on_disk": st.on_disk,
                "written_ns": st.written_ns}

    def ping(self, size_t server):
        cdef string r
        cdef Client* cl = self._use()
        try:
            with nogil:
                r = cl.ping(server)
        finally:
            self._done()
        return r.decode()

    def put_part(self, key, uint64_t upload_id, uint64_t total, uint64_t offset, value):
        cdef bytes b = _key_bytes(key)
        cdef _Views v = _Views()
        v.acquire([value], False, self._regs)
        cdef string_view k = string_view(PyBytes_AS_STRING(b), len(b))
        cdef void* p = v.ptrs[0]
        cdef uint64_t n = v.lens[0]
        cdef cbool done
        cdef Client* cl = self._use()
        try:
            with nogil:
                done = cl.put_part(k, upload_id, total, offset, p, n)
        finally:
            self._done()
        return done

    def abort_part(self, key, uint64_t upload_id):
        cdef bytes b = _key_bytes(key)
        cdef string_view k = string_view(PyBytes_AS_STRING(b), len(b))
        cdef Client* cl = self._use()
        try:
            with nogil:
                cl.abort_part(k, upload_id)
        finally:
            self._done()

    def batch_put(self, list keys, list values):
        """Returns (statuses, errors): a wire status per key, messages per failed node."""
        if len(keys) != len(values):
            raise ValueError("batch_put: %d keys but %d values" % (len(keys), len(values)))
        cdef _Keys ks = _Keys(keys)
        cdef _Views v = _Views()
        v.acquire(values, False, self._regs)
        cdef vector[const void*] ptrs
        cdef size_t i
        for i in range(v.ptrs.size()):
            ptrs.push_back(v.ptrs[i])
        cdef vector[int] st
        cdef vector[string] errs
        cdef Client* cl = self._use()
        try:
            with nogil:
                cl.batch_put(ks.views, ptrs, v.lens, &st, &errs)
        finally:
            self._done()
        return list(st), [e.decode() for e in errs]

    def batch_get_into(self, list keys, list buffers):
        """Returns (results, errors): a size or a negative ITEM_* code per key."""
        if len(keys) != len(buffers):
            raise ValueError("batch_get_into: %d keys but %d buffers" % (len(keys), len(buffers)))
        cdef _Keys ks = _Keys(keys)
        cdef _Views v = _Views()
        v.acquire(buffers, True, self._regs)
        cdef vector[int64_t] res
        cdef vector[string] errs
        cdef Client* cl = self._use()
        try:
            with nogil:
                cl.batch_get_into(ks.views, v.ptrs, v.lens, &res, &errs)
        finally:
            self._done()
        return list(res), [e.decode() for e in errs]

    def batch_exists(self, list keys):
        cdef _Keys ks = _Keys(keys)
        cdef vector[int64_t] res
        cdef vector[string] errs
        cdef Client* cl = self._use()
        try:
            with nogil:
                cl.batch_exists(ks.views, &res, &errs)
        finally:
            self._done()
        return list(res), [e.decode() for e in errs]

    def batch_remove(self, list keys):
        cdef _Keys ks = _Keys(keys)
        cdef vector[int] st
        cdef vector[string] errs
        cdef Client* cl = self._use()
        try:
            with nogil:
                cl.batch_remove(ks.views, &st, &errs)
        finally:
            self._done()
        return list(st), [e.decode() for e in errs]

    def batch_put_segments(self, list keys, list seglists):
        """Gather writes: each key's value is the concatenation of its
        segments, given as (offset, target, length) sorted by offset and tiling
        [0, total). target is a buffer object (length may be None) or a raw
        address (an int) that the caller keeps valid for the call."""
        if len(keys) != len(seglists):
            raise ValueError("batch_put_segments: %d keys but %d segment lists" % (len(keys), len(seglists)))
        cdef _Keys ks = _Keys(keys)
        cdef _Views v = _Views()
        cdef vector[vector[Segment]] segs
        _fill_segments(seglists, &segs, v, False, self._regs)
        cdef vector[int] st
        cdef vector[string] errs
        cdef Client* cl = self._use()
        try:
            with nogil:
                cl.batch_put_segments(ks.views, segs, &st, &errs)
        finally:
            self._done()
        return list(st), [e.decode() for e in errs]

    def batch_get_segments(self, list keys, list seglists):
        """Scatter reads: object bytes [offset, offset + length) of each
        segment land at its target; only the span the segments cover is
        fetched. Returns (results, errors): the object's full size or a
        negative ITEM_* code per key."""
        if len(keys) != len(seglists):
            raise ValueError("batch_get_segments: %d keys but %d segment lists" % (len(keys), len(seglists)))
        cdef _Keys ks = _Keys(keys)
        cdef _Views v = _Views()
        cdef vector[vector[Segment]] segs
        _fill_segments(seglists, &segs, v, True, self._regs)
        cdef vector[int64_t] res
        cdef vector[string] errs
        cdef Client* cl = self._use()
        try:
            with nogil:
                cl.batch_get_segments(ks.views, segs, &res, &errs)
        finally:
            self._done()
        return list(res), [e.decode() for e in errs]

    def register_memory(self, uint64_t addr, uint64_t length):
        """Registers [addr, addr + length) with the RDMA rails (zero-copy
        from then on); False when this client has no RDMA."""
        cdef Client* cl = self._use()
        cdef cbool r
        try:
            with nogil:
                r = cl.register_memory(<void*>addr, length)
        finally:
            self._done()
        return r

    def register_buffer(self, obj):
        """Registers the memory of `obj` (buffer protocol, or a CPU tensor)
        with the RDMA rails. Returns (address, holder) where holder keeps the
        memory exported while registered, or None when there is no RDMA."""
        cdef _Views v = _Views()
        v.acquire([obj], True)
        addr = <uint64_t><size_t>v.ptrs[0]
        self._regs.forget(addr)  # an explicit registration replaces a cached one
        if not self.register_memory(addr, v.lens[0]):
            return None
        return addr, v

    @staticmethod
    def buffer_address(obj):
        cdef _Views v = _Views()
        v.acquire([obj], False)
        return <uint64_t><size_t>v.ptrs[0]

    def unregister_memory(self, uint64_t addr):
        cdef Client* cl = self._use()
        cdef cbool r
        try:
            with nogil:
                r = cl.unregister_memory(<void*>addr)
        finally:
            self._done()
        return r

    @property
    def transport(self):
        cdef Client* cl = self._use()
        try:
            return cl.transport_name().decode()
        finally:
            self._done()

    def rail_device(self, size_t server):
        cdef Client* cl = self._use()
        try:
            return cl.rail_device(server).decode()
        finally:
            self._done()

    def registration_cache_stats(self):
        return self._regs.stats()

    def rdma_stats(self):
        cdef Client* cl = self._use()
        cdef vector[uint64_t] v
        try:
            v = rdma_stats(cl[0])
        finally:
            self._done()
        return {"zero_copy_bytes": v[0], "staged_bytes": v[1], "temp_registered_bytes": v[2],
                "inline_frames": v[3], "staging_waits": v[4], "registered_bytes": v[5]}

    def close(self):
        """Closes idle connections and refuses new calls. Calls still in
        flight finish on their connections; the native client is freed when
        the last of them returns."""
        if self._closed:
            return
        self._closed = True
        self._regs.clear()
        cdef Client* cl = self.c.get()
        if cl != NULL:
            with nogil:
                cl.close()
            if self._busy == 0:
                self.c.reset()

    cdef Client* _use(self) except NULL:
        # Under the GIL: counts calls that will run with it released, so
        # close() never frees the client beneath one.
        if self._closed or self.c.get() == NULL:
            from nixl_memkv.errors import ConnectionFailed
            raise ConnectionFailed("this MemKV client is closed")
        self._busy += 1
        return self.c.get()

    cdef void _done(self):
        self._busy -= 1
        if self._closed and self._busy == 0:
            self.c.reset()


cdef int _fill_segments(list seglists, vector[vector[Segment]]* out, _Views v, bint writable,
                        _RegistrationCache cache=None) except -1:
    # Buffer targets are acquired first (in one _Views, released after the
    # call); raw addresses are taken as given.
    cdef list objs = []
    for segs in seglists:
        for seg in segs:
            if not isinstance(seg[1], int):
                objs.append(seg[1])
    v.acquire(objs, writable, cache)
    cdef size_t vi = 0
    cdef Segment g
    cdef uint64_t prev_end
    out.resize(len(seglists))
    for i, segs in enumerate(seglists):
        prev_end = 0
        for seg in segs:
            offset, target, length = seg
            g.offset = offset
            if isinstance(target, int):
                if length is None or target == 0:
                    raise ValueError("a segment given by address needs a non-null address and a length")
                g.ptr = <void*><size_t>target
                g.len = length
            else:
                g.ptr = v.ptrs[vi]
                g.len = v.lens[vi] if length is None else length
                if g.len > v.lens[vi]:
                    raise ValueError("segment length %d exceeds its buffer (%d bytes)" % (g.len, v.lens[vi]))
                vi += 1
            if g.offset < prev_end:
                raise ValueError("segments must be sorted by offset and must not overlap")
            prev_end = g.offset + g.len
            out[0][i].push_back(g)
    return 0


cdef class _RawSession:
    """Test hook: one authenticated session with access to exact frame bytes."""
    cdef unique_ptr[RawSession] s

    def __cinit__(self, str host, int port, bytes auth_key, int timeout_ms=5000, str tenant=""):
        self.s.reset(new RawSession(host.encode(), port, <const unsigned char*>PyBytes_AS_STRING(auth_key), timeout_ms,
                                    tenant.encode()))

    def encode(self, int op, bytes meta, bytes data=b""):
        return <bytes>self.s.get().encode(op, meta, data)

    def encode_sealed(self, int op, bytes meta, list values):
        cdef vector[string] vs
        for v in values:
            vs.push_back(<bytes>v)
        return <bytes>self.s.get().encode_sealed(op, meta, vs)

    def send_raw(self, bytes frame):
        cdef string f = frame
        with nogil:
            self.s.get().send_raw(f)

    def recv_status(self):
        cdef int r
        with nogil:
            r = self.s.get().recv_status()
        return r


def crc32c(data, uint32_t crc=0):
    """CRC-32C of a buffer (the checksum MemKV carries with every value)."""
    cdef _Views v = _Views()
    v.acquire([data], False)
    cdef uint32_t r
    with nogil:
        r = core.crc32c(crc, v.ptrs[0], v.lens[0])
    return r


def crc32c_impl():
    return core.crc32c_impl().decode()


def rdma_build_info():
    """(built with the RDMA transport, why RDMA cannot be used here or "")."""
    return bool(rdma_built()), rdma_unavailable_reason().decode()


def rdma_devices():
    """The RDMA devices libibverbs shows on this host."""
    return [d.decode() for d in rdma_list_devices()]
