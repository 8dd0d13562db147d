// The MEMKV NIXL backend engine: OBJ_SEG registrations become MemKV object
// keys (metaInfo, or the decimal devId as KVBM registers blocks), transfers
// become batched gather/scatter ops grouped per node, run asynchronously.
#pragma once
#include <memory>
#include <string>

#include "../client/client.hpp"
#include "abi.hpp"
#include "transfer.hpp"

namespace memkv::nixl {

class MemKVEngine : public EngineBase {
 public:
  explicit MemKVEngine(const InitParams* params);
  ~MemKVEngine() override;

  bool supportsRemote() const override { return false; }
  bool supportsLocal() const override { return true; }
  bool supportsNotif() const override { return false; }
  MemList getSupportedMems() const override { return supported_mems(); }

  Status registerMem(const BlobDesc& mem, const MemType& type, BackendMD*& out) override;
  Status deregisterMem(BackendMD* meta) override;
  Status connect(const std::string&) override { return kSuccess; }
  Status disconnect(const std::string&) override { return kSuccess; }
  Status unloadMD(BackendMD*) override { return kSuccess; }  // loadLocalMD hands out the registration itself
  Status loadLocalMD(BackendMD* input, BackendMD*& output) override {
    output = input;
    return kSuccess;
  }
  Status prepXfer(const XferOp& op, const MetaDescList& local, const MetaDescList& remote,
                  const std::string& remote_agent, RequestHandle*& handle, const OptArgs* opt_args) const override;
  Status postXfer(const XferOp& op, const MetaDescList& local, const MetaDescList& remote,
                  const std::string& remote_agent, RequestHandle*& handle, const OptArgs* opt_args) const override;
  Status checkXfer(RequestHandle* handle) const override;
  Status releaseReqH(RequestHandle* handle) const override;
  Status queryMem(const BlobDescList& descs, std::vector<QueryResponse>& resp) const override;

  static Params default_params();
  // VRAM_SEG only where a CUDA runtime and a device are present at run time.
  static MemList supported_mems();
  static MemList advertised_mems();

 private:
  std::string object_key(const BlobDesc& d) const;
  // DRAM_SEG and VRAM_SEG memory registered with the RDMA rails (a no-op over TCP).
  void register_with_rails(const BlobDesc& mem, const MemType& type, LocalMD* md);

  std::unique_ptr<Client> client_;
  std::unique_ptr<Executor> executor_;
  std::string key_prefix_;
  bool gpudirect_ = true;
  bool gpudirect_logged_ = false;
};

}  // namespace memkv::nixl
