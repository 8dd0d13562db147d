# cython: language_level=3
# distutils: language = c++
"""The native node (data port + store), exposed to nixl_memkv.node. The node
runs on its own native threads; Python only starts, stops and reads stats."""

from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint16_t, uint64_t
from libcpp.memory cimport unique_ptr
from libcpp.string cimport string
from libcpp.vector cimport vector

from memkv_core cimport raise_py_error, install_log_sink, Key32, copy_key

import logging


cdef extern from "../csrc/node/shard_files.hpp" namespace "memkv":
    cpdef enum class FsyncMode:
        Always
        Interval
        Never


cdef extern from "../csrc/node/store.hpp" namespace "memkv":
    cppclass StoreConfig:
        string data_dir
        uint64_t dram_capacity
        uint64_t disk_capacity
        FsyncMode fsync
        int fsync_interval_ms
        int space_wait_ms

    cppclass StoreStats:
        uint64_t keys, dram_keys, disk_keys
        uint64_t dram_used, disk_used, dirty_bytes
        uint64_t dram_capacity, disk_capacity
        uint64_t evictions_dram, evictions_disk, evictions_dropped
        uint64_t corrupt_detected, flush_errors, flushed, pending_parts, disk_reads
        uint64_t arena_bytes, arena_free, arena_prefaulted

    cppclass AccountStats:
        string tenant
        uint64_t dram_quota, disk_quota, dram_used, disk_used, keys, evictions_dram, evictions_disk

    cppclass Store:
        vector[AccountStats] account_stats() nogil
        uint64_t max_value_bytes()
        bint direct_io()
        uint64_t startup_ms()


cdef extern from "../csrc/node/tenants.hpp" namespace "memkv":
    cppclass TenantSpec:
        string name
        Key32 key
        string s3_access_key, s3_secret_key
        uint64_t dram_quota, disk_quota

    cppclass TenantCounterSnapshot:
        string name
        bint active
        uint64_t ops, bytes_in, bytes_out, hits, misses, over_quota, connections


cdef extern from "../csrc/s3/door.hpp" namespace "memkv::s3":
    cppclass DoorStats:
        uint64_t requests, errors, bytes_in, bytes_out, connections


cdef extern from "../csrc/node/server.hpp" namespace "memkv":
    int kOpSlots

    cppclass NodeStats:
        StoreStats store
        uint64_t ops[49]
        uint64_t op_errors[49]
        uint64_t bytes_in, bytes_out, hits, misses
        uint64_t connections, connections_total, auth_failures, protocol_errors, rejected_connections
        uint64_t stalled_connections, worker_threads
        uint64_t checksum_failures
        uint64_t rdma_connections, rdma_bytes_in, rdma_bytes_out, rdma_node_checksummed
        DoorStats s3

    cppclass NodeOptions:
        string host
        uint16_t port
        Key32 auth_key
        NodeId node_id
        StoreConfig store
        int max_connections
        int io_timeout_ms
        vector[string] rdma_devices
        int s3_port

    cppclass Node:
        Node(NodeOptions) except +raise_py_error
        void start() except +raise_py_error nogil
        void stop() except +raise_py_error nogil
        uint16_t port()
        int s3_port()
        NodeStats stats() nogil
        Store& store() nogil
        void set_tenants(const vector[TenantSpec]&, vector[string]*, vector[string]*) except +raise_py_error nogil
        vector[TenantCounterSnapshot] tenant_counters() nogil


cdef extern from "py_glue.hpp" namespace "memkv::py":
    cppclass NodeId:
        pass
    void copy_node_id(NodeId& dst, const unsigned char* src)


cdef extern from "../csrc/wire/protocol.hpp" namespace "memkv::wire":
    const char* op_name(uint8_t op)


def install_native_logging():
    """Routes native log lines to the `memkv.native` logger at its current
    level (call again after configuring logging: lines below it are never
    formatted natively)."""
    install_log_sink(logging.getLogger("memkv.native").getEffectiveLevel())


install_native_logging()

_FSYNC = {"always": FsyncMode.Always, "interval": FsyncMode.Interval, "never": FsyncMode.Never}


cdef class NativeNode:
    cdef unique_ptr[Node] n

    def __cinit__(self, *, str host, int port, bytes auth_key, bytes node_id, str data_dir, uint64_t dram_capacity,
                  uint64_t disk_capacity, str fsync, int fsync_interval_ms, int max_connections,
                  int io_timeout_ms=60000, int space_wait_ms=30000, list rdma_devices=None, int s3_port=-1):
        cdef NodeOptions o
        if len(auth_key) != 32 or len(node_id) != 16:
            raise ValueError("auth_key must be 32 bytes and node_id 16 bytes")
        o.host = host.encode()
        o.port = port
        copy_key(o.auth_key, <const unsigned char*>PyBytes_AS_STRING(auth_key))
        copy_node_id(o.node_id, <const unsigned char*>PyBytes_AS_STRING(node_id))
        o.store.data_dir = data_dir.encode()
        o.store.dram_capacity = dram_capacity
        o.store.disk_capacity = disk_capacity
        o.store.fsync = _FSYNC[fsync]
        o.store.fsync_interval_ms = fsync_interval_ms
        o.store.space_wait_ms = space_wait_ms
        o.max_connections = max_connections
        o.io_timeout_ms = io_timeout_ms
        for d in rdma_devices or []:
            o.rdma_devices.push_back(d.encode())
        o.s3_port = s3_port
        self.n.reset(new Node(o))

    def start(self):
        with nogil:
            self.n.get().start()

    def stop(self):
        with nogil:
            self.n.get().stop()

    @property
    def port(self):
        return self.n.get().port()

    @property
    def s3_port(self):
        """The S3 door's port, or None without a door."""
        p = self.n.get().s3_port()
        return None if p < 0 else p

    def set_tenants(self, list specs):
        """specs: (name, 32-byte key, dram_quota, disk_quota, s3 access key, s3 secret) each. Returns
        (added, revoked) names: revoked tenants' connections close at their
        next op."""
        cdef vector[TenantSpec] v
        cdef TenantSpec t
        cdef vector[string] added, revoked
        for name, key, dram_quota, disk_quota, s3_access, s3_secret in specs:
            if len(key) != 32:
                raise ValueError(f"tenant {name}: the key must be 32 bytes")
            t.name = name.encode()
            copy_key(t.key, <const unsigned char*>PyBytes_AS_STRING(key))
            t.dram_quota = dram_quota
            t.disk_quota = disk_quota
            t.s3_access_key = s3_access.encode()
            t.s3_secret_key = s3_secret.encode()
            v.push_back(t)
        with nogil:
            self.n.get().set_tenants(v, &added, &revoked)
        return [a.decode() for a in added], [r.decode() for r in revoked]

    def tenant_stats(self):
        """Per tenant: usage and quotas (store) joined with op counters (node)."""
        cdef vector[AccountStats] acc
        cdef vector[TenantCounterSnapshot] cnt
        with nogil:
            acc = self.n.get().store().account_stats()
            cnt = self.n.get().tenant_counters()
        out = {}
        for c in cnt:
            out[c.name.decode()] = {"active": c.active, "ops": c.ops, "bytes_in": c.bytes_in,
                                    "bytes_out": c.bytes_out, "hits": c.hits, "misses": c.misses,
                                    "over_quota": c.over_quota, "connections_total": c.connections}
        for a in acc:
            row = out.setdefault(a.tenant.decode(), {"active": False, "ops": 0, "bytes_in": 0, "bytes_out": 0,
                                                      "hits": 0, "misses": 0, "over_quota": 0,
                                                      "connections_total": 0})
            row.update({"keys": a.keys, "dram_bytes_used": a.dram_used, "dram_quota_bytes": a.dram_quota,
                        "disk_bytes_used": a.disk_used, "disk_quota_bytes": a.disk_quota,
                        "evictions_dram": a.evictions_dram, "evictions_disk": a.evictions_disk})
        return out

    @property
    def max_value_bytes(self):
        return self.n.get().store().max_value_bytes()

    @property
    def direct_io(self):
        return self.n.get().store().direct_io()

    @property
    def startup_ms(self):
        return self.n.get().store().startup_ms()

    def stats(self):
        cdef NodeStats s
        with nogil:
            s = self.n.get().stats()
        ops = {}
        errors = {}
        cdef int i
        for i in range(kOpSlots):
            name = op_name(i).decode()
            if name != "unknown":
                ops[name] = s.ops[i]
                errors[name] = s.op_errors[i]
        st = s.store
        return {
            "keys": st.keys, "dram_keys": st.dram_keys, "disk_keys": st.disk_keys,
            "dram_bytes_used": st.dram_used, "disk_bytes_used": st.disk_used, "dirty_bytes": st.dirty_bytes,
            "dram_capacity_bytes": st.dram_capacity, "disk_capacity_bytes": st.disk_capacity,
            "evictions_dram": st.evictions_dram, "evictions_disk": st.evictions_disk,
            "evictions_dropped": st.evictions_dropped, "corrupt_records": st.corrupt_detected,
            "flush_errors": st.flush_errors, "flushed": st.flushed, "pending_parts": st.pending_parts,
            "disk_reads": st.disk_reads,
            "arena_bytes": st.arena_bytes, "arena_free_bytes": st.arena_free,
            "arena_prefaulted_bytes": st.arena_prefaulted,
            "ops": ops, "op_errors": errors,
            "bytes_in": s.bytes_in, "bytes_out": s.bytes_out, "hits": s.hits, "misses": s.misses,
            "connections": s.connections, "connections_total": s.connections_total,
            "auth_failures": s.auth_failures, "protocol_errors": s.protocol_errors,
            "rejected_connections": s.rejected_connections, "checksum_failures": s.checksum_failures,
            "stalled_connections": s.stalled_connections, "worker_threads": s.worker_threads,
            "rdma_connections": s.rdma_connections, "rdma_bytes_in": s.rdma_bytes_in,
            "rdma_bytes_out": s.rdma_bytes_out,
            "rdma_node_checksummed": s.rdma_node_checksummed,
            "s3_requests": s.s3.requests, "s3_errors": s.s3.errors, "s3_bytes_in": s.s3.bytes_in,
            "s3_bytes_out": s.s3.bytes_out, "s3_connections_total": s.s3.connections,
        }
