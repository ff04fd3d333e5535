// The store's contract on a real RocksDB folder: typed round trips, atomic
// batches that survive reopening, ordered scans, and a clear error when a
// second process (here: a second open) holds the folder.
#include "coordinator/store.h"

#include "coordinator/hub.h"

#include "gemma/v1/jobs.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace gemma {
namespace {

std::string FreshDir(const std::string& name) {
  std::string d =
      ::testing::TempDir() + "/store-" + name + "-" + std::to_string(getpid());
  std::string cmd = "rm -rf '" + d + "'";
  (void)system(cmd.c_str());
  return d;
}

TEST(StoreTest, BatchIsDurableAcrossReopenAndScansInKeyOrder) {
  const std::string dir = FreshDir("reopen");
  {
    auto store = Store::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    Store::Batch b;
    gemma::v1::Job j;
    j.set_name("jobs/a");
    j.set_state(gemma::v1::JOB_STATE_RUNNING);
    b.Put(Table::kJobs, "jobs/a", j);
    j.set_name("jobs/b");
    b.Put(Table::kJobs, "jobs/b", j);
    b.PutRaw(Table::kMeta, "revision", "7");
    for (int r : {3, 1, 2, 300})
      b.PutRaw(Table::kEvents, RevisionKey(r), std::to_string(r));
    ASSERT_TRUE((*store)->Write(b).ok());
  }
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  gemma::v1::Job got;
  auto found = (*store)->Get(Table::kJobs, "jobs/b", &got);
  ASSERT_TRUE(found.ok());
  EXPECT_TRUE(*found);
  EXPECT_EQ(got.state(), gemma::v1::JOB_STATE_RUNNING);
  EXPECT_FALSE(*(*store)->Get(Table::kJobs, "jobs/zz", &got));
  // Tables are separate namespaces.
  EXPECT_FALSE((*(*store)->GetRaw(Table::kAttempts, "jobs/a")).has_value());
  std::vector<int64_t> revs;
  ASSERT_TRUE((*store)
                  ->Scan(Table::kEvents, "", RevisionKey(2),
                         [&](const std::string& k, const std::string&) {
                           revs.push_back(RevisionFromKey(k));
                           return true;
                         })
                  .ok());
  EXPECT_THAT(revs, ::testing::ElementsAre(2, 3, 300));
}

TEST(StoreTest, DeletesApplyAndPrefixScansStopAtThePrefix) {
  auto store = Store::Open(FreshDir("prefix"));
  ASSERT_TRUE(store.ok());
  Store::Batch b;
  gemma::v1::Attempt a;
  for (int i = 1; i <= 3; ++i)
    b.Put(Table::kAttempts, AttemptKey("jobs/x", i), a);
  b.Put(Table::kAttempts, AttemptKey("jobs/xy", 1), a);
  ASSERT_TRUE((*store)->Write(b).ok());
  Store::Batch d;
  d.Delete(Table::kAttempts, AttemptKey("jobs/x", 2));
  ASSERT_TRUE((*store)->Write(d).ok());
  std::vector<std::string> keys;
  ASSERT_TRUE((*store)
                  ->Scan(Table::kAttempts, "jobs/x#", "",
                         [&](const std::string& k, const std::string&) {
                           keys.push_back(k);
                           return true;
                         })
                  .ok());
  EXPECT_THAT(keys, ::testing::ElementsAre(AttemptKey("jobs/x", 1),
                                           AttemptKey("jobs/x", 3)));
}

TEST(StoreTest, CorruptValueIsDataLossNamingTheKey) {
  auto store = Store::Open(FreshDir("corrupt"));
  ASSERT_TRUE(store.ok());
  Store::Batch b;
  b.PutRaw(Table::kJobs, "jobs/bad", std::string("\xff\xff\xff", 3));
  ASSERT_TRUE((*store)->Write(b).ok());
  gemma::v1::Job j;
  auto got = (*store)->Get(Table::kJobs, "jobs/bad", &j);
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(absl::IsDataLoss(got.status()));
  EXPECT_THAT(std::string(got.status().message()),
              ::testing::HasSubstr("jobs/jobs/bad"));
}

TEST(StoreTest, SecondOpenOfTheSameFolderIsUnavailable) {
  const std::string dir = FreshDir("lock");
  auto first = Store::Open(dir);
  ASSERT_TRUE(first.ok());
  auto second = Store::Open(dir);
  ASSERT_FALSE(second.ok());
  EXPECT_TRUE(absl::IsUnavailable(second.status())) << second.status();
  EXPECT_THAT(std::string(second.status().message()),
              ::testing::HasSubstr(dir));
}

// Log lines survive a reopen (a coordinator restart): the newest max lines
// per job come back in order and numbering continues after them.
TEST(StoreTest, LogLinesSurviveReopenBoundedPerJob) {
  const std::string dir = FreshDir("logs");
  {
    auto store = Store::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    LogStore logs(store->get(), /*max_lines_per_job=*/5);
    for (int i = 1; i <= 7; ++i) logs.Append("jobs/a", 1, i % 2, "line " + std::to_string(i));
    logs.Append("jobs/b", 1, 0, "other job");
  }
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  LogStore logs(store->get(), 5);
  auto lines = logs.Read("jobs/a", 0, -1);
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines.front().seq(), 3);
  EXPECT_EQ(lines.front().text(), "line 3");
  EXPECT_EQ(lines.back().text(), "line 7");
  EXPECT_EQ(logs.Read("jobs/a", 0, 1).size(), 3u);  // lines 3, 5, 7
  logs.Append("jobs/a", 2, 0, "after restart");
  lines = logs.Read("jobs/a", 7, -1);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].seq(), 8);
  EXPECT_EQ(logs.Read("jobs/b", 0, -1).size(), 1u);
  // Trimmed lines are gone from the table too, not just from memory.
  int stored = 0;
  ASSERT_TRUE((*store)->Scan(Table::kLogs, "jobs/a#", "",
                             [&](const std::string&, const std::string&) {
                               ++stored;
                               return true;
                             }).ok());
  EXPECT_EQ(stored, 5);
}

}  // namespace
}  // namespace gemma
