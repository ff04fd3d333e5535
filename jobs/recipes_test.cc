// Every recipe under jobs/recipes parses with the strict YAML reader and
// passes the coordinator's spec checks; the Gemma 3 recipes carry the
// reference hyperparameters; a wrong key or type is an error naming the key.
#include <dirent.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cli/job_spec_yaml.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/spec_check.h"

namespace gemma {
namespace {

using ::testing::HasSubstr;

const std::string kDir = std::string(GEMMA_SOURCE_DIR) + "/jobs/recipes";

std::vector<std::string> Recipes() {
  std::vector<std::string> names;
  DIR* d = opendir(kDir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 5 && n.substr(n.size() - 5) == ".yaml") names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

TEST(RecipesTest, EveryRecipeParsesAndPassesTheSpecChecks) {
  const std::vector<std::string> names = Recipes();
  for (const char* want :
       {"gemma3-4b-sft.yaml", "gemma3-12b-sft.yaml", "gemma3-27b-sft.yaml",
        "gemma3-4b-peft.yaml", "gemma3-12b-peft.yaml", "gemma3-27b-peft.yaml",
        "tiny-sft.yaml", "tiny-peft.yaml", "tiny-eval.yaml",
        "tiny-generate.yaml", "diagnose.yaml", "gemma4-26b-a4b-sft.yaml",
        "gemma4-26b-a4b-peft.yaml", "tiny-moe-sft.yaml"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }
  for (const std::string& n : names) {
    SCOPED_TRACE(n);
    auto spec = LoadJobSpecFile(kDir + "/" + n);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
    EXPECT_FALSE(spec->display_name().empty());
  }
}

TEST(RecipesTest, Gemma3RecipesCarryTheReferenceHyperparameters) {
  struct Want {
    std::string size;
    int tp;
  };
  for (const Want& w : {Want{"4b", 1}, Want{"12b", 2}, Want{"27b", 4}}) {
    for (const std::string kind : {"sft", "peft"}) {
      const std::string name = "gemma3-" + w.size + "-" + kind + ".yaml";
      SCOPED_TRACE(name);
      auto s = LoadJobSpecFile(kDir + "/" + name);
      ASSERT_TRUE(s.ok()) << s.status();
      EXPECT_EQ(KindName(s->kind()), kind);
      // The reference's TP sizes, for SFT and PEFT (adapters split over
      // TP as their projections do).
      EXPECT_EQ(s->parallel().tp(), w.tp);
      EXPECT_EQ(s->parallel().tp() * s->parallel().dp(), 8);
      EXPECT_EQ(s->data().seq_len(), 4096);
      EXPECT_EQ(s->data().batch_size(), 2);
      EXPECT_EQ(s->optim().global_batch_size(), 32);
      EXPECT_DOUBLE_EQ(s->optim().lr(), kind == "sft" ? 5e-5 : 2e-4);
      EXPECT_EQ(s->optim().schedule(), "cosine");
      EXPECT_DOUBLE_EQ(s->optim().min_lr_ratio(), 0.1);
      EXPECT_EQ(s->optim().warmup_steps(), 10);
      EXPECT_DOUBLE_EQ(s->optim().beta1(), 0.9);
      EXPECT_DOUBLE_EQ(s->optim().beta2(), 0.95);
      EXPECT_DOUBLE_EQ(s->optim().weight_decay(), 0.1);
      EXPECT_DOUBLE_EQ(s->optim().grad_clip(), 1.0);
      // Micro batch x accumulation x DP = 32 exactly.
      EXPECT_EQ(32 % (2 * s->parallel().dp()), 0);
      if (kind == "peft") {
        EXPECT_EQ(s->peft().rank(), 32);
        EXPECT_DOUBLE_EQ(s->peft().alpha(), 32);
        EXPECT_THAT(std::vector<std::string>(s->peft().target_modules().begin(),
                                             s->peft().target_modules().end()),
                    ::testing::ElementsAre("qkv", "o", "gate_up", "down"));
      }
    }
  }
}

// Gemma 4 26B-A4B: SFT on 8 GPUs at TP 4 with experts over 8 EP ranks
// (folded over the TP ranks), recomputation and a frozen vision tower; LoRA
// on 4 GPUs at TP 2 / EP 4; the reference hyperparameters as for Gemma 3.
TEST(RecipesTest, Gemma4RecipesUseExpertParallelism) {
  for (const std::string kind : {"sft", "peft"}) {
    const std::string name = "gemma4-26b-a4b-" + kind + ".yaml";
    SCOPED_TRACE(name);
    auto s = LoadJobSpecFile(kDir + "/" + name);
    ASSERT_TRUE(s.ok()) << s.status();
    const int gpus = kind == "sft" ? 8 : 4;
    EXPECT_EQ(WorldSize(*s), gpus);
    EXPECT_EQ(s->parallel().ep(), gpus);
    EXPECT_EQ(128 % s->parallel().ep(), 0);  // the preset's num_experts
    // The preset's 16 query heads, 2 KV heads on full layers, 8 on sliding
    // ones and intermediate 2112 split over tp (KV heads replicated).
    const int tp = std::max(1, s->parallel().tp());
    EXPECT_EQ(tp, kind == "sft" ? 4 : 2);  // the reference's TP4/EP8, TP2/EP4
    EXPECT_EQ(16 % tp, 0);
    EXPECT_TRUE(8 % tp == 0 && (2 % tp == 0 || tp % 2 == 0));
    EXPECT_EQ(2112 % tp, 0);
    EXPECT_TRUE(s->model().recompute());
    EXPECT_EQ(s->model().dtype(), "bfloat16");
    EXPECT_EQ(s->data().seq_len(), 4096);
    EXPECT_EQ(s->optim().global_batch_size(), 32);
    EXPECT_EQ(32 % (s->data().batch_size() * s->parallel().dp()), 0);
    EXPECT_DOUBLE_EQ(s->optim().lr(), kind == "sft" ? 5e-5 : 2e-4);
    if (kind == "sft") {
      EXPECT_THAT(std::vector<std::string>(s->model().freeze().begin(),
                                           s->model().freeze().end()),
                  ::testing::ElementsAre("vision"));
    } else {
      EXPECT_EQ(s->peft().rank(), 32);
    }
  }
}

TEST(RecipesTest, TinyRecipesRunOnCpu) {
  for (const std::string n : {"tiny-sft.yaml", "tiny-peft.yaml",
                              "tiny-eval.yaml", "tiny-generate.yaml"}) {
    SCOPED_TRACE(n);
    auto s = LoadJobSpecFile(kDir + "/" + n);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(DeviceName(s->resources().device()), "cpu");
    EXPECT_EQ(WorldSize(*s), 1);
  }
}

TEST(RecipesTest, AWrongKeyOrTypeIsAnErrorNamingTheKey) {
  const std::string path = kDir + "/gemma3-4b-peft.yaml";
  auto bad_key = LoadJobSpecFile(path, {"optim.learning_rate=1e-4"});
  ASSERT_FALSE(bad_key.ok());
  EXPECT_THAT(std::string(bad_key.status().message()),
              HasSubstr("optim.learning_rate"));
  auto bad_type = LoadJobSpecFile(path, {"peft.rank=big"});
  ASSERT_FALSE(bad_type.ok());
  EXPECT_THAT(std::string(bad_type.status().message()), HasSubstr("peft.rank"));
  auto bad_list = LoadJobSpecFile(path, {"peft.target_modules=qkv"});
  ASSERT_FALSE(bad_list.ok());
  EXPECT_THAT(std::string(bad_list.status().message()),
              HasSubstr("peft.target_modules"));
  // And the spec checks name the field for values the parser accepts.
  auto bad_value =
      LoadJobSpecFile(kDir + "/tiny-generate.yaml", {"generate.top_p=1.5"});
  ASSERT_TRUE(bad_value.ok()) << bad_value.status();
  EXPECT_THAT(std::string(ValidateJobSpec(*bad_value).message()),
              HasSubstr("spec.generate.top_p"));
}

}  // namespace
}  // namespace gemma
