// YAML recipes -> JobSpec: strict parsing with errors naming the key path,
// --set overrides, and the shipped recipes parse and validate.
#include "cli/job_spec_yaml.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/spec_check.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

TEST(JobSpecYamlTest, ParsesTypedFieldsAndEnums) {
  auto spec = ParseJobSpecYaml(R"(
kind: sft
priority: 3
parallel: {tp: 2, dp: 4, ep: 2}
resources: {device: cpu}
restart: {max_restarts: 2, backoff_seconds: 0.5}
checkpoint: {interval_steps: 100, keep_last_n: 2, keep_best_k: 1, best_metric: eval_loss, best_mode: max}
model: {path: /m}
data: {train: /d.jsonl, packing: true}
optim: {lr: 1e-5, max_steps: 10}
labels: {team: vision}
peft: {target_modules: [q, v]}
)",
                               "r.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->kind(), gemma::v1::JOB_KIND_SFT);
  EXPECT_EQ(spec->priority(), 3);
  EXPECT_EQ(spec->parallel().dp(), 4);
  EXPECT_EQ(spec->resources().device(), gemma::v1::DEVICE_CPU);
  EXPECT_DOUBLE_EQ(spec->restart().backoff_seconds(), 0.5);
  EXPECT_EQ(spec->checkpoint().best_mode(), gemma::v1::METRIC_MODE_MAX);
  EXPECT_TRUE(spec->data().packing());
  EXPECT_DOUBLE_EQ(spec->optim().lr(), 1e-5);
  EXPECT_EQ(spec->labels().at("team"), "vision");
  EXPECT_THAT(spec->peft().target_modules(), ::testing::ElementsAre("q", "v"));
  EXPECT_EQ(WorldSize(*spec), 8);
  EXPECT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
}

TEST(JobSpecYamlTest, UnknownKeysAreErrorsWithTheirPath) {
  auto spec =
      ParseJobSpecYaml("kind: diagnose\nparallel: {tpp: 2}\n", "r.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(spec.status()));
  EXPECT_THAT(Msg(spec.status()),
              HasSubstr("r.yaml: parallel.tpp: unknown key"));
  EXPECT_THAT(Msg(spec.status()), HasSubstr("tp, ep, dp"));
  spec = ParseJobSpecYaml("colour: red\n", "r.yaml");
  EXPECT_THAT(Msg(spec.status()), HasSubstr("r.yaml: colour: unknown key"));
}

TEST(JobSpecYamlTest, WrongTypesAndEnumsNameTheKey) {
  auto spec =
      ParseJobSpecYaml("kind: diagnose\nparallel: {tp: two}\n", "r.yaml");
  EXPECT_THAT(Msg(spec.status()),
              HasSubstr("parallel.tp: expected an integer, got 'two'"));
  spec = ParseJobSpecYaml("kind: train\n", "r.yaml");
  EXPECT_THAT(Msg(spec.status()),
              HasSubstr("kind: 'train' is not one of convert, sft"));
  spec = ParseJobSpecYaml("kind: diagnose\nparallel: 3\n", "r.yaml");
  EXPECT_THAT(Msg(spec.status()), HasSubstr("parallel: expected a mapping"));
  spec = ParseJobSpecYaml("kind: [diagnose\n", "bad.yaml");
  EXPECT_THAT(Msg(spec.status()), HasSubstr("bad.yaml:"));
}

TEST(JobSpecYamlTest, SetOverridesKeepTypesAndAreCheckedToo) {
  auto spec = ParseJobSpecYaml(
      "kind: diagnose\nparallel: {tp: 1}\n", "r.yaml",
      {"parallel.dp=3", "optim.lr=2e-4", "resources.device=cpu"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->parallel().dp(), 3);
  EXPECT_DOUBLE_EQ(spec->optim().lr(), 2e-4);
  EXPECT_EQ(spec->resources().device(), gemma::v1::DEVICE_CPU);
  spec = ParseJobSpecYaml("kind: diagnose\n", "r.yaml", {"parallel.dpp=3"});
  EXPECT_THAT(Msg(spec.status()), HasSubstr("parallel.dpp: unknown key"));
  spec = ParseJobSpecYaml("kind: diagnose\n", "r.yaml", {"novalue"});
  EXPECT_THAT(Msg(spec.status()),
              HasSubstr("--set novalue: expected KEY.PATH=VALUE"));
}

TEST(JobSpecYamlTest, ValidationNamesTheField) {
  auto spec = ParseJobSpecYaml(
      "kind: diagnose\nparallel: {tp: 2, dp: 2, ep: 3}\n", "r.yaml");
  ASSERT_TRUE(spec.ok());
  EXPECT_THAT(Msg(ValidateJobSpec(*spec)),
              HasSubstr("spec.parallel.ep: 3 does not divide"));
  spec = ParseJobSpecYaml("kind: sft\n", "r.yaml");
  EXPECT_THAT(Msg(ValidateJobSpec(*spec)),
              HasSubstr("spec.model.path: required for kind sft"));
  // LoRA and DoRA split over tensor-parallel ranks (model/lora.h).
  for (const std::string peft : {"{rank: 8, method: dora}", "{rank: 8}"}) {
    spec = ParseJobSpecYaml(
        "kind: peft\nparallel: {tp: 2, dp: 2}\nmodel: {path: /m}\n"
        "data: {train: /d.jsonl}\noptim: {lr: 1e-4, max_steps: 5}\n"
        "peft: " +
            peft + "\n",
        "r.yaml");
    ASSERT_TRUE(spec.ok()) << peft << ": " << spec.status();
    EXPECT_TRUE(ValidateJobSpec(*spec).ok())
        << peft << ": " << ValidateJobSpec(*spec);
  }
  spec = ParseJobSpecYaml("parallel: {tp: 1}\n", "r.yaml");
  EXPECT_THAT(Msg(ValidateJobSpec(*spec)), HasSubstr("spec.kind: required"));
  spec = ParseJobSpecYaml("kind: diagnose\nrestart: {max_restarts: -1}\n",
                          "r.yaml");
  EXPECT_THAT(Msg(ValidateJobSpec(*spec)),
              HasSubstr("spec.restart.max_restarts"));
}

TEST(JobSpecYamlTest, ShippedRecipesParseAndValidate) {
  auto spec = LoadJobSpecFile(std::string(GEMMA_SOURCE_DIR) +
                              "/jobs/recipes/diagnose.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(ValidateJobSpec(*spec).ok());
  EXPECT_EQ(spec->kind(), gemma::v1::JOB_KIND_DIAGNOSE);
  EXPECT_TRUE(absl::IsNotFound(LoadJobSpecFile("/nonexistent.yaml").status()));
}

}  // namespace
}  // namespace gemma
