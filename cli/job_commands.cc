// gemmactl submit | get | list | cancel | logs | watch
#include <unistd.h>

#include <iomanip>
#include <iostream>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "cli/cli.h"
#include "cli/job_spec_yaml.h"
#include "gemma/v1/jobs.grpc.pb.h"
#include "proto/spec_check.h"

namespace gemma::cli {
namespace {

namespace v1 = ::gemma::v1;

std::string RandomRequestId() {
  std::random_device rd;
  std::mt19937_64 gen(rd() ^ (static_cast<uint64_t>(getpid()) << 32) ^
                      static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())));
  return absl::StrFormat("gemmactl-%016x%016x", gen(), gen());
}

std::string Age(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  const int64_t s = (absl::ToUnixMillis(absl::Now()) - unix_ms) / 1000;
  if (s < 120) return absl::StrCat(s, "s");
  if (s < 7200) return absl::StrCat(s / 60, "m");
  return absl::StrCat(s / 3600, "h");
}

std::string ProgressText(const v1::Job& j) {
  if (!j.has_progress() || j.progress().total_steps() == 0) return "";
  std::string s = absl::StrCat("step ", j.progress().step(), "/",
                               j.progress().total_steps());
  // A few headline metrics, always in this order: training loss and token
  // accuracy, held-out (eval) numbers when a step carries them, throughput.
  static constexpr const char* kShown[] = {"loss",
                                           "accuracy",
                                           "eval_loss",
                                           "eval_accuracy",
                                           "eval_token_accuracy",
                                           "gflops",
                                           "tokens_per_s"};
  const auto& m = j.progress().metrics();
  for (const char* k : kShown) {
    if (auto it = m.find(k); it != m.end()) {
      absl::StrAppend(&s, " ", k, "=", absl::StrFormat("%.3g", it->second));
    }
  }
  return s;
}

// Exit code of --follow and `watch JOB`: 0 only for SUCCEEDED.
int ExitCodeFor(v1::JobState st) {
  return st == v1::JOB_STATE_SUCCEEDED ? 0 : 1;
}

void PrintEvent(const v1::JobEvent& ev) {
  const std::string when =
      absl::FormatTime("%H:%M:%S", absl::FromUnixMillis(ev.time_unix_ms()),
                       absl::LocalTimeZone());
  if (ev.type() == v1::EVENT_TYPE_PROGRESS) {
    std::cout << when << " " << ev.job().name() << " " << ProgressText(ev.job())
              << "\n";
  } else {
    std::cout << when << " " << ev.job().name() << " "
              << StateName(ev.job().state()) << ": " << ev.message() << "\n";
  }
  std::cout.flush();
}

// Streams one job's events (and progress) until it ends; resumes from the
// last revision when the stream breaks (e.g. the coordinator restarts).
int Follow(const CommonFlags& common, const std::string& name, bool progress) {
  auto stub = v1::JobService::NewStub(common.Channel());
  int64_t after = 0;
  absl::Time last_ok = absl::Now();
  while (true) {
    grpc::ClientContext ctx;
    v1::WatchJobRequest req;
    req.set_name(name);
    req.set_after_revision(after);
    req.set_include_progress(progress);
    auto reader = stub->WatchJob(&ctx, req);
    v1::JobEvent ev;
    v1::JobState last_state = v1::JOB_STATE_UNSPECIFIED;
    while (reader->Read(&ev)) {
      last_ok = absl::Now();
      if (ev.type() != v1::EVENT_TYPE_PROGRESS) after = ev.revision();
      if (common.json()) {
        std::cout << ToJson(ev) << "\n";
        std::cout.flush();
      } else {
        PrintEvent(ev);
      }
      if (ev.type() != v1::EVENT_TYPE_PROGRESS) last_state = ev.job().state();
    }
    grpc::Status s = reader->Finish();
    if (s.ok()) {
      if (!IsTerminal(last_state)) {
        // Ended without a final event in this stream (it came before `after`).
        grpc::ClientContext gctx;
        common.SetDeadline(gctx);
        v1::GetJobRequest g;
        g.set_name(name);
        v1::Job job;
        grpc::Status gs = stub->GetJob(&gctx, g, &job);
        if (!gs.ok()) return ReportRpcError("get " + name, gs, common);
        last_state = job.state();
      }
      return ExitCodeFor(last_state);
    }
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE ||
        absl::Now() - last_ok >
            absl::Milliseconds(std::max<int64_t>(common.timeout_ms, 30000))) {
      return ReportRpcError("watch " + name, s, common);
    }
    absl::SleepFor(absl::Milliseconds(250));  // coordinator restarting: resume
  }
}

int Submit(int argc, char** argv) {
  CommonFlags common;
  std::string file, request_id, job_id;
  std::vector<std::string> sets;
  bool follow = false;
  bool dry_run = false;
  FlagSet flags("gemmactl submit",
                "Submit a job from a YAML recipe (a JobSpec).");
  common.Register(flags);
  flags.String("file", &file, "the recipe").Short('f').Meta("FILE.yaml");
  flags
      .Repeated("set", &sets, "override a recipe key, e.g. --set parallel.dp=2")
      .Meta("KEY=VALUE");
  flags.Bool("follow", &follow,
             "stream the job's events until it ends; exit 0 only on SUCCEEDED");
  flags.String("request-id", &request_id,
               "idempotency key: a retry with the same id returns the same job "
               "(default: random)");
  flags.String("job-id", &job_id,
               "choose the job's id (jobs/ID); default: assigned");
  flags.Bool(
      "dry-run", &dry_run,
      "parse and check the recipe, print the JobSpec as JSON, send nothing");
  flags.Epilog(
      "Examples:\n"
      "  gemmactl submit -f jobs/recipes/diagnose.yaml\n"
      "  gemmactl submit -f jobs/recipes/diagnose.yaml --set parallel.dp=4 "
      "--follow");
  if (auto exit_code = ParseOrExit(flags, argc, argv, common))
    return *exit_code;
  if (file.empty()) {
    std::cerr << "gemmactl submit: --file is required\n";
    return 2;
  }
  auto spec = LoadJobSpecFile(file, sets);
  if (!spec.ok()) {
    std::cerr << "gemmactl submit: " << spec.status().message() << "\n";
    return 2;
  }
  if (absl::Status s = ValidateJobSpec(*spec); !s.ok()) {
    std::cerr << "gemmactl submit: " << file << ": " << s.message() << "\n";
    return 2;
  }
  if (dry_run) {
    ApplySpecDefaults(&*spec);
    std::cout << ToJson(*spec) << "\n";
    return 0;
  }
  v1::SubmitJobRequest req;
  *req.mutable_spec() = *spec;
  req.set_request_id(request_id.empty() ? RandomRequestId() : request_id);
  req.set_job_id(job_id);
  auto stub = v1::JobService::NewStub(common.Channel());
  v1::Job job;
  grpc::Status s;
  // Retrying is safe: the request id makes the submit idempotent.
  for (int attempt = 0; attempt < 3; ++attempt) {
    grpc::ClientContext ctx;
    common.SetDeadline(ctx);
    s = stub->SubmitJob(&ctx, req, &job);
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    absl::SleepFor(absl::Milliseconds(300));
  }
  if (!s.ok()) return ReportRpcError("submit", s, common);
  if (common.json() && !follow) {
    std::cout << ToJson(job) << "\n";
  } else if (!common.json()) {
    std::cout << job.name() << " " << StateName(job.state()) << "\n";
  }
  if (!follow) return 0;
  return Follow(common, job.name(), true);
}

int Get(int argc, char** argv) {
  CommonFlags common;
  FlagSet flags("gemmactl get",
                "Show one job: state, progress, why it waits, its attempts.");
  common.Register(flags);
  flags.Positional("JOB", "jobs/ID or ID");
  flags.Epilog(
      "Examples:\n  gemmactl get j-000001\n  gemmactl get jobs/j-000001 -o "
      "json");
  if (auto exit_code = ParseOrExit(flags, argc, argv, common))
    return *exit_code;
  if (flags.positional().size() != 1) {
    std::cerr << "gemmactl get: expected one JOB\n";
    return 2;
  }
  auto stub = v1::JobService::NewStub(common.Channel());
  grpc::ClientContext ctx;
  common.SetDeadline(ctx);
  v1::GetJobRequest req;
  req.set_name(JobName(flags.positional()[0]));
  v1::Job j;
  grpc::Status s = stub->GetJob(&ctx, req, &j);
  if (!s.ok()) return ReportRpcError("get " + req.name(), s, common);
  if (common.json()) {
    std::cout << ToJson(j) << "\n";
    return 0;
  }
  std::cout << "name:      " << j.name() << "\n"
            << "kind:      " << KindName(j.spec().kind()) << "\n"
            << "state:     " << StateName(j.state()) << "\n"
            << "layout:    tp=" << j.spec().parallel().tp()
            << " ep=" << j.spec().parallel().ep()
            << " dp=" << j.spec().parallel().dp() << " (" << WorldSize(j.spec())
            << " " << DeviceName(j.spec().resources().device()) << " ranks)\n"
            << "created:   " << Age(j.create_time_unix_ms()) << " ago\n"
            << "attempts:  " << j.attempt_count() << " (max restarts "
            << j.spec().restart().max_restarts() << ")\n";
  if (!j.waiting_reason().empty())
    std::cout << "waiting:   " << j.waiting_reason() << "\n";
  if (j.state() == v1::JOB_STATE_RECOVERING) {
    std::cout << "next:      attempt in "
              << std::max<int64_t>(0, j.not_before_unix_ms() -
                                          absl::ToUnixMillis(absl::Now()))
              << " ms\n";
  }
  if (j.has_failure() &&
      j.failure().reason() != v1::FAILURE_REASON_UNSPECIFIED) {
    std::cout << "failure:   " << ReasonName(j.failure().reason()) << ": "
              << j.failure().message() << "\n";
  }
  if (const std::string p = ProgressText(j); !p.empty())
    std::cout << "progress:  " << p << "\n";
  for (const auto& a : j.attempts()) {
    std::cout << "attempt " << a.number() << " (epoch " << a.epoch()
              << "): " << StateName(a.state());
    if (a.has_failure() &&
        a.failure().reason() != v1::FAILURE_REASON_UNSPECIFIED) {
      std::cout << " " << ReasonName(a.failure().reason()) << ": "
                << a.failure().message();
    }
    std::cout << "\n";
    for (const auto& r : a.ranks()) {
      std::cout << "  rank " << r.rank() << " on " << r.worker() << ": step "
                << r.step() << "/" << r.total_steps()
                << (r.finished()  ? " finished"
                    : r.started() ? " running"
                                  : "")
                << "\n";
    }
  }
  return 0;
}

int List(int argc, char** argv) {
  CommonFlags common;
  std::vector<std::string> states;
  int64_t page_size = 0;
  std::string page_token;
  bool all_pages = true;
  FlagSet flags("gemmactl list", "List jobs, oldest first.");
  common.Register(flags);
  flags.Repeated("state", &states,
                 "only jobs in this state (repeatable): queued, running, ...");
  flags.Int("page-size", &page_size, "jobs per call (0: server default)");
  flags.String("page-token", &page_token, "resume from a previous page");
  flags.Bool("all", &all_pages, "fetch every page (--all=false: one page)");
  flags.Epilog(
      "Examples:\n  gemmactl list\n  gemmactl list --state queued --state "
      "running -o json");
  if (auto exit_code = ParseOrExit(flags, argc, argv, common))
    return *exit_code;
  v1::ListJobsRequest req;
  for (const auto& st : states) {
    v1::JobState v;
    if (!v1::JobState_Parse("JOB_STATE_" + absl::AsciiStrToUpper(st), &v) ||
        v == v1::JOB_STATE_UNSPECIFIED) {
      std::cerr << "gemmactl list: --state '" << st << "' is not a job state\n";
      return 2;
    }
    req.add_states(v);
  }
  req.set_page_size(static_cast<int32_t>(page_size));
  req.set_page_token(page_token);
  auto stub = v1::JobService::NewStub(common.Channel());
  v1::ListJobsResponse all;
  while (true) {
    grpc::ClientContext ctx;
    common.SetDeadline(ctx);
    v1::ListJobsResponse resp;
    grpc::Status s = stub->ListJobs(&ctx, req, &resp);
    if (!s.ok()) return ReportRpcError("list", s, common);
    for (auto& j : *resp.mutable_jobs()) *all.add_jobs() = std::move(j);
    all.set_next_page_token(resp.next_page_token());
    if (!all_pages || resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  if (common.json()) {
    std::cout << ToJson(all) << "\n";
    return 0;
  }
  std::cout << std::left << std::setw(22) << "NAME" << std::setw(12) << "STATE"
            << std::setw(10) << "KIND" << std::setw(7) << "RANKS"
            << std::setw(9) << "ATTEMPT" << std::setw(6) << "AGE"
            << "INFO\n";
  for (const auto& j : all.jobs()) {
    std::string info = j.waiting_reason();
    if (info.empty()) info = ProgressText(j);
    if (info.empty() && j.state() == v1::JOB_STATE_FAILED)
      info = j.failure().message();
    std::cout << std::left << std::setw(22) << j.name() << std::setw(12)
              << StateName(j.state()) << std::setw(10)
              << KindName(j.spec().kind()) << std::setw(7)
              << WorldSize(j.spec()) << std::setw(9) << j.attempt_count()
              << std::setw(6) << Age(j.create_time_unix_ms()) << info << "\n";
  }
  if (!all.next_page_token().empty())
    std::cout << "next page: --page-token " << all.next_page_token() << "\n";
  return 0;
}

int Cancel(int argc, char** argv) {
  CommonFlags common;
  FlagSet flags("gemmactl cancel",
                "Cancel a job: queued ones end now, running ones stop.");
  common.Register(flags);
  flags.Positional("JOB", "jobs/ID or ID");
  flags.Epilog("Example:\n  gemmactl cancel j-000001");
  if (auto exit_code = ParseOrExit(flags, argc, argv, common))
    return *exit_code;
  if (flags.positional().size() != 1) {
    std::cerr << "gemmactl cancel: expected one JOB\n";
    return 2;
  }
  auto stub = v1::JobService::NewStub(common.Channel());
  grpc::ClientContext ctx;
  common.SetDeadline(ctx);
  v1::CancelJobRequest req;
  req.set_name(JobName(flags.positional()[0]));
  v1::Job j;
  grpc::Status s = stub->CancelJob(&ctx, req, &j);
  if (!s.ok()) return ReportRpcError("cancel " + req.name(), s, common);
  if (common.json()) {
    std::cout << ToJson(j) << "\n";
  } else {
    std::cout << j.name() << " " << StateName(j.state()) << "\n";
  }
  return 0;
}

int Logs(int argc, char** argv) {
  CommonFlags common;
  bool follow = false;
  int64_t rank = -1;
  FlagSet flags(
      "gemmactl logs",
      "Print a job's log lines (recent ones kept by the coordinator).");
  common.Register(flags);
  flags.Positional("JOB", "jobs/ID or ID");
  flags.Bool("follow", &follow, "keep printing new lines until the job ends")
      .Short('f');
  flags.Int("rank", &rank, "only this rank (-1: all)");
  flags.Epilog(
      "Examples:\n  gemmactl logs j-000001\n  gemmactl logs -f j-000001 --rank "
      "0");
  if (auto exit_code = ParseOrExit(flags, argc, argv, common))
    return *exit_code;
  if (flags.positional().size() != 1) {
    std::cerr << "gemmactl logs: expected one JOB\n";
    return 2;
  }
  auto stub = v1::JobService::NewStub(common.Channel());
  grpc::ClientContext ctx;
  if (!follow) common.SetDeadline(ctx);
  v1::StreamLogsRequest req;
  req.set_name(JobName(flags.positional()[0]));
  req.set_follow(follow);
  req.set_rank(static_cast<int32_t>(rank));
  auto reader = stub->StreamLogs(&ctx, req);
  v1::LogLine line;
  while (reader->Read(&line)) {
    if (common.json()) {
      std::cout << ToJson(line) << "\n";
    } else {
      std::cout << "[attempt " << line.attempt() << " rank " << line.rank()
                << "] " << line.text() << "\n";
    }
    std::cout.flush();
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) return ReportRpcError("logs " + req.name(), s, common);
  return 0;
}

int Watch(int argc, char** argv) {
  CommonFlags common;
  int64_t after = 0;
  bool progress = true;
  FlagSet flags("gemmactl watch",
                "Stream job events (all jobs, or one until it ends; exit 0 "
                "only on SUCCEEDED).");
  common.Register(flags);
  flags.Positional("[JOB]", "jobs/ID or ID; none: every job");
  flags.Int("after-revision", &after,
            "replay events after this revision first");
  flags.Bool("progress", &progress, "include live progress");
  flags.Epilog(
      "Examples:\n  gemmactl watch\n  gemmactl watch j-000001 -o json");
  if (auto exit_code = ParseOrExit(flags, argc, argv, common))
    return *exit_code;
  if (flags.positional().size() == 1) {
    return Follow(common, JobName(flags.positional()[0]), progress);
  }
  auto stub = v1::JobService::NewStub(common.Channel());
  grpc::ClientContext ctx;
  v1::WatchJobsRequest req;
  req.set_after_revision(after);
  req.set_include_progress(progress);
  auto reader = stub->WatchJobs(&ctx, req);
  v1::JobEvent ev;
  while (reader->Read(&ev)) {
    if (common.json()) {
      std::cout << ToJson(ev) << "\n";
      std::cout.flush();
    } else {
      PrintEvent(ev);
    }
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) return ReportRpcError("watch", s, common);
  return 0;
}

}  // namespace

std::vector<Command> JobCommands() {
  return {
      {"submit", "Submit a job from a YAML recipe", Submit},
      {"get", "Show a job, its attempts and why it waits", Get},
      {"list", "List jobs", List},
      {"cancel", "Cancel a job", Cancel},
      {"logs", "Print (or follow) a job's logs", Logs},
      {"watch", "Stream job events and progress", Watch},
  };
}

}  // namespace gemma::cli
