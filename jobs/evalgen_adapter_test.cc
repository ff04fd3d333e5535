// The eval job on a PEFT adapter checkpoint (model/lora.h) gives the loss the
// real `peft` computes with the same adapter exported to HF PEFT format on the
// transformers-made base model (jobs/evalgen_peft_reference.py).
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "gtest/gtest.h"
#include "jobs/eval.h"
#include "jobs/generate_job.h"
#include "model/lora.h"
#include "model/weights.h"

namespace gemma {
namespace {

using json = nlohmann::json;

std::string Fixture(const std::string& name) {
  return std::string(GEMMA_EVALGEN_FIXTURE) + "/" + name;
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(EvalAdapterTest, AdapterCheckpointLossEqualsPeft) {
  std::string tmpl = "/tmp/gemma_evalgen_adapter_XXXXXX";
  const std::string dir = mkdtemp(tmpl.data());
  auto model = LoadModel(Fixture("model"));
  ASSERT_TRUE(model.ok()) << model.status();
  gemma::v1::PeftSpec spec;
  spec.set_rank(4);
  spec.set_alpha(8);
  ASSERT_TRUE(AttachAdapters(*model, spec).ok());
  {
    torch::NoGradGuard no_grad;
    torch::manual_seed(3);
    for (auto& [name, t] : AdapterParameters(*model))
      t.copy_(torch::randn(t.sizes()) * 0.2);  // B too: the adapter must matter
  }
  ASSERT_TRUE(
      SaveAdapterCheckpoint(dir + "/adapter", *model, spec, Fixture("model"))
          .ok());
  ASSERT_TRUE(
      ExportPeftAdapter(*model, spec, dir + "/hf_adapter", Fixture("model"))
          .ok());

  const std::string cmd =
      std::string(GEMMA_PYTHON_EXE) + " " + GEMMA_SOURCE_DIR +
      "/jobs/evalgen_peft_reference.py " + GEMMA_EVALGEN_FIXTURE + " " + dir +
      "/hf_adapter " + dir + "/peft.json > " + dir + "/peft.log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << ReadAll(dir + "/peft.log");
  const json ref = json::parse(ReadAll(dir + "/peft.json"));

  gemma::v1::JobSpec job_spec;
  job_spec.set_kind(gemma::v1::JOB_KIND_EVAL);
  job_spec.mutable_model()->set_path(dir +
                                     "/adapter");  // tokenizer: the base's
  job_spec.mutable_data()->set_eval(Fixture("eval.jsonl"));
  job_spec.mutable_data()->set_batch_size(2);
  job_spec.mutable_eval()->set_report(dir + "/report.json");
  RankContext ctx;
  ctx.spec = job_spec;
  ctx.device = "cpu";
  auto job = NewEvalJob();
  absl::Status st = job->Run(ctx);
  ASSERT_TRUE(st.ok()) << st;
  const json rep = json::parse(ReadAll(dir + "/report.json"));
  const double want = ref["loss"].get<double>();
  EXPECT_EQ(rep["tokens"].get<int64_t>(), ref["tokens"].get<int64_t>());
  EXPECT_NEAR(rep["loss"].get<double>(), want, 2e-5 * want);
  EXPECT_EQ(rep["correct"].get<int64_t>(), ref["correct"].get<int64_t>());
  // The adapter changed the model: its loss is not the base model's.
  EXPECT_GT(std::abs(want - ref["base_loss"].get<double>()), 1e-2);
}

TEST(EvalAdapterTest, AMissingBaseModelIsNamed) {
  std::string tmpl = "/tmp/gemma_evalgen_adapter_XXXXXX";
  const std::string dir = mkdtemp(tmpl.data());
  std::ofstream(dir + "/adapter.json")
      << R"({"format": "gemma-adapter", "version": 1, "peft": {"method": "lora", "rank": 4,)"
      << R"( "alpha": 8, "dropout": 0, "target_modules": ["qkv"]}, "base_model": "/nonexistent/base",)"
      << R"( "step": 0, "tensors": {}})";
  auto model = LoadJobModel(dir);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(std::string(model.status().message()).find("/nonexistent/base"),
            std::string::npos)
      << model.status();
}

}  // namespace
}  // namespace gemma
