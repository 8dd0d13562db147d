// Multi-part bookkeeping (Store::part_begin / part_done / part_abort), as
// PUT_PART and ABORT_PART drive it from many connections: sequences of
// begins, completions (verified or failed), aborts and reads over a few
// keys and upload ids. Every byte a part writes is a known pattern (high
// bit set), every other byte of a new part's buffer is zeroed first, and a
// failed part writes wrong bytes: a published object must be all pattern.
// At the end everything is aborted and deleted, and the DRAM accounting
// must be back to zero.
//
// Input: steps, each: op u8, then begin: key u8, id u8, total u32, offset
// u32, len u32; done: which u8, ok u8; abort: key u8, id u8; get: key u8.
#include <map>

#include "common/crc32c.hpp"
#include "fuzz_input.hpp"
#include "node/store.hpp"

using namespace memkv;

namespace {

constexpr uint64_t kMaxTotal = 256 * 1024;
const char* kKeys[] = {"a", "b", "\0t/c", "dd"};

std::string key_of(uint8_t k) { return k % 4 == 2 ? std::string("\0team/c", 7) : kKeys[k % 4]; }
uint8_t pattern(uint64_t x, uint64_t id) { return static_cast<uint8_t>(((x * 31 + id) & 0x7f) | 0x80); }

struct Writing {
  std::string key;
  uint64_t id, offset, len;
  ValuePtr buffer;
};

[[noreturn]] void bad(const std::string& what) {
  std::fprintf(stderr, "multi-part bookkeeping: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  StoreConfig cfg;
  cfg.data_dir = fuzz::scratch_dir();
  cfg.dram_capacity = 4ull << 20;
  cfg.arena = false;
  cfg.space_wait_ms = 0;
  Store store(cfg);
  store.open();
  store.set_quota("team", 512 * 1024, 0);
  std::vector<Writing> writing;
  std::map<std::pair<std::string, uint64_t>, bool> seen;  // uploads begun (zeroed)
  for (int step = 0; !in.empty() && step < 128; ++step) {
    switch (in.u8() % 4) {
      case 0: {
        std::string key = key_of(in.u8());
        uint64_t id = in.u8() % 4;
        uint32_t t = in.u32(), o = in.u32(), l = in.u32();
        // Mostly in range; sometimes the raw values (out of range, too large).
        bool raw = (t & 0x80000000u) != 0;
        uint64_t total = raw ? t & 0x7fffffffu : t % (kMaxTotal + 1);
        uint64_t offset = raw ? o : total ? o % (total + 1) : 0;
        uint64_t len = raw ? l : total - offset ? l % (total - offset + 1) : 0;
        Store::PartTarget target;
        PutResult pr = store.part_begin(key, id, total, offset, len, &target);
        if (pr != PutResult::Ok) break;
        if (offset > total || len > total - offset) bad("a part outside its object was accepted");
        if (!target.buffer || target.buffer->size != total) bad("part buffer of the wrong size");
        if (!seen[{key, id}]) {
          seen[{key, id}] = true;
          std::memset(target.buffer->data, 0, total);
        }
        if (target.duplicate) break;
        writing.push_back({key, id, offset, len, target.buffer});
        break;
      }
      case 1: {
        if (writing.empty()) break;
        size_t w = in.u8() % writing.size();
        bool ok = in.u8() & 1;
        Writing p = writing[w];
        writing.erase(writing.begin() + static_cast<long>(w));
        for (uint64_t x = p.offset; x < p.offset + p.len; ++x)
          p.buffer->data[x] = ok ? pattern(x, p.id) : static_cast<uint8_t>(pattern(x, p.id) & 0x7f);
        bool complete = false;
        uint64_t remaining = 0;
        PutResult pr = store.part_done(p.key, p.id, p.offset, p.len, ok, &complete, &remaining);
        if (complete) {
          seen.erase({p.key, p.id});
          if (pr != PutResult::Ok) break;
          uint32_t crc = 0;
          ValuePtr v = store.get(p.key, &crc);
          if (!v) break;  // evicted or superseded meanwhile (other uploads of the key)
          if (crc != crc32c(0, v->data, v->size)) bad("published CRC does not match the bytes");
        }
        break;
      }
      case 2: {
        std::string key = key_of(in.u8());
        uint64_t id = in.u8() % 4;
        if (store.part_abort(key, id)) seen.erase({key, id});
        break;
      }
      case 3: {
        std::string key = key_of(in.u8());
        uint32_t crc = 0;
        ValuePtr v = store.get(key, &crc);
        if (!v) break;
        if (crc != crc32c(0, v->data, v->size)) bad("stored CRC does not match the bytes");
        // Objects here come only from completed uploads: every byte was written by a verified part.
        for (uint64_t x = 0; x < v->size; ++x)
          if (!(v->data[x] & 0x80)) bad("published object holds a byte no verified part wrote, at " + std::to_string(x));
        break;
      }
    }
  }
  // Parts still in flight fail; every upload is aborted; every key deleted.
  for (const Writing& p : writing) {
    bool c;
    uint64_t r;
    store.part_done(p.key, p.id, p.offset, p.len, false, &c, &r);
  }
  for (uint8_t k = 0; k < 4; ++k) {
    for (uint64_t id = 0; id < 4; ++id) store.part_abort(key_of(k), id);
    store.remove(key_of(k));
  }
  StoreStats st = store.stats();
  if (st.dram_used != 0 || st.pending_parts != 0)
    bad("after aborting and deleting everything: " + std::to_string(st.dram_used) + " DRAM bytes, " +
        std::to_string(st.pending_parts) + " pending parts");
  for (const AccountStats& a : store.account_stats())
    if (a.dram_used != 0 || a.keys != 0) bad("tenant '" + a.tenant + "' still charged " + std::to_string(a.dram_used));
  store.close();
  return 0;
}
