// Native log lines go through one sink; the Python layer installs one that
// forwards to `logging` so node and client logs share format and level.
#pragma once
#include <string>

namespace memkv {

enum class LogLevel { Debug = 10, Info = 20, Warning = 30, Error = 40 };

using LogSink = void (*)(int level, const char* msg);
void set_log_sink(LogSink sink, int min_level);
bool log_enabled(LogLevel level);
void log(LogLevel level, const std::string& msg);

}  // namespace memkv
