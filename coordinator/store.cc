#include "coordinator/store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gemma {

const char* TableName(Table t) {
  static const char* kNames[kNumTables] = {
      "jobs",   "attempts",    "workers", "checkpoints",
      "events", "request_ids", "meta",    "logs"};
  return kNames[static_cast<int>(t)];
}

std::string AttemptKey(const std::string& job, int attempt) {
  return absl::StrFormat("%s#%08d", job, attempt);
}
std::string CheckpointKey(const std::string& job, int64_t step) {
  return absl::StrFormat("%s#%020d", job, step);
}
std::string LogKey(const std::string& job, int64_t seq) {
  return absl::StrFormat("%s#%012d", job, seq);
}
std::string RevisionKey(int64_t revision) {
  std::string k(8, '\0');
  for (int i = 7; i >= 0; --i) {
    k[i] = static_cast<char>(revision & 0xff);
    revision >>= 8;
  }
  return k;
}
int64_t RevisionFromKey(const std::string& key) {
  int64_t r = 0;
  for (size_t i = 0; i < key.size() && i < 8; ++i)
    r = (r << 8) | static_cast<uint8_t>(key[i]);
  return r;
}

Store::Batch::Batch() = default;
Store::Batch::~Batch() = default;
Store::Batch::Batch(Batch&&) noexcept = default;
Store::Batch& Store::Batch::operator=(Batch&&) noexcept = default;

void Store::Batch::Put(Table t, const std::string& key,
                       const google::protobuf::Message& value) {
  ops_.push_back({t, key, value.SerializeAsString()});
  ++count_;
}
void Store::Batch::PutRaw(Table t, const std::string& key,
                          const std::string& value) {
  ops_.push_back({t, key, value});
  ++count_;
}
void Store::Batch::Delete(Table t, const std::string& key) {
  ops_.push_back({t, key, std::nullopt});
  ++count_;
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& dir) {
  rocksdb::DBOptions opts;
  opts.create_if_missing = true;
  opts.create_missing_column_families = true;
  opts.max_background_jobs = 2;
  opts.keep_log_file_num = 4;
  opts.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  cfs.emplace_back(rocksdb::kDefaultColumnFamilyName,
                   rocksdb::ColumnFamilyOptions());
  for (int i = 0; i < kNumTables; ++i) {
    cfs.emplace_back(TableName(static_cast<Table>(i)),
                     rocksdb::ColumnFamilyOptions());
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(opts, dir, cfs, &handles, &db);
  if (!s.ok()) {
    const std::string msg =
        absl::StrCat("cannot open store in ", dir, ": ", s.ToString());
    if (s.IsIOError() && absl::StrContains(s.ToString(), "lock")) {
      return absl::UnavailableError(
          msg + " (is another coordinator using this --data-dir?)");
    }
    return absl::InternalError(msg);
  }
  auto store = std::unique_ptr<Store>(new Store());
  store->dir_ = dir;
  store->db_ = db;
  // handles[0] is the default family, which we do not use.
  store->handles_.assign(handles.begin() + 1, handles.end());
  db->DestroyColumnFamilyHandle(handles[0]);
  return store;
}

Store::~Store() {
  if (db_ == nullptr) return;
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
  db_->Close();
  delete db_;
}

absl::Status Store::Write(const Batch& batch) { return Apply(batch, true); }
absl::Status Store::WriteUnsynced(const Batch& batch) {
  return Apply(batch, false);
}

absl::Status Store::Apply(const Batch& batch, bool sync) {
  rocksdb::WriteBatch wb;
  for (const auto& op : batch.ops_) {
    if (op.value) {
      wb.Put(cf(op.table), op.key, *op.value);
    } else {
      wb.Delete(cf(op.table), op.key);
    }
  }
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  rocksdb::Status s = db_->Write(wo, &wb);
  if (!s.ok()) {
    return absl::InternalError(
        absl::StrCat("store write in ", dir_, ": ", s.ToString()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> Store::GetRaw(
    Table t, const std::string& key) const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf(t), key, &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) {
    return absl::InternalError(absl::StrCat("store read ", TableName(t), "/",
                                            key, ": ", s.ToString()));
  }
  return std::optional<std::string>(std::move(value));
}

absl::StatusOr<bool> Store::Get(Table t, const std::string& key,
                                google::protobuf::Message* out) const {
  auto raw = GetRaw(t, key);
  if (!raw.ok()) return raw.status();
  if (!raw->has_value()) return false;
  if (!out->ParseFromString(**raw)) {
    return absl::DataLossError(absl::StrCat("store: unparsable ",
                                            out->GetTypeName(), " in ",
                                            TableName(t), "/", key));
  }
  return true;
}

absl::Status Store::Scan(
    Table t, const std::string& prefix, const std::string& start,
    const std::function<bool(const std::string&, const std::string&)>& fn)
    const {
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), cf(t)));
  const std::string& from = start.empty() || start < prefix ? prefix : start;
  for (it->Seek(from); it->Valid(); it->Next()) {
    const rocksdb::Slice k = it->key();
    if (!k.starts_with(prefix)) break;
    if (!fn(k.ToString(), it->value().ToString())) break;
  }
  if (!it->status().ok()) {
    return absl::InternalError(absl::StrCat("store scan ", TableName(t), ": ",
                                            it->status().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace gemma
