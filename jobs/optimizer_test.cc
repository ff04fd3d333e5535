#include "jobs/optimizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "jobs/train_state.h"
#include "model/checkpoint.h"

namespace gemma {
namespace {

std::string TempDir() {
  std::string tmpl = "/tmp/gemma_optimizer_test_XXXXXX";
  return mkdtemp(tmpl.data());
}

// The same parameters, gradients and rates through our AdamW and through
// torch.optim.AdamW (python): every parameter equal to the bit after every
// step, with and without weight decay on the 2-D ones.
TEST(AdamWTest, EqualsTorchAdamW) {
  const std::string dir = TempDir();
  torch::manual_seed(7);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"a.weight", {5, 3}}, {"a.norm", {3}}, {"b.weight", {4, 2, 2}}};
  const int steps = 4;
  const std::vector<double> lrs = {1e-2, 3e-3, 5e-2, 1e-3};
  AdamWOptions o;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.weight_decay = 0.1;

  std::map<std::string, at::Tensor> in;
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (const auto& [name, shape] : shapes) {
    at::Tensor p = torch::randn(shape);
    in["param/" + name] = p.clone();
    params.emplace_back(name, p.requires_grad_(true));
    for (int k = 0; k < steps; ++k)
      in[absl::StrCat("grad", k, "/", name)] = torch::randn(shape) * (k + 1);
  }
  in["lr"] = torch::tensor(lrs, torch::kFloat64);
  in["hyper"] =
      torch::tensor({o.beta1, o.beta2, o.eps, o.weight_decay}, torch::kFloat64);
  ASSERT_TRUE(WriteTensorFile(dir + "/in.safetensors", in).ok());
  const std::string cmd = absl::StrCat(
      GEMMA_PYTHON, " ", GEMMA_SOURCE_DIR, "/jobs/testdata/adamw_ref.py ", dir,
      "/in.safetensors ", dir, "/out.safetensors");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto ref = ReadTensorFile(dir + "/out.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status();

  AdamW adamw(params, o);
  EXPECT_FALSE(AdamW::Decays("a.norm", params[1].second));
  EXPECT_TRUE(AdamW::Decays("a.weight", params[0].second));
  for (int k = 0; k < steps; ++k) {
    for (auto& [name, p] : params)
      p.mutable_grad() = in[absl::StrCat("grad", k, "/", name)].clone();
    adamw.Step(lrs[k]);
    for (auto& [name, p] : params) {
      const at::Tensor& want = ref->at(absl::StrCat("step", k, "/", name));
      EXPECT_TRUE(torch::equal(p.detach(), want))
          << name << " after step " << k << ": max diff "
          << (p.detach() - want).abs().max().item<double>();
    }
  }
  EXPECT_EQ(adamw.steps(), steps);
  ASSERT_TRUE(RemoveTree(dir).ok());
}

// State saved after two steps and loaded into a fresh optimizer continues
// exactly as the original does.
TEST(AdamWTest, StateRoundTripContinuesBitIdentically) {
  torch::manual_seed(3);
  at::Tensor w1 = torch::randn({4, 4}).requires_grad_(true);
  at::Tensor w2 = w1.detach().clone().requires_grad_(true);
  std::vector<at::Tensor> grads;
  for (int k = 0; k < 4; ++k) grads.push_back(torch::randn({4, 4}));
  AdamWOptions o;
  o.weight_decay = 0.05;
  AdamW a({{"w", w1}}, o);
  for (int k = 0; k < 2; ++k) {
    w1.mutable_grad() = grads[k].clone();
    a.Step(0.01);
  }
  {
    torch::NoGradGuard g;
    w2.copy_(w1);
  }
  AdamW b({{"w", w2}}, o);
  ASSERT_TRUE(b.LoadState(a.StateTensors(), a.steps()).ok());
  for (int k = 2; k < 4; ++k) {
    w1.mutable_grad() = grads[k].clone();
    w2.mutable_grad() = grads[k].clone();
    a.Step(0.01);
    b.Step(0.01);
    EXPECT_TRUE(torch::equal(w1.detach(), w2.detach())) << "step " << k;
  }
  auto bad = b.LoadState({{"exp_avg/w", torch::zeros({4, 4})}}, 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.message()), ::testing::HasSubstr("exp_avg_sq/w"));
}

// bf16 parameters are updated through fp32 master weights: the parameter is
// the master rounded, and small updates accumulate in the master.
TEST(AdamWTest, Bf16ParametersUseFp32Master) {
  at::Tensor w = torch::ones({2, 4}, torch::kBFloat16).requires_grad_(true);
  AdamW a({{"w", w}}, AdamWOptions{});
  for (int k = 0; k < 5; ++k) {
    w.mutable_grad() = torch::ones({2, 4}, torch::kBFloat16);
    a.Step(1e-4);  // each update is below bf16 resolution at 1.0
  }
  auto state = a.StateTensors();
  ASSERT_TRUE(state.count("master/w"));
  const at::Tensor master = state["master/w"];
  EXPECT_EQ(master.scalar_type(), torch::kFloat32);
  EXPECT_NEAR(master[0][0].item<double>(), 1.0 - 5e-4, 1e-6);
  EXPECT_TRUE(torch::equal(w.detach(), master.to(torch::kBFloat16)));
}

}  // namespace
}  // namespace gemma
