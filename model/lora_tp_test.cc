// LoRA and DoRA adapters on tensor-parallel models (model/lora.h), on 2 real
// Gloo ranks (threads, real TCPStore), for a tiny random Gemma 3 and a tiny
// random Gemma 4 (MoE; its full layer has 1 KV head, K = V, so TP 2
// replicates it), each with method lora and dora.
//
// The TP = 1 model gets adapters on every text target (seeded), random B
// (so every gradient is non-zero) and, for DoRA, a magnitude m moved off
// ||W||_row (so m / ||W + s B A|| is not 1), and is saved as an adapter
// checkpoint. Each TP = 2 rank, holding its shard of the same base weights:
//   - attaches adapters with the same seed: A is exactly its shard of the
//     TP = 1 A, B zero; DoRA's m its shard of the TP = 1 m (column-parallel:
//     exactly; row-parallel, norms summed over the group: within 1e-6);
//   - loads the TP = 1 checkpoint (each rank its shard), runs the same batch
//     in train mode: the logits and the loss equal TP = 1's
//     within 1e-4 (relative to the max), and every adapter gradient is, as
//     Gemma3TpGrad / Gemma4TpGrad classify it, its shard of the TP = 1
//     gradient (kSharded) or summed over the group the whole of it
//     (kPartial), within 1e-4;
//   - saves an adapter checkpoint and exports an HF PEFT adapter whose
//     files are byte for byte the TP = 1 ones (gathered, replicas once);
//   - merges: its weight shards are its shards of the TP = 1 merged weights
//     (within 1e-6).
// The ranks are threads sharing torch's default generator, so the threaded
// test draws from it under a lock only (a collective inside the attach,
// DoRA's row-parallel norms, waits without it: AttachLockComm) and runs
// without dropout; dropout under TP is checked on one adapter per rank with a
// stand-in group (LoRA: no collective runs in an adapter; DoRA's row-parallel
// norms: the stand-in's all-reduce answers what the group would sum): the
// shards' outputs assemble the TP = 1 one.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
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

// A stand-in rank whose AllReduceSum answers the next of `sums`: what the
// whole group would have summed.
class ScriptedSumComm : public StandInComm {
 public:
  ScriptedSumComm(int rank, int size, std::vector<torch::Tensor> sums)
      : StandInComm(rank, size), sums_(std::move(sums)) {}
  void AllReduceSum(at::Tensor& t) override {
    ASSERT_LT(next_, sums_.size());
    ASSERT_EQ(t.sizes(), sums_[next_].sizes());
    t.copy_(sums_[next_++]);
  }
  size_t calls() const { return next_; }

 private:
  std::vector<torch::Tensor> sums_;
  size_t next_ = 0;
};

// DoRA's dropout, initial m and merge on column- and row-parallel shards:
// each rank's output is its part of the TP = 1 adapter's (row-parallel: the
// partial outputs sum to it), its merged weight its shard of the TP = 1 one.
TEST(LoraTpDropoutTest, DoraShardsAssembleTheWholeAdapter) {
  torch::set_num_threads(1);
  const int64_t in = 8, out = 6, r = 2;
  const double p = 0.5;
  const torch::Tensor w = torch::randn({out, in});
  torch::manual_seed(11);
  DoraAdapter whole(w, r, 4, p);
  torch::NoGradGuard no_grad;
  const torch::Tensor m0 = whole.m.clone();  // ||W||_row
  whole.b.normal_();
  whole.m.mul_(1 + 0.2 * torch::randn_like(whole.m));
  const torch::Tensor x = torch::randn({3, 5, in});
  whole.train();
  torch::manual_seed(12);
  const torch::Tensor y = whole.Forward(x, w, {});
  torch::manual_seed(12);
  ASSERT_TRUE(torch::equal(y, whole.Forward(x, w, {})));
  const torch::Tensor merged = whole.MergedWeight(w);
  // What a row-parallel group sums: the squares of ||W||_row (attaching),
  // of ||W + s B A||_row (Forward, MergedWeight).
  const torch::Tensor sq_w = w.square().sum(1);
  const torch::Tensor sq_wba = (w + whole.DeltaWeight()).square().sum(1);
  torch::Tensor row_sum = torch::zeros_like(y);
  for (int k = 0; k < kTp; ++k) {
    // Column-parallel: rows of B, m and the output; local norms.
    ProjectionSplit col =
        ColumnBlocksSplit(std::make_shared<StandInComm>(k, kTp), out, in);
    torch::manual_seed(11);
    DoraAdapter c(ShardOf(col, w, 0), r, 4, p, col);
    EXPECT_TRUE(torch::equal(c.a, whole.a));
    EXPECT_LT(RelErr(c.m, ShardOf(col, m0, 0)), 1e-6) << k;
    c.b.copy_(ShardOf(col, whole.b, 0));
    c.m.copy_(ShardOf(col, whole.m, 0));
    c.train();
    torch::manual_seed(12);
    torch::Tensor yc = c.Forward(x, ShardOf(col, w, 0), {});
    EXPECT_LT(RelErr(yc, y.narrow(-1, k * out / kTp, out / kTp)), 1e-6) << k;
    EXPECT_LT(
        RelErr(c.MergedWeight(ShardOf(col, w, 0)), ShardOf(col, merged, 0)),
        1e-6)
        << k;
    // Row-parallel: columns of A, m whole, norms summed over the group.
    auto comm = std::make_shared<ScriptedSumComm>(
        k, kTp, std::vector<torch::Tensor>{sq_w, sq_wba, sq_wba});
    ProjectionSplit row = RowSplit(comm, out, in);
    torch::manual_seed(11);
    DoraAdapter a(ShardOf(row, w, 1), r, 4, p, row);
    EXPECT_TRUE(torch::equal(a.a, ShardOf(row, whole.a, 1)));
    EXPECT_LT(RelErr(a.m, m0), 1e-6) << k;
    a.b.copy_(whole.b);
    a.m.copy_(whole.m);
    a.train();
    torch::manual_seed(12);
    row_sum += a.Forward(ShardOf(row, x, 2), ShardOf(row, w, 1), {});
    EXPECT_LT(
        RelErr(a.MergedWeight(ShardOf(row, w, 1)), ShardOf(row, merged, 1)),
        1e-6)
        << k;
    EXPECT_EQ(comm->calls(), 3u) << k;
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

// The threaded ranks share torch's default generator, so each attaches its
// adapters (which draw A) holding `mu`; DoRA's row-parallel norms are a
// collective inside the attach. This TP group forwards to `inner`; while
// `attaching` (its thread holds `mu`) a collective gives `mu` up while it
// waits, keeping this rank's generator state for when it has `mu` back.
class AttachLockComm : public Comm {
 public:
  AttachLockComm(std::shared_ptr<Comm> inner, std::mutex* mu)
      : inner_(std::move(inner)), mu_(mu) {}
  bool attaching = false;

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  void AllReduceSum(at::Tensor& t) override {
    Unlocked([&] { inner_->AllReduceSum(t); });
  }
  void AllReduceMax(at::Tensor& t) override {
    Unlocked([&] { inner_->AllReduceMax(t); });
  }
  at::Tensor AllGather(const at::Tensor& t, int64_t dim) override {
    at::Tensor out;
    Unlocked([&] { out = inner_->AllGather(t, dim); });
    return out;
  }
  void Broadcast(at::Tensor& t, int root) override {
    Unlocked([&] { inner_->Broadcast(t, root); });
  }
  at::Tensor ReduceScatterSum(const at::Tensor& t) override {
    at::Tensor out;
    Unlocked([&] { out = inner_->ReduceScatterSum(t); });
    return out;
  }
  std::vector<at::Tensor> AllToAll(
      const std::vector<at::Tensor>& inputs) override {
    std::vector<at::Tensor> out;
    Unlocked([&] { out = inner_->AllToAll(inputs); });
    return out;
  }
  void Barrier() override {
    Unlocked([&] { inner_->Barrier(); });
  }
  void Abort() override { inner_->Abort(); }
  std::string backend() const override { return inner_->backend(); }
  c10::Device device() const override { return inner_->device(); }

 private:
  template <typename Fn>
  void Unlocked(Fn fn) {
    if (!attaching) return fn();
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    at::Tensor state;
    {
      std::lock_guard<std::mutex> g(gen.mutex());
      state = gen.get_state();
    }
    mu_->unlock();
    try {
      fn();
    } catch (...) {
      mu_->lock();  // the caller's lock_guard releases it
      throw;
    }
    mu_->lock();
    std::lock_guard<std::mutex> g(gen.mutex());
    gen.set_state(state);
  }

  std::shared_ptr<Comm> inner_;
  std::mutex* mu_;
};

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

// (family, method): ("gemma3" | "gemma4", "lora" | "dora").
class LoraTpTest
    : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
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
  const auto& [family, method] = GetParam();
  const Family f = family == "gemma3" ? Gemma3Family() : Gemma4Family();
  const AdapterLayout layout = f.layout();
  const gemma::v1::PeftSpec spec = Spec(method);

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
      if (absl::EndsWith(name, ".lora.m"))
        t.mul_(1 + 0.2 * torch::randn_like(t));
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
  // The largest relative errors over both ranks, by what was compared.
  std::map<std::string, double> worst;
  auto note = [&](const std::string& what, double e) {
    std::lock_guard<std::mutex> lock(mu);
    worst[what] = std::max(worst[what], e);
  };
  absl::Status s = RunGlooRanks(
      kTp,
      [&](int rank, ParallelGroups& groups) -> absl::Status {
        std::vector<std::string> bad;
        auto fail = [&](const std::string& what) { bad.push_back(what); };
        // Every use of torch's generator (model init, adapter init) under
        // the lock: the ranks are threads sharing it.
        auto tp = std::make_shared<AttachLockComm>(groups.tp, &mu);
        std::shared_ptr<torch::nn::Module> m;
        {
          std::lock_guard<std::mutex> lock(mu);
          m = f.build(tp);
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
          tp->attaching = true;
          torch::manual_seed(2);
          st = AttachAdapters(*m, layout, spec);
          tp->attaching = false;
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
          if (absl::EndsWith(name, ".m") && !column) {
            // ||W||_row from the group's sums of squares.
            const double e = RelErr(t, want);
            note("initial row-parallel m", e);
            if (e > 1e-6) fail(absl::StrCat(name, ": initial rel err ", e));
          } else if (!torch::equal(want, t)) {
            fail(name + ": initial value");
          }
        }
        // The TP = 1 checkpoint, each rank its shard.
        st = LoadAdapterValues(ckpt1, *m, layout);
        if (!st.ok()) return st;
        m->train();
        auto [logits, loss] = f.run(*m, ids, labels);
        ((logits * probe).sum() + loss).backward();
        double e = RelErr(logits.detach(), logits1.detach());
        note("logits", e);
        if (e > 1e-4) fail(absl::StrCat("logits rel err ", e));
        e = RelErr(loss.detach(), loss1.detach());
        note("loss", e);
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
          note(absl::StrCat("grad ", name.substr(name.size() - 1)), e);
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
          note("merged", e);
          if (e > 1e-6) fail(absl::StrCat(p.key(), " merged rel err ", e));
        }
        std::lock_guard<std::mutex> lock(mu);
        for (auto& b : bad)
          failures.push_back(absl::StrCat("rank ", rank, ": ", b));
        return absl::OkStatus();
      },
      ParallelLayout{kTp, 1, 1});
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(failures.empty()) << absl::StrJoin(failures, "\n");
  for (const auto& [what, e] : worst) {
    std::cout << family << " " << method << " TP 2 vs TP 1, worst relative "
              << "error: " << what << " " << e << "\n";
  }

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
    EXPECT_TRUE(ReadText(theirs) == ReadText(ours))
        << theirs << ": not byte for byte " << ours;
  }
  EXPECT_EQ(ReadText(dir_ + "/tp2-peft/adapter_config.json"),
            ReadText(export1 + "/adapter_config.json"));
  EXPECT_EQ(ReadText(dir_ + "/tp2/adapter.json"),
            ReadText(ckpt1 + "/adapter.json"));
}

INSTANTIATE_TEST_SUITE_P(
    FamiliesAndMethods, LoraTpTest,
    ::testing::Combine(::testing::Values("gemma3", "gemma4"),
                       ::testing::Values("lora", "dora")),
    [](const ::testing::TestParamInfo<LoraTpTest::ParamType>& i) {
      return std::get<0>(i.param) + "_" + std::get<1>(i.param);
    });

}  // namespace
}  // namespace gemma
