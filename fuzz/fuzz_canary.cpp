// A target that fails on purpose, so tests/test_fuzz.py can show that
// scripts/fuzz.sh notices each kind of failure: an input starting with
// CRASH overflows a heap buffer (ASan), HANG never returns (-timeout),
// LEAK leaks (LeakSanitizer), BIG allocates 1 GiB at once (-malloc_limit_mb),
// UB overflows a signed int (UBSan). Not part of the default target list.
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto is = [&](const char* word) { return size >= std::strlen(word) && std::memcmp(data, word, std::strlen(word)) == 0; };
  if (is("CRASH")) {
    volatile char* p = new char[4];
    p[size] = 1;  // size >= 5: out of bounds
    delete[] p;
  } else if (is("HANG")) {
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  } else if (is("LEAK")) {
    volatile void* p = std::malloc(1000);
    p = nullptr;
    (void)p;
  } else if (is("BIG")) {
    volatile char* p = static_cast<char*>(std::malloc(1ull << 30));
    if (p) p[0] = 1;
    std::free(const_cast<char*>(p));
  } else if (is("UB")) {
    volatile int x = INT_MAX;
    x = x + static_cast<int>(size);
  }
  return 0;
}
