// Gang placement without sockets: all ranks or none, TP groups on one host,
// and the reasons a job cannot be placed.
#include "coordinator/placement.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace gemma {
namespace {

namespace v1 = ::gemma::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class PlacementTest : public ::testing::Test {
 protected:
  void Add(const std::string& name, const std::string& host, bool busy = false,
           const std::string& kind = "cpu") {
    v1::Worker w;
    w.set_name(name);
    w.set_host(host);
    w.set_device_kind(kind);
    w.set_memory_bytes(1000);
    if (busy) w.set_job("jobs/other");
    workers_.push_back(w);
  }
  PlacementResult Place(int tp, int dp, v1::Device device = v1::DEVICE_CPU,
                        int64_t mem = 0) {
    v1::JobSpec spec;
    spec.mutable_parallel()->set_tp(tp);
    spec.mutable_parallel()->set_dp(dp);
    spec.mutable_resources()->set_device(device);
    spec.mutable_resources()->set_min_memory_bytes(mem);
    std::vector<const v1::Worker*> ptrs;
    for (const auto& w : workers_) ptrs.push_back(&w);
    return PlaceGang(spec, ptrs);
  }
  std::vector<v1::Worker> workers_;
};

TEST_F(PlacementTest, TensorParallelGroupsStayOnOneHost) {
  Add("workers/a1", "a");
  Add("workers/b1", "b");
  Add("workers/a2", "a");
  Add("workers/b2", "b");
  PlacementResult r = Place(2, 2);
  // Ranks 0,1 on host a; ranks 2,3 on host b.
  EXPECT_THAT(r.workers, ElementsAre("workers/a1", "workers/a2", "workers/b1",
                                     "workers/b2"));
}

TEST_F(PlacementTest, AllOrNothingWithAReasonWhenBusy) {
  Add("workers/a1", "a");
  Add("workers/a2", "a", /*busy=*/true);
  Add("workers/a3", "a");
  PlacementResult r = Place(1, 3);
  EXPECT_TRUE(r.workers.empty());
  EXPECT_FALSE(r.impossible);
  EXPECT_THAT(
      r.reason,
      HasSubstr("needs 3 cpu workers (tp=1 x dp=3); 2 free of 3 attached"));
}

TEST_F(PlacementTest, SplitHostsCannotHoldATpGroup) {
  Add("workers/a1", "a");
  Add("workers/b1", "b");
  PlacementResult r = Place(2, 1);
  EXPECT_TRUE(r.impossible);
  EXPECT_THAT(r.reason, HasSubstr("groups of 2 cpu workers on one host"));
}

TEST_F(PlacementTest, DeviceKindAndMemoryMustMatch) {
  Add("workers/g1", "a", false, "cuda");
  Add("workers/c1", "a");
  EXPECT_THAT(Place(1, 1, v1::DEVICE_GPU).workers, ElementsAre("workers/g1"));
  EXPECT_THAT(Place(1, 1, v1::DEVICE_CPU).workers, ElementsAre("workers/c1"));
  PlacementResult r = Place(1, 1, v1::DEVICE_CPU, 5000);
  EXPECT_TRUE(r.impossible);
  EXPECT_THAT(r.reason,
              HasSubstr("with >= 5000 bytes; only 0 such workers attached"));
}

}  // namespace
}  // namespace gemma
