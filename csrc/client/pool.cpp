#include "pool.hpp"

#include <chrono>

#include "../common/error.hpp"

namespace memkv {

ServerPool::ServerPool(ServerAddr addr, size_t index, const wire::Key32& key, std::string tenant, int size,
                       int connect_timeout_ms, int op_timeout_ms, transport::ClientTransport* transport)
    : addr_(std::move(addr)), index_(index), key_(key), tenant_(std::move(tenant)), size_(size),
      connect_timeout_ms_(connect_timeout_ms),
      op_timeout_ms_(op_timeout_ms), transport_(transport) {}

ServerPool::~ServerPool() = default;

ServerPool::Lease ServerPool::acquire() {
  std::unique_lock<std::mutex> lk(mu_);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(op_timeout_ms_);
  while (idle_.empty() && in_use_ >= size_) {
    if (cv_.wait_until(lk, deadline) == std::cv_status::timeout && idle_.empty() && in_use_ >= size_)
      // The node is fine, just busy with our own other requests: not a
      // connection failure (that would mark it unavailable).
      fail(ErrorKind::Server, "no free connection to " + addr_.name + " within " + std::to_string(op_timeout_ms_) +
                                  " ms: every pooled connection stayed busy (raise MEMKV_NUM_CONNECTIONS)");
  }
  ++in_use_;
  if (!idle_.empty()) {
    Lease l{std::move(idle_.back()), true};
    idle_.pop_back();
    return l;
  }
  lk.unlock();
  try {
    Socket sock = Socket::connect_to(addr_.host, addr_.port, connect_timeout_ms_);
    sock.set_peer(addr_.name);
    sock.set_spin_us(50);
    transport::Connection c;
    c.session = wire::Session::client(std::move(sock), key_, op_timeout_ms_, tenant_);
    c.mover = transport_->attach(*c.session, index_, addr_.name, op_timeout_ms_);
    lk.lock();
    max_value_bytes_ = c.session->peer().max_value_bytes;
    ++connects_;
    return Lease{std::move(c), false};
  } catch (...) {
    if (!lk.owns_lock()) lk.lock();
    --in_use_;
    cv_.notify_one();
    throw;
  }
}

void ServerPool::release(Lease&& lease, bool healthy) {
  std::lock_guard<std::mutex> lk(mu_);
  --in_use_;
  if (healthy && lease.conn.session && lease.conn.mover->usable()) idle_.push_back(std::move(lease.conn));
  cv_.notify_one();
}

void ServerPool::close_idle() {
  std::lock_guard<std::mutex> lk(mu_);
  idle_.clear();
}

}  // namespace memkv
