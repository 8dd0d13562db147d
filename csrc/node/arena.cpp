#include "arena.hpp"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <string>

#include "../common/error.hpp"
#include "../common/log.hpp"
#include "value.hpp"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace memkv {

Arena::Arena(uint64_t capacity) : size_(round_up_page(capacity ? capacity : kPage)) {
  // NORESERVE: the reservation itself commits nothing; pages are faulted in
  // by the prefaulter (or on first use), and charged by the store's budget.
  void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    fail(ErrorKind::Config, "cannot reserve " + std::to_string(size_ >> 20) + " MiB for the DRAM tier: " +
                                std::strerror(errno) + " (lower --dram-capacity)");
  base_ = static_cast<uint8_t*>(p);
  madvise(base_, size_, MADV_HUGEPAGE);  // best effort: transparent huge pages where enabled
  insert_free_locked(0, size_);
}

Arena::~Arena() {
  stop_ = true;
  if (prefaulter_.joinable()) prefaulter_.join();
  munmap(base_, size_);
}

void Arena::prefault_in_background() {
  // A tier larger than the machine's memory (the node warns at start) would
  // be OOM-killed by its own pre-faulting before it served anything: such a
  // tier faults its pages in on first use instead.
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0 && size_ > static_cast<uint64_t>(pages) * static_cast<uint64_t>(page)) {
    log(LogLevel::Warning, "DRAM tier: " + std::to_string(size_ >> 20) + " MiB is more than this machine's " +
                               std::to_string((static_cast<uint64_t>(pages) * static_cast<uint64_t>(page)) >> 20) +
                               " MiB of memory: not pre-faulting it (pages fault in on first use)");
    return;
  }
  prefaulter_ = std::thread([this] {
    // Idle priority: pre-faulting must never compete with serving.
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
    constexpr uint64_t kStep = 64ull << 20;
    for (uint64_t off = 0; off < size_ && !stop_; off += kStep) {
      uint64_t n = std::min(kStep, size_ - off);
      // Populates page tables without touching contents, so extents already
      // handed out (and being written) are safe.
      if (madvise(base_ + off, n, MADV_POPULATE_WRITE) != 0) {
        if (errno == EINVAL)
          log(LogLevel::Info, "DRAM tier: this kernel cannot pre-fault (MADV_POPULATE_WRITE, Linux 5.14+); "
                              "pages fault in on first use");
        else
          log(LogLevel::Warning, std::string("DRAM tier: pre-faulting stopped: ") + std::strerror(errno));
        return;
      }
      prefaulted_.fetch_add(n, std::memory_order_relaxed);
    }
  });
}

void Arena::insert_free_locked(uint64_t off, uint64_t len) {
  free_by_off_.emplace(off, len);
  free_by_len_.emplace(len, off);
  free_total_ += len;
}

void Arena::erase_free_locked(std::map<uint64_t, uint64_t>::iterator it) {
  auto range = free_by_len_.equal_range(it->second);
  for (auto j = range.first; j != range.second; ++j)
    if (j->second == it->first) {
      free_by_len_.erase(j);
      break;
    }
  free_total_ -= it->second;
  free_by_off_.erase(it);
}

void* Arena::alloc(uint64_t bytes) {
  std::lock_guard lk(mu_);
  auto fit = free_by_len_.lower_bound(bytes);  // best fit keeps large extents whole
  if (fit == free_by_len_.end()) return nullptr;
  uint64_t off = fit->second, len = fit->first;
  erase_free_locked(free_by_off_.find(off));
  if (len > bytes) insert_free_locked(off + bytes, len - bytes);
  return base_ + off;
}

void Arena::free(void* p, uint64_t bytes) {
  std::lock_guard lk(mu_);
  uint64_t off = static_cast<uint64_t>(static_cast<uint8_t*>(p) - base_), len = bytes;
  // Coalesce with the free neighbours on both sides.
  auto next = free_by_off_.lower_bound(off);
  if (next != free_by_off_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      off = prev->first;
      len += prev->second;
      erase_free_locked(prev);
    }
  }
  next = free_by_off_.lower_bound(off + len);
  if (next != free_by_off_.end() && next->first == off + len) {
    len += next->second;
    erase_free_locked(next);
  }
  insert_free_locked(off, len);
}

uint64_t Arena::free_bytes() const {
  std::lock_guard lk(mu_);
  return free_total_;
}

}  // namespace memkv
