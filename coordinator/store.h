// The coordinator's durable state: one RocksDB database with a column family
// per table. Values are protobuf messages (the schema is the .proto); keys are
// the resource names, except where noted.
//
// Contract:
//  - Write() applies a Batch atomically and durably (WriteOptions.sync): after
//    it returns OK, a kill -9 of the process loses none of it; after a crash
//    during Write() either all of the batch is visible on reopen or none.
//  - Reads see every Write() that returned before them. Thread-safe: any
//    number of threads may read and write at once.
//  - Errors are values: IO errors and corrupt values come back as
//    INTERNAL/DATA_LOSS naming the table and key; nothing throws.
//
// Tables and their keys:
//   kJobs        "jobs/{job}"                        -> v1.Job (attempts empty)
//   kAttempts    "jobs/{job}#{attempt:08}"           -> v1.Attempt
//   kWorkers     "workers/{worker}"                  -> v1.Worker
//   kCheckpoints "jobs/{job}#{step:020}"             -> v1.Checkpoint
//   kEvents      revision as 8 big-endian bytes      -> v1.JobEvent
//   kRequestIds  request id                          -> job name (raw string)
//   kMeta        counter name                        -> decimal string
//   kLogs        "jobs/{job}#{seq:012}"              -> v1.LogLine
#ifndef GEMMA_COORDINATOR_STORE_H_
#define GEMMA_COORDINATOR_STORE_H_

#include <google/protobuf/message.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class WriteBatch;
}  // namespace rocksdb

namespace gemma {

enum class Table {
  kJobs = 0,
  kAttempts,
  kWorkers,
  kCheckpoints,
  kEvents,
  kRequestIds,
  kMeta,
  kLogs
};
inline constexpr int kNumTables = 8;
// The column family's name ("jobs", "attempts", ...).
const char* TableName(Table t);

// Key helpers for the layouts above.
std::string AttemptKey(const std::string& job, int attempt);
std::string CheckpointKey(const std::string& job, int64_t step);
std::string RevisionKey(int64_t revision);
std::string LogKey(const std::string& job, int64_t seq);
int64_t RevisionFromKey(const std::string& key);

class Store {
 public:
  // A set of puts and deletes applied together by Write().
  class Batch {
   public:
    Batch();
    ~Batch();
    Batch(Batch&&) noexcept;
    Batch& operator=(Batch&&) noexcept;
    void Put(Table t, const std::string& key,
             const google::protobuf::Message& value);
    void PutRaw(Table t, const std::string& key, const std::string& value);
    void Delete(Table t, const std::string& key);
    int size() const { return count_; }

   private:
    friend class Store;
    struct Op {
      Table table;
      std::string key;
      std::optional<std::string> value;  // nullopt: delete
    };
    std::vector<Op> ops_;
    int count_ = 0;
  };

  // Opens (creating when missing) the database in `dir`, with every table.
  // UNAVAILABLE when another process holds it (RocksDB's LOCK file),
  // INTERNAL for other failures; the message names `dir`.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& dir);
  ~Store();

  // Applies `batch` atomically with a synced write.
  absl::Status Write(const Batch& batch);
  // Applies `batch` atomically without waiting for fsync: it survives a kill
  // of the process (the write-ahead log is written), not a power loss. For
  // data whose loss is tolerable, such as log lines.
  absl::Status WriteUnsynced(const Batch& batch);

  // The raw value, or nullopt when the key is absent.
  absl::StatusOr<std::optional<std::string>> GetRaw(
      Table t, const std::string& key) const;
  // Parses the value into `out`; false when absent; DATA_LOSS when unparsable.
  absl::StatusOr<bool> Get(Table t, const std::string& key,
                           google::protobuf::Message* out) const;

  // Calls fn(key, value) for keys >= start that begin with `prefix`, in key
  // order, until fn returns false.
  absl::Status Scan(
      Table t, const std::string& prefix, const std::string& start,
      const std::function<bool(const std::string&, const std::string&)>& fn)
      const;

  const std::string& dir() const { return dir_; }

 private:
  Store() = default;
  absl::Status Apply(const Batch& batch, bool sync);
  rocksdb::ColumnFamilyHandle* cf(Table t) const {
    return handles_[static_cast<int>(t)];
  }

  std::string dir_;
  rocksdb::DB* db_ = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // index = Table
};

}  // namespace gemma

#endif  // GEMMA_COORDINATOR_STORE_H_
