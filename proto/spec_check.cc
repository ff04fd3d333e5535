#include "proto/spec_check.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace gemma {
namespace v1 = ::gemma::v1;
namespace {

absl::Status Bad(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("spec.", field, ": ", what));
}

std::string Suffix(const std::string& full, const std::string& prefix) {
  return absl::StartsWith(full, prefix) ? full.substr(prefix.size()) : full;
}

int OneIfZero(int v) { return v == 0 ? 1 : v; }

absl::Status NonNegative(const std::string& field, double v) {
  if (v < 0) return Bad(field, absl::StrCat("must be >= 0, got ", v));
  return absl::OkStatus();
}

absl::Status Required(const std::string& field, const std::string& v,
                      const std::string& kind) {
  if (v.empty()) return Bad(field, absl::StrCat("required for kind ", kind));
  return absl::OkStatus();
}

// The optimizer and data fields the trainers read (jobs/trainer.h).
absl::Status CheckTraining(const v1::JobSpec& spec) {
  const auto& o = spec.optim();
  const auto& d = spec.data();
  const std::string kind = KindName(spec.kind());
  if (o.max_steps() <= 0)
    return Bad("optim.max_steps", absl::StrCat("must be > 0 for kind ", kind));
  if (o.warmup_steps() < 0) return Bad("optim.warmup_steps", "must be >= 0");
  if (o.weight_decay() < 0) return Bad("optim.weight_decay", "must be >= 0");
  if (o.grad_clip() < 0) return Bad("optim.grad_clip", "must be >= 0 (0: off)");
  if (o.beta1() < 0 || o.beta1() >= 1)
    return Bad("optim.beta1", "must be in [0, 1)");
  if (o.beta2() < 0 || o.beta2() >= 1)
    return Bad("optim.beta2", "must be in [0, 1)");
  if (o.eps() < 0) return Bad("optim.eps", "must be >= 0");
  if (o.min_lr_ratio() < 0 || o.min_lr_ratio() > 1)
    return Bad("optim.min_lr_ratio", "must be in [0, 1]");
  if (!o.schedule().empty() && o.schedule() != "cosine" &&
      o.schedule() != "linear" && o.schedule() != "constant") {
    return Bad("optim.schedule",
               absl::StrCat("must be cosine, linear or constant, got '",
                            o.schedule(), "'"));
  }
  if (o.grad_accum() < 0) return Bad("optim.grad_accum", "must be >= 0");
  if (o.eval_interval_steps() < 0)
    return Bad("optim.eval_interval_steps", "must be >= 0");
  if (o.eval_batches() < 0) return Bad("optim.eval_batches", "must be >= 0");
  if (o.log_interval_steps() < 0)
    return Bad("optim.log_interval_steps", "must be >= 0");
  if (o.eval_interval_steps() > 0 && d.eval().empty())
    return Bad("data.eval", "required when optim.eval_interval_steps > 0");
  if (d.batch_size() < 0) return Bad("data.batch_size", "must be >= 0");
  if (d.seq_len() < 0) return Bad("data.seq_len", "must be >= 0");
  if (d.pad_to_multiple() < 0)
    return Bad("data.pad_to_multiple", "must be >= 0");
  if (o.global_batch_size() < 0)
    return Bad("optim.global_batch_size", "must be >= 0");
  if (o.global_batch_size() > 0) {
    const int micro = d.batch_size() > 0 ? d.batch_size() : 1;
    const int dp = spec.parallel().dp() > 0 ? spec.parallel().dp() : 1;
    if (o.global_batch_size() % (micro * dp) != 0) {
      return Bad("optim.global_batch_size",
                 absl::StrCat(o.global_batch_size(),
                              " is not a multiple of data.batch_size x dp = ",
                              micro * dp));
    }
    if (o.grad_accum() > 0 &&
        o.grad_accum() * micro * dp != o.global_batch_size()) {
      return Bad("optim.grad_accum",
                 "conflicts with optim.global_batch_size (set one of them)");
    }
  }
  const std::string& dtype = spec.model().dtype();
  if (!dtype.empty() && dtype != "float32" && dtype != "bfloat16")
    return Bad("model.dtype",
               absl::StrCat("must be float32 or bfloat16, got '", dtype, "'"));
  for (const std::string& part : spec.model().freeze()) {
    if (part != "vision" && part != "projector" && part != "language") {
      return Bad("model.freeze",
                 absl::StrCat("unknown part '", part,
                              "' (vision, projector, language)"));
    }
  }
  return absl::OkStatus();
}

// The PeftSpec rules of ResolvePeftSpec (model/lora.h), without LibTorch.
absl::Status CheckPeft(const v1::PeftSpec& p) {
  const std::string& m = p.method();
  if (!m.empty() && m != "lora" && m != "dora") {
    return Bad("peft.method",
               absl::StrCat("must be lora or dora, got '", m, "'"));
  }
  if (p.alpha() < 0) {
    return Bad("peft.alpha", absl::StrCat("must be > 0, got ", p.alpha()));
  }
  if (!(p.dropout() >= 0 && p.dropout() < 1)) {
    return Bad("peft.dropout",
               absl::StrCat("must be in [0, 1), got ", p.dropout()));
  }
  // Every model family's targets (model/lora_layout.h AllAdapterTargetNames;
  // the model's own are checked when the adapters are attached): Gemma 3's
  // SigLIP has fc1/fc2, Gemma 4's vision tower gate_up/down.
  static const char* kTargets[] = {
      "qkv",      "o",          "gate_up",    "down",           "vision.qkv",
      "vision.o", "vision.fc1", "vision.fc2", "vision.gate_up", "vision.down"};
  for (int i = 0; i < p.target_modules_size(); ++i) {
    bool known = false;
    for (const char* t : kTargets) known = known || p.target_modules(i) == t;
    if (!known) {
      return Bad(absl::StrCat("peft.target_modules[", i, "]"),
                 absl::StrCat("unknown target '", p.target_modules(i),
                              "' (known: qkv, o, gate_up, down, vision.qkv, "
                              "vision.o, vision.fc1, vision.fc2, "
                              "vision.gate_up, vision.down)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int WorldSize(const v1::JobSpec& spec) {
  return OneIfZero(spec.parallel().tp()) * OneIfZero(spec.parallel().dp());
}

absl::Status ValidateJobSpec(const v1::JobSpec& spec) {
  if (spec.kind() == v1::JOB_KIND_UNSPECIFIED) {
    return Bad("kind",
               "required (convert, sft, peft, eval, generate or diagnose)");
  }
  if (!v1::JobKind_IsValid(spec.kind())) return Bad("kind", "unknown kind");
  const auto& p = spec.parallel();
  if (p.tp() < 0 || p.tp() > 4096)
    return Bad("parallel.tp", absl::StrCat("must be 1..4096, got ", p.tp()));
  if (p.dp() < 0 || p.dp() > 4096)
    return Bad("parallel.dp", absl::StrCat("must be 1..4096, got ", p.dp()));
  if (p.ep() < 0)
    return Bad("parallel.ep", absl::StrCat("must be >= 1, got ", p.ep()));
  if (p.has_zero_stage() && p.zero_stage() != 0 && p.zero_stage() != 1) {
    return Bad("parallel.zero_stage",
               absl::StrCat("must be 0 or 1, got ", p.zero_stage()));
  }
  const int world = WorldSize(spec);
  if (world > 4096)
    return Bad("parallel",
               absl::StrCat("world tp*dp = ", world, " exceeds 4096"));
  if (world % OneIfZero(p.ep()) != 0) {
    return Bad(
        "parallel.ep",
        absl::StrCat(p.ep(), " does not divide world size tp*dp = ", world));
  }
  if (!v1::Device_IsValid(spec.resources().device()))
    return Bad("resources.device", "unknown");
  if (spec.resources().min_memory_bytes() < 0)
    return Bad("resources.min_memory_bytes", "must be >= 0");
  const auto& r = spec.restart();
  if (r.max_restarts() < 0 || r.max_restarts() > 1000) {
    return Bad("restart.max_restarts",
               absl::StrCat("must be 0..1000, got ", r.max_restarts()));
  }
  if (auto s = NonNegative("restart.backoff_seconds", r.backoff_seconds());
      !s.ok())
    return s;
  if (auto s =
          NonNegative("restart.max_backoff_seconds", r.max_backoff_seconds());
      !s.ok())
    return s;
  const auto& c = spec.checkpoint();
  if (c.interval_steps() < 0)
    return Bad("checkpoint.interval_steps", "must be >= 0");
  if (c.keep_last_n() < 0) return Bad("checkpoint.keep_last_n", "must be >= 0");
  if (c.keep_best_k() < 0) return Bad("checkpoint.keep_best_k", "must be >= 0");
  if (c.keep_best_k() > 0 && c.best_metric().empty()) {
    return Bad("checkpoint.best_metric", "required when keep_best_k > 0");
  }
  const auto& t = spec.timeouts();
  if (auto s = NonNegative("timeouts.init_seconds", t.init_seconds()); !s.ok())
    return s;
  if (auto s = NonNegative("timeouts.step_seconds", t.step_seconds()); !s.ok())
    return s;
  if (auto s =
          NonNegative("timeouts.checkpoint_seconds", t.checkpoint_seconds());
      !s.ok())
    return s;
  if (auto s =
          NonNegative("timeouts.max_runtime_seconds", t.max_runtime_seconds());
      !s.ok())
    return s;
  const std::string kind = KindName(spec.kind());
  switch (spec.kind()) {
    case v1::JOB_KIND_CONVERT:
      if (auto s = Required("convert.input", spec.convert().input(), kind);
          !s.ok())
        return s;
      if (auto s = Required("convert.output", spec.convert().output(), kind);
          !s.ok())
        return s;
      if (!spec.convert().to().empty() && spec.convert().to() != "ours" &&
          spec.convert().to() != "hf") {
        return Bad("convert.to", absl::StrCat("must be ours or hf, got '",
                                              spec.convert().to(), "'"));
      }
      if (spec.convert().tp() < 0)
        return Bad("convert.tp", "must be >= 0 (0 means 1)");
      if (spec.convert().ep() < 0)
        return Bad("convert.ep", "must be >= 0 (0 means 1)");
      break;
    case v1::JOB_KIND_SFT:
    case v1::JOB_KIND_PEFT:
      if (auto s = Required("model.path", spec.model().path(), kind); !s.ok())
        return s;
      if (auto s = Required("data.train", spec.data().train(), kind); !s.ok())
        return s;
      if (spec.optim().lr() <= 0)
        return Bad("optim.lr", absl::StrCat("must be > 0 for kind ", kind));
      if (spec.kind() == v1::JOB_KIND_PEFT && spec.peft().rank() <= 0) {
        return Bad("peft.rank", "must be > 0 for kind peft");
      }
      if (auto s = CheckTraining(spec); !s.ok()) return s;
      if (spec.kind() == v1::JOB_KIND_PEFT) {  // same rules as model/lora.h
        if (auto s = CheckPeft(spec.peft()); !s.ok()) return s;
      }
      break;
    case v1::JOB_KIND_EVAL: {
      if (auto s = Required("model.path", spec.model().path(), kind); !s.ok())
        return s;
      if (spec.data().eval().empty() && spec.data().train().empty())
        return Bad("data.eval", "required for kind eval (or data.train)");
      const auto& e = spec.eval();
      if (e.max_batches() < 0) return Bad("eval.max_batches", "must be >= 0");
      if (e.generate_examples() < 0)
        return Bad("eval.generate_examples", "must be >= 0");
      if (e.max_new_tokens() < 0)
        return Bad("eval.max_new_tokens", "must be >= 0");
      if (spec.data().batch_size() < 0)
        return Bad("data.batch_size", "must be >= 0");
      break;
    }
    case v1::JOB_KIND_GENERATE: {
      if (auto s = Required("model.path", spec.model().path(), kind); !s.ok())
        return s;
      const auto& g = spec.generate();
      if (g.prompts().empty() && g.input().empty())
        return Bad("generate.input",
                   "required for kind generate (or generate.prompts)");
      if (g.output().empty() && spec.output().empty())
        return Bad("generate.output", "required for kind generate");
      if (g.max_new_tokens() < 0)
        return Bad("generate.max_new_tokens", "must be >= 0");
      if (g.temperature() < 0)
        return Bad("generate.temperature", "must be >= 0");
      if (g.top_k() < 0) return Bad("generate.top_k", "must be >= 0");
      if (g.top_p() < 0 || g.top_p() > 1)
        return Bad("generate.top_p",
                   absl::StrCat("must be in [0, 1], got ", g.top_p()));
      if (g.batch_size() < 0) return Bad("generate.batch_size", "must be >= 0");
      for (int i = 0; i < g.stop_size(); ++i) {
        if (g.stop(i).empty())
          return Bad(absl::StrCat("generate.stop[", i, "]"), "empty string");
      }
      break;
    }
    case v1::JOB_KIND_DIAGNOSE:
      if (spec.diagnose().steps() < 0)
        return Bad("diagnose.steps", "must be >= 0");
      if (spec.diagnose().matrix_size() < 0 ||
          spec.diagnose().matrix_size() > 16384) {
        return Bad("diagnose.matrix_size", "must be 0..16384");
      }
      if (spec.diagnose().step_sleep_ms() < 0)
        return Bad("diagnose.step_sleep_ms", "must be >= 0");
      if (spec.diagnose().allreduce_bytes() < 0 ||
          spec.diagnose().allreduce_bytes() > (int64_t{1} << 32)) {
        return Bad("diagnose.allreduce_bytes", "must be 0..4 GiB");
      }
      break;
    default:
      break;
  }
  return absl::OkStatus();
}

void ApplySpecDefaults(v1::JobSpec* spec) {
  auto* p = spec->mutable_parallel();
  p->set_tp(OneIfZero(p->tp()));
  p->set_dp(OneIfZero(p->dp()));
  p->set_ep(OneIfZero(p->ep()));
  if (spec->resources().device() == v1::DEVICE_UNSPECIFIED) {
    spec->mutable_resources()->set_device(v1::DEVICE_GPU);
  }
  if (spec->checkpoint().best_mode() == v1::METRIC_MODE_UNSPECIFIED) {
    spec->mutable_checkpoint()->set_best_mode(v1::METRIC_MODE_MIN);
  }
  if (spec->kind() == v1::JOB_KIND_DIAGNOSE) {
    auto* d = spec->mutable_diagnose();
    if (d->steps() == 0) d->set_steps(10);
    if (d->matrix_size() == 0) d->set_matrix_size(256);
  }
}

std::string StateName(v1::JobState state) {
  return Suffix(v1::JobState_Name(state), "JOB_STATE_");
}
std::string KindName(v1::JobKind kind) {
  return absl::AsciiStrToLower(Suffix(v1::JobKind_Name(kind), "JOB_KIND_"));
}
std::string DeviceName(v1::Device device) {
  return absl::AsciiStrToLower(Suffix(v1::Device_Name(device), "DEVICE_"));
}
std::string ReasonName(v1::FailureReason reason) {
  return Suffix(v1::FailureReason_Name(reason), "FAILURE_REASON_");
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

bool IsValidJobId(const std::string& id) {
  if (id.empty() || id.size() > 63) return false;
  for (char ch : id) {
    if (!(absl::ascii_islower(ch) || absl::ascii_isdigit(ch) || ch == '-'))
      return false;
  }
  return id.front() != '-';
}

}  // namespace gemma
