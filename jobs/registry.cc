#include "jobs/registry.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "jobs/convert.h"
#include "jobs/diagnose.h"
#include "jobs/eval.h"
#include "jobs/generate_job.h"
#include "jobs/peft_job.h"
#include "jobs/sft.h"

namespace gemma {

const JobRegistry& JobRegistry::Default() {
  static const JobRegistry* registry = [] {
    auto* r = new JobRegistry();
    r->Register(gemma::v1::JOB_KIND_DIAGNOSE, NewDiagnoseJob);
    r->Register(gemma::v1::JOB_KIND_CONVERT, NewConvertJob);
    r->Register(gemma::v1::JOB_KIND_EVAL, NewEvalJob);
    r->Register(gemma::v1::JOB_KIND_GENERATE, NewGenerateJob);
    r->Register(gemma::v1::JOB_KIND_SFT, NewSftJob);
    r->Register(gemma::v1::JOB_KIND_PEFT, NewPeftJob);
    return r;
  }();
  return *registry;
}

void JobRegistry::Register(gemma::v1::JobKind kind, Factory factory) {
  factories_[kind] = std::move(factory);
}

absl::StatusOr<std::unique_ptr<Job>> JobRegistry::Create(
    gemma::v1::JobKind kind) const {
  auto it = factories_.find(kind);
  if (it == factories_.end()) {
    std::string name = gemma::v1::JobKind_Name(kind);
    if (name.rfind("JOB_KIND_", 0) == 0)
      name = absl::AsciiStrToLower(name.substr(9));
    return absl::UnimplementedError(absl::StrCat(
        "job kind '", name, "' is not implemented by this worker"));
  }
  return it->second();
}

}  // namespace gemma
