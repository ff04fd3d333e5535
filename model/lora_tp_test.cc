// LoRA adapters on tensor-parallel models (model/lora.h), on 2 real Gloo
// ranks (threads, real TCPStore), for a tiny random Gemma 3 and a tiny random
// Gemma 4 (MoE; its full layer has 1 KV head, K = V, so TP 2 replicates it).
//
// The TP = 1 model gets adapters on every text target (seeded), random B
// (so every gradient is non-zero), and is saved as an adapter checkpoint.
// Each TP = 2 rank, holding its shard of the same base weights:
//   - attaches adapters with the same seed: A is exactly its shard of the
//     TP = 1 A, B zero;
//   - loads the TP = 1 checkpoint (each rank its shard), runs the same batch
//     in train mode: the logits and the loss equal TP = 1's
//     within 1e-4 (relative to the max), and every adapter gradient is, as
//     Gemma3TpGrad / Gemma4TpGrad classify it, its shard of the TP = 1
//     gradient (kSharded) or summed over the group the whole of it
//     (kPartial), within 1e-4;
//   - saves an adapter checkpoint and exports an HF PEFT adapter whose
//     tensors equal the TP = 1 ones exactly (gathered, replicas once);
//   - merges: its weight shards are its shards of the TP = 1 merged weights;
//   - refuses DoRA, naming spec.peft.method.
// The ranks are threads sharing torch's default generator, so the threaded
// test draws from it under a lock only and runs without dropout; dropout under
// TP is checked on one adapter per rank with a stand-in group (no collective
// runs in an adapter's forward): the shards' outputs assemble the TP = 1 one.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/checkpoint.h"
#include "model/gemma4.h"
#include "model/gemma4_model.h"
#include "model/lora.h"
#include "model/lora_internal.h"
#include "model/safetensors.h"
#include "model/safetensors_torch.h"
#include "model/vl_model.h"
#include "model/weights.h"
#include "tests/parity/gemma4_tp_slice.h"
#include "worker/comm.h"

namespace gemma {
namespace {

constexpr int kTp = 2;

ModelConfig Gemma3Config() {
  ModelConfig c;
  c.model_type = "gemma3_text";
  TextConfig& t = c.text;
  t.vocab_size = 67;  // pads to a multiple of tp
  t.hidden_size = 32;
  t.intermediate_size = 48;
  t.num_layers = 2;
  t.num_heads = 4;
  t.num_kv_heads = 2;
  t.head_dim = 8;
  t.query_pre_attn_scalar = 8;
  t.sliding_window = 4;
  t.layer_types = {LayerType::kSliding, LayerType::kFull};
  t.final_logit_softcapping = 30.0;
  return c;
}

Gemma4ModelConfig Gemma4Config() {
  Gemma4ModelConfig c;
  Gemma4TextConfig& t = c.text;
  t.vocab_size = 67;
  t.hidden_size = 32;
  t.intermediate_size = 48;
  t.num_layers = 2;
  t.num_heads = 4;
  t.num_kv_heads = 2;
  t.head_dim = 8;
  t.global_head_dim = 16;
  t.num_global_kv_heads = 1;  // TP 2 replicates it
  t.attention_k_eq_v = true;
  t.sliding_window = 4;
  t.layer_types = {LayerType::kSliding, LayerType::kFull};
  t.final_logit_softcapping = 30.0;
  t.enable_moe_block = true;
  t.num_experts = 4;
  t.top_k_experts = 2;
  t.moe_intermediate_size = 16;
  return c;
}

double RelErr(const torch::Tensor& got, const torch::Tensor& ref) {
  const double scale = ref.abs().max().item<double>();
  return (got - ref).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

gemma::v1::PeftSpec Spec(const std::string& method = "lora") {
  gemma::v1::PeftSpec s;
  s.set_method(method);
  s.set_rank(4);
  s.set_alpha(8);
  return s;  // the four text targets
}

// Rank `rank` of a group of `size` whose collectives are never called.
class StandInComm : public SingleRankComm {
 public:
  StandInComm(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }

 private:
  int rank_, size_;
};

// Dropout (and the initial A) of column- and row-parallel shards: with the
// same seeds each rank's output is its part of the TP = 1 adapter's.
TEST(LoraTpDropoutTest, ShardsAssembleTheWholeAdapter) {
  torch::set_num_threads(1);
  const int64_t in = 8, out = 6, r = 2;
  const double p = 0.5;
  torch::manual_seed(11);
  LoraAdapter whole(in, out, r, 4, p);
  torch::NoGradGuard no_grad;
  whole.b.normal_();
  const torch::Tensor x = torch::randn({3, 5, in});
  const torch::Tensor w = torch::randn({out, in});
  whole.train();
  torch::manual_seed(12);
  const torch::Tensor y = whole.Forward(x, w, {});
  torch::manual_seed(12);
  const torch::Tensor y_again = whole.Forward(x, w, {});
  ASSERT_TRUE(torch::equal(y, y_again));
  torch::Tensor row_sum = torch::zeros_like(y);
  for (int k = 0; k < kTp; ++k) {
    auto comm = std::make_shared<StandInComm>(k, kTp);
    // Column-parallel: rows of B and of the output.
    ProjectionSplit col = ColumnBlocksSplit(comm, out, in);
    torch::manual_seed(11);
    LoraAdapter c(in, out / kTp, r, 4, p, col);
    EXPECT_TRUE(torch::equal(c.a, whole.a));
    c.b.copy_(ShardOf(col, whole.b, 0));
    c.train();
    torch::manual_seed(12);
    torch::Tensor yc = c.Forward(x, ShardOf(col, w, 0), {});
    EXPECT_LT(RelErr(yc, y.narrow(-1, k * out / kTp, out / kTp)), 1e-6) << k;
    // Row-parallel: columns of A; the partial outputs sum to the whole.
    ProjectionSplit row = RowSplit(comm, out, in);
    torch::manual_seed(11);
    LoraAdapter a(in / kTp, out, r, 4, p, row);
    EXPECT_TRUE(torch::equal(a.a, ShardOf(row, whole.a, 1)));
    a.b.copy_(whole.b);
    a.train();
    torch::manual_seed(12);
    row_sum += a.Forward(ShardOf(row, x, 2), ShardOf(row, w, 1), {});
  }
  EXPECT_LT(RelErr(row_sum, y), 1e-6);
}

std::map<std::string, torch::Tensor> ReadAll(const std::string& path) {
  std::map<std::string, torch::Tensor> out;
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return out;
  for (const auto& info : (*file)->tensors()) {
    auto t = TensorView(*file, info.name);
    EXPECT_TRUE(t.ok()) << t.status();
    if (t.ok()) out[info.name] = t->clone();
  }
  return out;
}

std::string ReadText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// What one family's test needs from its model type.
struct Family {
  std::string name;
  // The model (text-only, names "text.*") at TP = 1 (comm null) or as this
  // rank's shard, with the adapter layout.
  std::function<std::shared_ptr<torch::nn::Module>(std::shared_ptr<Comm> tp)>
      build;
  std::function<AdapterLayout()> layout;
  // Rank `rank`'s shard of the whole base tensor `name`.
  std::function<torch::Tensor(const std::string& name, const torch::Tensor& t,
                              int rank)>
      slice;
  // Logits [B, L, V] and the loss sum of a batch (the model's own TP-aware
  // head and loss).
  std::function<std::pair<torch::Tensor, torch::Tensor>(
      torch::nn::Module& m, const torch::Tensor& ids,
      const torch::Tensor& labels)>
      run;
  std::function<TpGrad(const std::string& name, const TpOptions& tp)> grad;
};

Family Gemma3Family() {
  Family f;
  f.name = "gemma3";
  const ModelConfig c = Gemma3Config();
  f.build = [c](std::shared_ptr<Comm> comm) {
    TpOptions tp;
    tp.comm = comm;
    return std::static_pointer_cast<torch::nn::Module>(
        std::make_shared<Gemma3ModelImpl>(c, tp));
  };
  f.layout = [c] { return Gemma3AdapterLayout(c); };
  f.slice = [c](const std::string& name, const torch::Tensor& t, int rank) {
    auto s = SliceShard(name, t, ShardDims{c.text.num_kv_heads}, kTp, rank);
    EXPECT_TRUE(s.ok()) << s.status();
    return *s;
  };
  f.run = [c](torch::nn::Module& m, const torch::Tensor& ids,
              const torch::Tensor& labels) {
    auto& model = dynamic_cast<Gemma3ModelImpl&>(m);
    ModelInputs in;
    in.input_ids = ids;
    torch::Tensor hidden = model.text->Decode(model.Embeddings(in), {});
    LmLossOptions lo;
    lo.softcap = *c.text.final_logit_softcapping;
    return std::make_pair(model.text->Logits(hidden),
                          model.text->Loss(hidden, labels, lo).loss_sum);
  };
  f.grad = Gemma3TpGrad;
  return f;
}

Family Gemma4Family() {
  Family f;
  f.name = "gemma4";
  const Gemma4ModelConfig c = Gemma4Config();
  f.build = [c](std::shared_ptr<Comm> comm) {
    TpOptions tp;
    tp.comm = comm;
    return std::static_pointer_cast<torch::nn::Module>(
        std::make_shared<Gemma4ModelImpl>(c, nullptr, tp));
  };
  f.layout = [c] { return Gemma4AdapterLayout(c); };
  f.slice = [c](const std::string& name, const torch::Tensor& t, int rank) {
    return Gemma4TpSlice(name, t, c.text, kTp, rank);
  };
  f.run = [](torch::nn::Module& m, const torch::Tensor& ids,
             const torch::Tensor& labels) {
    auto& model = dynamic_cast<Gemma4ModelImpl&>(m);
    Gemma4Inputs in;
    in.input_ids = ids;
    torch::Tensor hidden = model.text->Decode(model.Embeddings(in), {});
    return std::make_pair(model.text->Logits(hidden),
                          model.text->Loss(hidden, labels).loss_sum);
  };
  f.grad = Gemma4TpGrad;
  return f;
}

class LoraTpTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    torch::set_num_threads(1);
    std::string tmpl = "/tmp/gemma_lora_tp_test_XXXXXX";
    dir_ = mkdtemp(tmpl.data());
  }
  void TearDown() override {
    if (!HasFailure()) (void)RemoveTree(dir_);
  }
  std::string dir_;
};

TEST_P(LoraTpTest, Tp2EqualsTp1) {
  const Family f = GetParam() == "gemma3" ? Gemma3Family() : Gemma4Family();
  const AdapterLayout layout = f.layout();
  const gemma::v1::PeftSpec spec = Spec();

  // ---- TP = 1 reference.
  torch::manual_seed(1);
  std::shared_ptr<torch::nn::Module> m1 = f.build(nullptr);
  std::map<std::string, torch::Tensor> base;
  for (const auto& p : m1->named_parameters())
    base[p.key()] = p.value().detach().clone();
  torch::manual_seed(2);
  ASSERT_TRUE(AttachAdapters(*m1, layout, spec).ok());
  std::map<std::string, torch::Tensor> init;  // the fresh adapters
  for (auto& [name, t] : AdapterParameters(*m1))
    init[name] = t.detach().clone();
  {
    torch::NoGradGuard no_grad;
    torch::manual_seed(3);
    for (auto& [name, t] : AdapterParameters(*m1)) {
      if (absl::EndsWith(name, ".lora.b")) t.normal_(0, 0.2);
    }
  }
  const std::string ckpt1 = dir_ + "/tp1";
  ASSERT_TRUE(SaveAdapterCheckpoint(ckpt1, *m1, layout, spec, "base").ok());
  const std::string export1 = dir_ + "/tp1-peft";
  ASSERT_TRUE(ExportPeftAdapter(*m1, layout, spec, export1, "base").ok());

  torch::manual_seed(4);
  const int64_t vocab = base.at("text.embed.weight").size(0);
  const torch::Tensor ids = torch::randint(3, vocab, {2, 8}, torch::kLong);
  torch::Tensor labels = torch::randint(0, vocab, {2, 8}, torch::kLong);
  labels.index_put_({0, 0}, -100);
  const torch::Tensor probe = torch::randn({2, 8, vocab});
  m1->train();
  auto [logits1, loss1] = f.run(*m1, ids, labels);
  ((logits1 * probe).sum() + loss1).backward();
  std::map<std::string, torch::Tensor> grads1;
  for (auto& [name, t] : AdapterParameters(*m1)) {
    ASSERT_TRUE(t.grad().defined()) << name;
    ASSERT_GT(t.grad().abs().max().item<double>(), 0) << name;
    grads1[name] = t.grad().clone();
  }
  ASSERT_TRUE(MergeAdapters(*m1, layout).ok());
  std::map<std::string, torch::Tensor> merged1;
  for (const auto& p : m1->named_parameters())
    merged1[p.key()] = p.value().detach().clone();

  // ---- TP = 2.
  std::mutex mu;
  std::vector<std::string> failures;
  absl::Status s = RunGlooRanks(
      kTp,
      [&](int rank, ParallelGroups& groups) -> absl::Status {
        std::vector<std::string> bad;
        auto fail = [&](const std::string& what) { bad.push_back(what); };
        // Every use of torch's generator (model init, adapter init) under
        // the lock: the ranks are threads sharing it.
        std::shared_ptr<torch::nn::Module> m;
        {
          std::lock_guard<std::mutex> lock(mu);
          m = f.build(groups.tp);
        }
        {
          torch::NoGradGuard no_grad;
          for (auto& p : m->named_parameters())
            p.value().copy_(f.slice(p.key(), base.at(p.key()), rank));
        }
        std::map<std::string, ProjectionSplit> splits;  // by adapter prefix
        for (const auto& p : FindProjections(*m, layout)) {
          const ProjectionSplit& split = p.proj->tp_split;
          if (!split.split()) {
            fail(p.name + ": not split");
            continue;
          }
          splits[p.name + ".lora."] = split;
          // The split says where the shard's rows / columns are.
          torch::Tensor want =
              ShardOf(split, base.at(p.name + ".weight"), split.dim());
          if (!torch::equal(want, p.proj->weight))
            fail(p.name + ": tp_split does not describe the weight shard");
        }
        auto split_of = [&](const std::string& name) {
          return splits.at(name.substr(0, name.rfind(".lora.") + 6));
        };
        // Fresh adapters: the TP = 1 ones' shards.
        absl::Status st;
        {
          std::lock_guard<std::mutex> lock(mu);
          torch::manual_seed(2);
          st = AttachAdapters(*m, layout, spec);
        }
        if (!st.ok()) return st;
        TpOptions tpo;
        tpo.comm = groups.tp;
        for (auto& [name, t] : AdapterParameters(*m)) {
          const ProjectionSplit split = split_of(name);
          const bool a = absl::EndsWith(name, ".a");
          const bool column = split.kind == ProjectionSplit::Kind::kColumn;
          const TpGrad kind = f.grad(name, tpo);
          if (kind != (column == a ? TpGrad::kPartial : TpGrad::kSharded))
            fail(name + ": wrong TpGrad");
          torch::Tensor want = init.at(name);
          if (a && !column) want = ShardOf(split, want, 1);
          if (!a && column) want = ShardOf(split, want, 0);
          if (!torch::equal(want, t)) fail(name + ": initial value");
        }
        // The TP = 1 checkpoint, each rank its shard.
        st = LoadAdapterValues(ckpt1, *m, layout);
        if (!st.ok()) return st;
        m->train();
        auto [logits, loss] = f.run(*m, ids, labels);
        ((logits * probe).sum() + loss).backward();
        double e = RelErr(logits.detach(), logits1.detach());
        if (e > 1e-4) fail(absl::StrCat("logits rel err ", e));
        e = RelErr(loss.detach(), loss1.detach());
        if (e > 1e-4) fail(absl::StrCat("loss rel err ", e));
        int checked = 0;
        for (auto& [name, t] : AdapterParameters(*m)) {
          if (!t.grad().defined()) {
            fail(name + ": no gradient");
            continue;
          }
          const ProjectionSplit split = split_of(name);
          torch::Tensor got = t.grad().clone();
          torch::Tensor want = grads1.at(name);
          if (f.grad(name, tpo) == TpGrad::kPartial) {
            groups.tp->AllReduceSum(got);
          } else {
            want = ShardOf(split, want, absl::EndsWith(name, ".a") ? 1 : 0);
          }
          e = RelErr(got, want);
          if (e > 1e-4) fail(absl::StrCat(name, " grad rel err ", e));
          ++checked;
        }
        if (checked != static_cast<int>(grads1.size()))
          fail(absl::StrCat("checked ", checked, " adapter gradients"));
        // Checkpoint and export: whole tensors, written by TP rank 0.
        const std::string ckpt2 = dir_ + "/tp2";
        st = SaveAdapterCheckpoint(ckpt2, *m, layout, spec, "base");
        if (!st.ok()) return st;
        const std::string export2 = dir_ + "/tp2-peft";
        st = ExportPeftAdapter(*m, layout, spec, export2, "base");
        if (!st.ok()) return st;
        if (WritesAdapterFiles(*m, layout) != (rank == 0))
          fail("WritesAdapterFiles");
        // Merge: this rank's shards of the TP = 1 merged weights.
        st = MergeAdapters(*m, layout);
        if (!st.ok()) return st;
        for (const auto& p : m->named_parameters()) {
          torch::Tensor want = f.slice(p.key(), merged1.at(p.key()), rank);
          e = RelErr(p.value(), want);
          if (e > 1e-6) fail(absl::StrCat(p.key(), " merged rel err ", e));
        }
        // DoRA needs whole rows.
        st = AttachAdapters(*m, layout, Spec("dora"));
        if (st.code() != absl::StatusCode::kInvalidArgument ||
            !absl::StrContains(st.message(), "spec.peft.method: dora"))
          fail(absl::StrCat("dora: ", st.ToString()));
        std::lock_guard<std::mutex> lock(mu);
        for (auto& b : bad)
          failures.push_back(absl::StrCat("rank ", rank, ": ", b));
        return absl::OkStatus();
      },
      ParallelLayout{kTp, 1, 1});
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(failures.empty()) << absl::StrJoin(failures, "\n");

  // The files equal the TP = 1 ones tensor for tensor.
  for (const auto& [ours, theirs] :
       {std::make_pair(ckpt1 + "/adapter.safetensors",
                       dir_ + "/tp2/adapter.safetensors"),
        std::make_pair(export1 + "/adapter_model.safetensors",
                       dir_ + "/tp2-peft/adapter_model.safetensors")}) {
    const auto want = ReadAll(ours), got = ReadAll(theirs);
    ASSERT_EQ(got.size(), want.size()) << theirs;
    ASSERT_FALSE(want.empty());
    for (const auto& [name, t] : want) {
      ASSERT_TRUE(got.count(name)) << theirs << ": " << name;
      EXPECT_TRUE(torch::equal(got.at(name), t)) << theirs << ": " << name;
    }
  }
  EXPECT_EQ(ReadText(dir_ + "/tp2-peft/adapter_config.json"),
            ReadText(export1 + "/adapter_config.json"));
  EXPECT_EQ(ReadText(dir_ + "/tp2/adapter.json"),
            ReadText(ckpt1 + "/adapter.json"));
}

INSTANTIATE_TEST_SUITE_P(Families, LoraTpTest,
                         ::testing::Values("gemma3", "gemma4"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           return i.param;
                         });

}  // namespace
}  // namespace gemma
