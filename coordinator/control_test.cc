// The coordinator's state machine without sockets: a real store, a fake
// clock passed in, workers as Register/WorkerMessage calls.
#include "coordinator/control.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace gemma {
namespace {

namespace v1 = ::gemma::v1;
using ::testing::HasSubstr;

class ControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/control-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    (void)system(("rm -rf '" + dir_ + "'").c_str());
    Open();
  }
  void Open() {
    state_.reset();
    store_.reset();
    auto s = Store::Open(dir_);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
    ControlOptions o;
    o.lease = absl::Seconds(2);
    o.grace = absl::Seconds(5);
    o.checkpoint_root = "/ckpt";
    state_ = std::make_unique<ControlState>(store_.get(), o);
    ASSERT_TRUE(state_->Recover(now_).ok());
  }
  std::string Attach(const std::string& name = "", v1::RankRef running = {}) {
    v1::WorkerMessage::Register reg;
    reg.mutable_worker()->set_name(name);
    reg.mutable_worker()->set_device_kind("cpu");
    reg.mutable_worker()->set_host("h");
    *reg.mutable_running() = running;
    Effects fx;
    auto n = state_->Register(++session_, reg, now_, &fx);
    EXPECT_TRUE(n.ok()) << n.status();
    sessions_[*n] = session_;
    Collect(fx);
    return *n;
  }
  v1::Job Submit(int tp, int dp, int max_restarts = 0,
                 const std::string& rid = "") {
    v1::SubmitJobRequest req;
    req.set_request_id(rid);
    auto* s = req.mutable_spec();
    s->set_kind(v1::JOB_KIND_DIAGNOSE);
    s->mutable_parallel()->set_tp(tp);
    s->mutable_parallel()->set_dp(dp);
    s->mutable_resources()->set_device(v1::DEVICE_CPU);
    s->mutable_restart()->set_max_restarts(max_restarts);
    s->mutable_restart()->set_backoff_seconds(1);
    Effects fx;
    auto j = state_->Submit(req, now_, &fx);
    EXPECT_TRUE(j.ok()) << j.status();
    Collect(fx);
    return *j;
  }
  void Collect(const Effects& fx) {
    for (const auto& [w, m] : fx.sends) {
      if (m.has_assign()) assigns_.push_back({w, m.assign().rank()});
      if (m.has_abort()) aborts_.push_back({w, m.abort().rank()});
    }
  }
  void Send(const std::string& w, const v1::WorkerMessage& m) {
    Effects fx;
    state_->OnWorkerMessage(w, sessions_[w], m, now_, &fx);
    Collect(fx);
  }
  void StartAll() {
    for (const auto& [w, ref] : assigns_) {
      v1::WorkerMessage m;
      *m.mutable_started()->mutable_rank() = ref;
      Send(w, m);
    }
  }
  void FinishAll(bool ok = true) {
    for (const auto& [w, ref] : assigns_) {
      v1::WorkerMessage m;
      *m.mutable_finished()->mutable_rank() = ref;
      m.mutable_finished()->set_ok(ok);
      Send(w, m);
    }
  }
  // Moves time on in 500 ms ticks while `alive` workers heartbeat.
  void Advance(absl::Duration d, const std::vector<std::string>& alive) {
    for (absl::Duration t; t < d; t += absl::Milliseconds(500)) {
      for (const auto& w : alive) {
        v1::WorkerMessage hb;
        hb.mutable_heartbeat();
        Send(w, hb);
      }
      Tick(absl::Milliseconds(500));
    }
  }
  v1::JobState StateOf(const std::string& job) {
    return state_->GetJob(job)->state();
  }
  void Tick(absl::Duration d) {
    now_ += d;
    Effects fx;
    state_->Tick(now_, &fx);
    Collect(fx);
  }

  std::string dir_;
  absl::Time now_ = absl::FromUnixSeconds(1700000000);
  int64_t session_ = 0;
  std::map<std::string, int64_t> sessions_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<ControlState> state_;
  std::vector<std::pair<std::string, v1::RankRef>> assigns_, aborts_;
};

TEST_F(ControlTest, GangWaitsUntilAllRanksFitAndSmallJobsRunSideBySide) {
  for (int i = 0; i < 4; ++i) Attach();
  v1::Job a = Submit(1, 2), b = Submit(2, 1);
  EXPECT_EQ(a.state(), v1::JOB_STATE_STARTING);
  EXPECT_EQ(b.state(), v1::JOB_STATE_STARTING);
  ASSERT_EQ(assigns_.size(), 4u);
  v1::Job c = Submit(2, 2);
  EXPECT_EQ(c.state(), v1::JOB_STATE_QUEUED);
  EXPECT_THAT(state_->GetJob(c.name())->waiting_reason(),
              HasSubstr("0 free of 4"));
  StartAll();
  EXPECT_EQ(StateOf(a.name()), v1::JOB_STATE_RUNNING);
  // Finishing a alone frees 2 of 4: c still waits (all or nothing).
  auto ab = assigns_;
  assigns_ = {ab[0], ab[1]};
  FinishAll();
  EXPECT_EQ(StateOf(a.name()), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(StateOf(c.name()), v1::JOB_STATE_QUEUED);
  assigns_ = {ab[2], ab[3]};
  FinishAll();
  EXPECT_EQ(StateOf(b.name()), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(StateOf(c.name()), v1::JOB_STATE_STARTING);
}

TEST_F(ControlTest, ImpossibleLayoutSaysWhyAndDoesNotBlockOthers) {
  Attach();
  Attach();
  v1::Job big = Submit(3, 1);
  EXPECT_THAT(
      state_->GetJob(big.name())->waiting_reason(),
      HasSubstr(
          "needs 3 cpu workers (tp=3 x dp=1); only 2 such workers attached"));
  v1::Job small = Submit(1, 1);
  EXPECT_EQ(small.state(), v1::JOB_STATE_STARTING);
}

TEST_F(ControlTest, SameRequestIdReturnsTheSameJob) {
  v1::Job a = Submit(1, 1, 0, "req-1");
  v1::Job b = Submit(1, 1, 0, "req-1");
  EXPECT_EQ(a.name(), b.name());
  EXPECT_EQ(state_->ListJobs({})->jobs_size(), 1);
}

TEST_F(ControlTest, LostWorkerFailsTheAttemptAndTheJobRetriesAfterBackoff) {
  std::string w1 = Attach(), w2 = Attach(), w3 = Attach();
  v1::Job j = Submit(1, 2, /*max_restarts=*/1);
  StartAll();
  const std::string lost = assigns_[0].first;
  // Its lease runs out: only the other workers heartbeat.
  for (int i = 0; i < 3; ++i) {
    now_ += absl::Seconds(1);
    for (const auto& w : {w1, w2, w3}) {
      if (w == lost) continue;
      v1::WorkerMessage hb;
      hb.mutable_heartbeat();
      Send(w, hb);
    }
  }
  Tick(absl::Milliseconds(10));
  v1::Job got = *state_->GetJob(j.name());
  EXPECT_EQ(got.state(), v1::JOB_STATE_RECOVERING);
  EXPECT_EQ(got.failure().reason(), v1::FAILURE_REASON_WORKER_LOST);
  // The surviving rank was told to abort.
  ASSERT_EQ(aborts_.size(), 1u);
  EXPECT_EQ(aborts_[0].second.epoch(), assigns_[1].second.epoch());
  assigns_.clear();
  for (const auto& w : {w1, w2, w3}) {
    if (w == lost) continue;
    v1::WorkerMessage hb;
    hb.mutable_heartbeat();
    Send(w, hb);
  }
  Tick(absl::Milliseconds(1100));
  got = *state_->GetJob(j.name());
  EXPECT_EQ(got.state(), v1::JOB_STATE_STARTING);
  ASSERT_EQ(got.attempts_size(), 2);
  EXPECT_EQ(got.attempts(0).state(), v1::JOB_STATE_FAILED);
  EXPECT_GT(got.attempts(1).epoch(), got.attempts(0).epoch());
  for (const auto& [w, ref] : assigns_) EXPECT_NE(w, lost);
}

TEST_F(ControlTest, RestartAdoptsReattachedRanksAndFencesStaleOnes) {
  std::string w1 = Attach(), w2 = Attach();
  v1::Job j = Submit(1, 2);
  StartAll();
  auto refs = assigns_;
  assigns_.clear();
  Open();  // the coordinator restarts on the same store
  EXPECT_TRUE(state_->in_grace(now_));
  Attach(refs[0].first, refs[0].second);
  Attach(refs[1].first, refs[1].second);
  // A worker claiming an older epoch of the job is aborted.
  v1::RankRef stale = refs[0].second;
  stale.set_epoch(stale.epoch() - 1);
  const std::string w3 = Attach("", stale);
  ASSERT_EQ(aborts_.size(), 1u);
  EXPECT_EQ(aborts_[0].second.epoch(), stale.epoch());
  Advance(absl::Seconds(6), {refs[0].first, refs[1].first, w3});  // grace over
  v1::Job got = *state_->GetJob(j.name());
  EXPECT_EQ(got.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(got.attempt_count(), 1);
  EXPECT_TRUE(assigns_.empty());  // no second attempt
  assigns_ = refs;
  FinishAll();
  EXPECT_EQ(StateOf(j.name()), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(ControlTest, RanksThatDoNotComeBackFailTheAttemptAfterGrace) {
  Attach();
  v1::Job j = Submit(1, 1);
  StartAll();
  Open();
  Tick(absl::Seconds(6));
  v1::Job got = *state_->GetJob(j.name());
  EXPECT_EQ(got.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(got.failure().reason(), v1::FAILURE_REASON_COORDINATOR_RESTART);
}

TEST_F(ControlTest, CancelAndIllegalTransitions) {
  Attach();
  v1::Job j = Submit(1, 1);
  StartAll();
  Effects fx;
  auto c = state_->Cancel(j.name(), now_, &fx);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->state(), v1::JOB_STATE_CANCELLING);
  ASSERT_EQ(fx.sends.size(), 1u);
  EXPECT_TRUE(fx.sends[0].second.has_cancel());
  v1::WorkerMessage m;
  *m.mutable_finished()->mutable_rank() = assigns_[0].second;
  m.mutable_finished()->set_cancelled(true);
  Send(assigns_[0].first, m);
  EXPECT_EQ(StateOf(j.name()), v1::JOB_STATE_CANCELLED);
  auto again = state_->Cancel(j.name(), now_, &fx);
  EXPECT_TRUE(absl::IsFailedPrecondition(again.status()));
  EXPECT_TRUE(
      absl::IsNotFound(state_->Cancel("jobs/nope", now_, &fx).status()));
}

TEST_F(ControlTest, HungRankFailsItsAttempt) {
  Attach();
  v1::SubmitJobRequest req;
  req.mutable_spec()->set_kind(v1::JOB_KIND_DIAGNOSE);
  req.mutable_spec()->mutable_resources()->set_device(v1::DEVICE_CPU);
  req.mutable_spec()->mutable_timeouts()->set_step_seconds(1);
  Effects fx;
  v1::Job j = *state_->Submit(req, now_, &fx);
  Collect(fx);
  StartAll();
  for (int i = 0; i < 3;
       ++i) {  // heartbeats keep the worker, not the rank, alive
    now_ += absl::Milliseconds(500);
    v1::WorkerMessage hb;
    hb.mutable_heartbeat();
    Send(assigns_[0].first, hb);
  }
  Tick(absl::Milliseconds(10));
  v1::Job got = *state_->GetJob(j.name());
  EXPECT_EQ(got.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(got.failure().reason(), v1::FAILURE_REASON_HUNG);
}

TEST_F(ControlTest, PriorityThenFifoAndNoOvertakingOfAWaitingGang) {
  std::string w = Attach();
  v1::Job running = Submit(1, 1);
  v1::Job low = Submit(1, 1);
  v1::SubmitJobRequest req;
  req.mutable_spec()->set_kind(v1::JOB_KIND_DIAGNOSE);
  req.mutable_spec()->mutable_resources()->set_device(v1::DEVICE_CPU);
  req.mutable_spec()->set_priority(5);
  Effects fx;
  v1::Job high = *state_->Submit(req, now_, &fx);
  EXPECT_THAT(state_->GetJob(low.name())->waiting_reason(),
              HasSubstr("waiting behind " + high.name()));
  assigns_.clear();
  StartAll();
  v1::WorkerMessage m;
  v1::RankRef ref;
  ref.set_job(running.name());
  ref.set_attempt(1);
  ref.set_epoch(running.current_epoch());
  *m.mutable_finished()->mutable_rank() = ref;
  m.mutable_finished()->set_ok(true);
  Send(w, m);
  EXPECT_EQ(StateOf(high.name()), v1::JOB_STATE_STARTING);
  EXPECT_EQ(StateOf(low.name()), v1::JOB_STATE_QUEUED);
}

TEST_F(ControlTest, ListJobsPagesAndFilters) {
  for (int i = 0; i < 5; ++i) Submit(1, 1);
  Effects fx;
  ASSERT_TRUE(state_->Cancel("jobs/j-000002", now_, &fx).ok());
  v1::ListJobsRequest req;
  req.set_page_size(2);
  std::vector<std::string> names;
  do {
    auto resp = state_->ListJobs(req);
    ASSERT_TRUE(resp.ok());
    for (const auto& j : resp->jobs()) names.push_back(j.name());
    req.set_page_token(resp->next_page_token());
  } while (!req.page_token().empty());
  EXPECT_EQ(names.size(), 5u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  v1::ListJobsRequest f;
  f.add_states(v1::JOB_STATE_CANCELLED);
  auto cancelled = state_->ListJobs(f);
  ASSERT_EQ(cancelled->jobs_size(), 1);
  EXPECT_EQ(cancelled->jobs(0).name(), "jobs/j-000002");
  f.set_page_token("garbage");
  EXPECT_TRUE(absl::IsInvalidArgument(state_->ListJobs(f).status()));
}

TEST_F(ControlTest, SubmitErrorsNameTheField) {
  Effects fx;
  v1::SubmitJobRequest req;
  EXPECT_THAT(std::string(state_->Submit(req, now_, &fx).status().message()),
              HasSubstr("spec"));
  req.mutable_spec()->set_kind(v1::JOB_KIND_DIAGNOSE);
  req.set_job_id("Bad_Id");
  auto r = state_->Submit(req, now_, &fx);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status()));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("job_id"));
  req.set_job_id("mine");
  ASSERT_TRUE(state_->Submit(req, now_, &fx).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(state_->Submit(req, now_, &fx).status()));
}

TEST_F(ControlTest, CancelIsRepeatedToRanksThatReattachAfterARestart) {
  Attach();
  v1::Job j = Submit(1, 1);
  StartAll();
  Effects fx;
  ASSERT_TRUE(
      state_->Cancel(j.name(), now_, &fx).ok());  // the Cancel is "lost"
  auto refs = assigns_;
  Open();
  v1::WorkerMessage::Register reg;
  reg.mutable_worker()->set_name(refs[0].first);
  reg.mutable_worker()->set_device_kind("cpu");
  *reg.mutable_running() = refs[0].second;
  Effects rfx;
  ASSERT_TRUE(state_->Register(++session_, reg, now_, &rfx).ok());
  sessions_[refs[0].first] = session_;
  bool cancel_sent = false;
  for (const auto& [w, m] : rfx.sends)
    cancel_sent |= m.has_cancel() && w == refs[0].first;
  EXPECT_TRUE(cancel_sent);
  v1::WorkerMessage m;
  *m.mutable_finished()->mutable_rank() = refs[0].second;
  m.mutable_finished()->set_cancelled(true);
  Send(refs[0].first, m);
  EXPECT_EQ(StateOf(j.name()), v1::JOB_STATE_CANCELLED);
}

TEST_F(ControlTest, CheckpointRetentionKeepsLastNBestKAndPinned) {
  Attach();
  v1::SubmitJobRequest req;
  auto* spec = req.mutable_spec();
  spec->set_kind(v1::JOB_KIND_DIAGNOSE);
  spec->mutable_resources()->set_device(v1::DEVICE_CPU);
  spec->mutable_checkpoint()->set_keep_last_n(1);
  spec->mutable_checkpoint()->set_keep_best_k(1);
  spec->mutable_checkpoint()->set_best_metric("eval_loss");
  Effects fx;
  v1::Job j = *state_->Submit(req, now_, &fx);
  Collect(fx);
  StartAll();
  const auto& [w, ref] = assigns_[0];
  auto report = [&](int64_t step, double loss) {
    v1::WorkerMessage m;
    auto* c = m.mutable_checkpoint();
    *c->mutable_rank() = ref;
    c->set_step(step);
    c->set_path("/ckpt/" + std::to_string(step));
    c->set_bytes(10);
    (*c->mutable_metrics())["eval_loss"] = loss;
    Send(w, m);
  };
  report(100, 0.5);
  ASSERT_TRUE(state_->SetPinned(j.name() + "/checkpoints/100", true).ok());
  report(200, 0.2);  // best
  report(300, 0.4);
  report(400, 0.3);  // last
  std::vector<int64_t> steps;
  auto list = state_->ListCheckpoints(j.name());
  ASSERT_TRUE(list.ok());
  for (const auto& c : list->checkpoints()) {
    EXPECT_EQ(c.state(), v1::CHECKPOINT_STATE_COMMITTED);
    steps.push_back(c.step());
  }
  // 100 pinned, 200 best eval_loss, 400 last; 300 retired.
  EXPECT_THAT(steps, ::testing::ElementsAre(100, 200, 400));
  EXPECT_TRUE(absl::IsFailedPrecondition(
      state_->DeleteCheckpoint(j.name() + "/checkpoints/100")));
  EXPECT_TRUE(absl::IsNotFound(
      state_->GetCheckpoint(j.name() + "/checkpoints/300").status()));
}

}  // namespace
TEST_F(ControlTest, TrainingJobsWithoutACheckpointRootGetTheirOwnFolder) {
  v1::SubmitJobRequest req;
  auto* spec = req.mutable_spec();
  spec->set_kind(v1::JOB_KIND_SFT);
  spec->mutable_model()->set_path("/m");
  spec->mutable_data()->set_train("/t.jsonl");
  spec->mutable_optim()->set_lr(1e-4);
  spec->mutable_optim()->set_max_steps(2);
  Effects fx;
  auto a = state_->Submit(req, now_, &fx);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->spec().checkpoint().root(), "/ckpt/" + a->name().substr(5));
  // A root the user chose is kept; other kinds are left alone.
  spec->mutable_checkpoint()->set_root("/mine");
  auto b = state_->Submit(req, now_, &fx);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->spec().checkpoint().root(), "/mine");
  EXPECT_EQ(Submit(1, 1).spec().checkpoint().root(), "");
}

}  // namespace gemma
