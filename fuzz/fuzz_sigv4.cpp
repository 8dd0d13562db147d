// AWS Signature Version 4 verification as the S3 door runs it on every
// request (s3/sigv4.cpp: the Authorization header, the credential scope,
// x-amz-date, signed headers, the canonical query), and the URI coding it
// relies on. The fuzzer builds the parsed request (the HTTP parser has its
// own target) and the clock. A request signed with a key the lookup does
// not know must never verify, and URI encoding must round-trip.
//
// Input: now u64, method, path, query pieces, then header name/value pieces.
#include "fuzz_input.hpp"
#include "s3/sigv4.hpp"

using namespace memkv;
using namespace memkv::s3;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const int64_t now = static_cast<int64_t>(in.u64() % (1ull << 40));
  Request r;
  r.method = in.str();
  r.path = in.str();
  r.query = in.str();
  while (!in.empty() && r.headers.size() < 32) {
    std::string name = in.str();
    r.headers.emplace_back(name, in.str());
  }
  auto lookup = [](const std::string& ak, std::string* secret) {
    if (ak != "AKIDEXAMPLE") return false;
    *secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    return true;
  };
  AuthResult a = verify_sigv4(r, lookup, now);
  if (a.ok && a.access_key != "AKIDEXAMPLE") std::abort();
  auto none = [](const std::string&, std::string*) { return false; };
  if (verify_sigv4(r, none, now).ok) std::abort();

  for (bool keep_slash : {false, true}) {
    std::string enc = uri_encode(r.path, keep_slash);
    if (uri_decode(enc) != r.path) {
      std::fprintf(stderr, "uri_decode(uri_encode(x)) != x\n");
      std::abort();
    }
  }
  uri_decode(r.query, true);
  return 0;
}
