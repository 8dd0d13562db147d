// The S3 door's HTTP/1.1 parser (s3/http.cpp: request line, headers,
// Content-Length and chunked bodies, keep-alive) and the upload payload
// framing behind it (s3/payload.cpp: plain or aws-chunked bodies, checksum
// headers and trailers), as the door drives them: requests are read from a
// connection until it ends or one is malformed; a request that declares a
// payload hash has its payload read and verified, any other body drained.
//
// Input: the bytes a client sends on the connection.
#include <thread>

#include "fuzz_input.hpp"
#include "s3/http.hpp"
#include "s3/payload.hpp"

using namespace memkv;
using namespace memkv::s3;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto [mine, theirs] = fuzz::socket_pair();
  std::thread client([&, theirs = theirs] {
    fuzz::write_all(theirs, data, size);
    ::shutdown(theirs, SHUT_WR);
  });
  {
    HttpConn http(mine, 1000);
    try {
      Request r;
      for (int n = 0; n < 16 && http.read_request(&r, 1000); ++n) {
        if (r.method.empty() || r.path.empty() || r.path[0] != '/') std::abort();  // what the parser promises
        std::string hash = r.header("x-amz-content-sha256");
        if (!hash.empty() && (r.method == "PUT" || r.method == "POST")) {
          PayloadReader payload(http, r, hash);
          payload.start(r);
          // Read in pieces: the declared size is a claim, never an allocation.
          uint8_t buf[4096];
          for (uint64_t left = payload.size(); left;) {
            size_t k = static_cast<size_t>(std::min<uint64_t>(left, sizeof(buf)));
            payload.read(buf, k);
            left -= k;
          }
          payload.finish();
        } else if (http.body_unstarted()) {
          http.begin_body(r);
          if (!http.drain_body(1 << 20)) break;
        }
      }
    } catch (const HttpError&) {
    } catch (const S3Error&) {
    }
  }
  ::close(mine);
  client.join();
  ::close(theirs);
  return 0;
}
