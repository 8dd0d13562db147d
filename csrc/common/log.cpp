#include "log.hpp"

#include <atomic>
#include <cstdio>

namespace memkv {
namespace {
std::atomic<LogSink> g_sink{nullptr};
std::atomic<int> g_min_level{static_cast<int>(LogLevel::Info)};
}  // namespace

void set_log_sink(LogSink sink, int min_level) {
  g_min_level.store(min_level);
  g_sink.store(sink);
}

bool log_enabled(LogLevel level) { return static_cast<int>(level) >= g_min_level.load(std::memory_order_relaxed); }

void log(LogLevel level, const std::string& msg) {
  if (!log_enabled(level)) return;
  if (LogSink sink = g_sink.load()) {
    sink(static_cast<int>(level), msg.c_str());
    return;
  }
  std::fprintf(stderr, "memkv %s\n", msg.c_str());
}

}  // namespace memkv
