// The S3 door: the subset of the S3 API that NIXL's stock OBJ backend,
// Dynamo's object tier and boto3 use, served by the node itself, so that
// they store into MemKV with no plugin. Each request is SigV4-signed with a
// tenant's S3 access key and secret (tenants.hpp) and reaches only that
// tenant's buckets. Object KEY in bucket BUCKET is the tenant's native key
// "BUCKET/KEY": an ordinary MemKV value (same DRAM tier, shards, eviction
// and checksums), readable by the MEMKV plugin and the Python client, and
// the other way round. Bodies move between the socket and value memory with
// no staging copy.
//
// Served: CreateBucket, HeadBucket, DeleteBucket (empty), ListBuckets,
// PutObject, GetObject (Range, If-Match, If-None-Match), HeadObject,
// DeleteObject, ListObjectsV2. Not yet: multipart uploads, presigned URLs,
// signed aws-chunked payloads (each answered 501 NotImplemented, saying so).
#pragma once
#include <atomic>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "../node/store.hpp"
#include "../node/tenants.hpp"
#include "http.hpp"

namespace memkv::s3 {

struct DoorOptions {
  std::string host = "0.0.0.0";
  uint16_t port = 0;
  std::string data_dir;  // the bucket table lives here (s3-buckets)
  int io_timeout_ms = 60000;
  int max_connections = 1024;
};

struct DoorStats {
  uint64_t requests = 0, errors = 0, bytes_in = 0, bytes_out = 0, connections = 0;
};

class Door {
 public:
  Door(DoorOptions opts, Store& store, TenantTable& tenants);
  ~Door();
  void start();
  void stop();
  uint16_t port() const { return bound_port_; }
  DoorStats stats() const;

 private:
  struct Conn {
    std::thread thread;
    std::atomic<bool> done{false};
    std::atomic<int> fd{-1};
  };
  struct Reply;
  void accept_loop();
  void serve(std::shared_ptr<Conn> conn, int fd);
  // Handles one request; false: close the connection after the reply.
  bool handle(HttpConn& http, Request& r);
  void object_op(HttpConn& http, Request& r, const Tenant& t, const std::string& bucket, const std::string& key,
                 Reply& out);
  void bucket_op(HttpConn& http, Request& r, const Tenant& t, const std::string& bucket, Reply& out);
  void list_objects(const Request& r, const Tenant& t, const std::string& bucket, Reply& out);
  // The bucket's owner ("" if there is no such bucket).
  std::string owner_of(const std::string& bucket);
  void load_buckets();
  void save_buckets_locked();

  DoorOptions opts_;
  Store& store_;
  TenantTable& tenants_;
  int listen_fd_ = -1;
  uint16_t bound_port_ = 0;
  std::thread acceptor_;
  std::mutex conns_mu_;
  std::list<std::shared_ptr<Conn>> conns_;
  std::atomic<bool> stopping_{false};
  bool started_ = false;
  std::mutex buckets_mu_;
  std::map<std::string, std::string> buckets_;  // bucket -> owning tenant
  std::atomic<uint64_t> requests_{0}, errors_{0}, bytes_in_{0}, bytes_out_{0}, connections_{0};
  std::atomic<uint64_t> request_ids_{0};
};

}  // namespace memkv::s3
