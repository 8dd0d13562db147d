// Our own declarations of the parts of NIXL's backend-plugin ABI that a
// plugin touches; docs/nixl-abi.md describes each one (measured against
// nixl-cu12 1.5.1). No NIXL header is used: every size, offset and the
// virtual-slot order are pinned by static_asserts below, and the tests load
// the plugin into the real NIXL to prove them.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace memkv::nixl {

enum MemType : int { kDram = 0, kVram = 1, kBlk = 2, kObj = 3, kFile = 4 };
enum XferOp : int { kRead = 0, kWrite = 1 };
enum Status : int {
  kInProg = 1,
  kSuccess = 0,
  kErrNotPosted = -1,
  kErrInvalidParam = -2,
  kErrBackend = -3,
  kErrNotFound = -4,
  kErrMismatch = -5,
  kErrNotAllowed = -6,
  kErrRepostActive = -7,
  kErrUnknown = -8,
  kErrNotSupported = -9,
  kErrRemoteDisconnect = -10,
  kErrCanceled = -11,
  kErrNoTelemetry = -12,
};

using Params = std::unordered_map<std::string, std::string>;
using MemList = std::vector<MemType>;
using QueryResponse = std::optional<Params>;
using NotifList = std::vector<std::pair<std::string, std::string>>;

// Backend metadata and request handles: NIXL only stores and hands back
// pointers to these; both have a virtual destructor at slot 0/1.
class BackendMD {
 public:
  explicit BackendMD(bool is_private) : is_private_(is_private) {}
  virtual ~BackendMD() = default;

 protected:
  bool is_private_;
};

class RequestHandle {
 public:
  RequestHandle() = default;
  virtual ~RequestHandle() = default;
};

struct BasicDesc {
  uintptr_t addr;
  size_t len;
  uint64_t dev_id;
};
struct BlobDesc : BasicDesc {
  std::string meta_info;
};
struct MetaDesc : BasicDesc {
  BackendMD* metadata;
};

// Read-only view of NIXL's descriptor list (a class with a vtable, a memory
// type and a vector of descriptors). We never construct or copy one.
template <class Desc>
struct DescListView {
  void* vptr;
  MemType type;
  std::vector<Desc> descs;

  size_t size() const { return descs.size(); }
  const Desc& operator[](size_t i) const { return descs[i]; }
};
using MetaDescList = DescListView<MetaDesc>;
using BlobDescList = DescListView<BlobDesc>;

struct InitParams {
  std::string local_agent;
  std::string type;
  Params* custom_params;
  bool enable_prog_thread;
  uint64_t progress_delay_us;
  int sync_mode;
  bool enable_telemetry;
};

struct OptArgs {
  std::string notif_msg;
  bool has_notif;
  std::string custom_param;
};

struct TelemetryEvent {
  uint32_t type;
  uint64_t value;
};

// The engine base: NIXL's data members (it reads backendType and initErr)
// and its 27 virtual slots, in order. Slots 15-26 have defaults here as in
// NIXL; engines override what they support.
class EngineBase {
 public:
  explicit EngineBase(const InitParams* p)
      : backend_type_(p->type),
        custom_params_(*p->custom_params),
        local_agent_(p->local_agent),
        enable_telemetry_(p->enable_telemetry) {}
  EngineBase(const EngineBase&) = delete;

  virtual ~EngineBase() = default;                                              // 0, 1
  virtual bool supportsRemote() const = 0;                                      // 2
  virtual bool supportsLocal() const = 0;                                       // 3
  virtual bool supportsNotif() const = 0;                                       // 4
  virtual MemList getSupportedMems() const = 0;                                 // 5
  virtual Status registerMem(const BlobDesc& mem, const MemType& type, BackendMD*& out) = 0;  // 6
  virtual Status deregisterMem(BackendMD* meta) = 0;                            // 7
  virtual Status connect(const std::string& remote_agent) = 0;                  // 8
  virtual Status disconnect(const std::string& remote_agent) = 0;               // 9
  virtual Status unloadMD(BackendMD* input) = 0;                                // 10
  virtual Status prepXfer(const XferOp& op, const MetaDescList& local, const MetaDescList& remote,
                          const std::string& remote_agent, RequestHandle*& handle,
                          const OptArgs* opt_args) const = 0;                   // 11
  virtual Status postXfer(const XferOp& op, const MetaDescList& local, const MetaDescList& remote,
                          const std::string& remote_agent, RequestHandle*& handle,
                          const OptArgs* opt_args) const = 0;                   // 12
  virtual Status checkXfer(RequestHandle* handle) const = 0;                    // 13
  virtual Status releaseReqH(RequestHandle* handle) const = 0;                  // 14
  virtual Status prepMemView(const void* remote_list, void*& view, const OptArgs*) const {  // 15
    (void)remote_list;
    (void)view;
    return kErrNotSupported;
  }
  virtual Status prepMemView(const MetaDescList& local, void*& view, const OptArgs*) const {  // 16
    (void)local;
    (void)view;
    return kErrNotSupported;
  }
  virtual void releaseMemView(void*) const {}                                    // 17
  virtual Status getPublicData(const BackendMD*, std::string&) const { return kErrBackend; }  // 18
  virtual Status getConnInfo(std::string&) const { return kErrBackend; }        // 19
  virtual Status loadRemoteConnInfo(const std::string&, const std::string&) { return kErrBackend; }  // 20
  virtual Status loadRemoteMD(const BlobDesc&, const MemType&, const std::string&, BackendMD*&) {  // 21
    return kErrBackend;
  }
  virtual Status loadLocalMD(BackendMD*, BackendMD*&) { return kErrBackend; }   // 22
  virtual Status getNotifs(NotifList&) { return kErrBackend; }                  // 23
  virtual Status genNotif(const std::string&, const std::string&) const { return kErrBackend; }  // 24
  virtual Status queryMem(const BlobDescList&, std::vector<QueryResponse>&) const {  // 25
    return kErrNotSupported;
  }
  // 26: estimateXferCost(op, local, remote, agent, handle, duration, margin, method, args);
  // every argument is passed by pointer or reference, so pointers stand in.
  virtual Status estimateXferCost(const XferOp&, const MetaDescList&, const MetaDescList&, const std::string&,
                                  RequestHandle* const&, void*, void*, void*, const void*) const {
    return kErrNotSupported;
  }

 public:  // NIXL's fields; public so their offsets can be pinned below
  std::string backend_type_;               // 0x08
  Params custom_params_;                   // 0x28
  std::vector<TelemetryEvent> telemetry_;  // 0x60
  std::mutex telemetry_mu_;                // 0x78

  bool init_err_ = false;          // 0xa0: NIXL destroys an engine created with this set
  const std::string local_agent_;  // 0xa8
  const bool enable_telemetry_;    // 0xc8
};

// The record nixl_plugin_init returns.
struct PluginRecord {
  int api_version;
  EngineBase* (*create_engine)(const InitParams*);
  void (*destroy_engine)(EngineBase*);
  const char* (*get_plugin_name)();
  const char* (*get_plugin_version)();
  Params (*get_backend_options)();
  MemList (*get_backend_mems)();
};
constexpr int kPluginApiVersion = 1;

// ---- layout pins (the tables in docs/nixl-abi.md) ----
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winvalid-offsetof"
static_assert(sizeof(BasicDesc) == 24);
static_assert(sizeof(BlobDesc) == 56 && offsetof(BlobDesc, meta_info) == 24);
static_assert(sizeof(MetaDesc) == 32 && offsetof(MetaDesc, metadata) == 24);
static_assert(sizeof(DescListView<MetaDesc>) == 40 && offsetof(DescListView<MetaDesc>, type) == 8 &&
              offsetof(DescListView<MetaDesc>, descs) == 16);
static_assert(sizeof(InitParams) == 96);
static_assert(offsetof(InitParams, type) == 0x20 && offsetof(InitParams, custom_params) == 0x40 &&
              offsetof(InitParams, enable_prog_thread) == 0x48 && offsetof(InitParams, progress_delay_us) == 0x50 &&
              offsetof(InitParams, sync_mode) == 0x58 && offsetof(InitParams, enable_telemetry) == 0x5c);
static_assert(sizeof(OptArgs) == 72 && offsetof(OptArgs, has_notif) == 0x20 && offsetof(OptArgs, custom_param) == 0x28);
static_assert(sizeof(TelemetryEvent) == 16);
static_assert(sizeof(MemType) == 4 && sizeof(Status) == 4 && sizeof(XferOp) == 4);
static_assert(sizeof(std::string) == 32 && sizeof(Params) == 56 && sizeof(std::mutex) == 40);
static_assert(sizeof(PluginRecord) == 56);
static_assert(sizeof(EngineBase) == 208);
static_assert(offsetof(EngineBase, backend_type_) == 0x08 && offsetof(EngineBase, custom_params_) == 0x28 &&
              offsetof(EngineBase, telemetry_) == 0x60 && offsetof(EngineBase, telemetry_mu_) == 0x78 &&
              offsetof(EngineBase, init_err_) == 0xa0 && offsetof(EngineBase, local_agent_) == 0xa8 &&
              offsetof(EngineBase, enable_telemetry_) == 0xc8);
#pragma GCC diagnostic pop

}  // namespace memkv::nixl
