#include "client_transport.hpp"

#include "../common/error.hpp"
#include "../common/log.hpp"
#include "verbs.hpp"

namespace memkv::transport {

ClientTransport::ClientTransport(const TransportOptions& opts) : mode_(opts.mode) {
  if (mode_ == Mode::Tcp) return;
  std::string why = rdma::verbs_unavailable_reason();
  if (why.empty()) {
#if MEMKV_WITH_VERBS
    try {
      rdma_ = std::make_unique<RdmaClient>(opts.rdma_devices, opts.staging_bytes, opts.staging_slot_bytes);
    } catch (const Error& e) {
      if (mode_ == Mode::Rdma) fail(ErrorKind::Config, std::string("MEMKV_TRANSPORT=rdma: ") + e.what());
      why = e.what();
    }
#endif
  } else if (mode_ == Mode::Rdma) {
    fail(ErrorKind::Config, "MEMKV_TRANSPORT=rdma: " + why + "; or set MEMKV_TRANSPORT=auto to fall back to TCP");
  }
  if (!rdma_) log(LogLevel::Info, "transport=tcp for every node: " + why);
}

ClientTransport::~ClientTransport() = default;

std::string ClientTransport::rail_device(size_t index) const {
#if MEMKV_WITH_VERBS
  if (rdma_) return rdma_->rail(index)->name();
#endif
  (void)index;
  return {};
}

std::unique_ptr<ClientMover> ClientTransport::attach(wire::Session& s, size_t index, const std::string& name,
                                                     int timeout_ms) {
#if MEMKV_WITH_VERBS
  if (rdma_) {
    std::string declined;
    if (auto m = rdma_->connect(s, index, timeout_ms, &declined)) return m;
    if (mode_ == Mode::Rdma)
      fail(ErrorKind::Config, "MEMKV_TRANSPORT=rdma but node " + name + " offers no RDMA: " + declined +
                                  " (start the node with --rdma-devices, or set MEMKV_TRANSPORT=auto)");
    std::lock_guard lk(mu_);
    if (tcp_logged_.insert(index).second)
      log(LogLevel::Info, "transport=tcp to " + name + ": the node offers no RDMA (" + declined + ")");
  }
#endif
  (void)s, (void)index, (void)name, (void)timeout_ms;
  return std::make_unique<TcpClientMover>();
}

}  // namespace memkv::transport
