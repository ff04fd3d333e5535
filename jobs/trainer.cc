#include "jobs/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "data/dataset.h"
#include "model/checkpoint.h"
#include "model/gemma3.h"
#include "model/layers.h"
#include "model/loss.h"
#include "model/recompute.h"
#include "model/weights.h"

namespace gemma {
namespace {

constexpr int64_t kBucketBytes = 25 << 20;

GradSyncOptions GradSyncFromEnv(bool shard) {
  GradSyncOptions o;
  o.bucket_bytes = kBucketBytes;
  o.shard = shard;
  const char* bytes = std::getenv("GEMMA_GRAD_BUCKET_BYTES");
  int64_t v = 0;
  if (bytes != nullptr && absl::SimpleAtoi(bytes, &v) && v > 0)
    o.bucket_bytes = v;
  const char* overlap = std::getenv("GEMMA_GRAD_OVERLAP");
  if (overlap != nullptr && std::string(overlap) == "0") o.overlap = false;
  return o;
}

absl::Status TorchError(const std::string& what, const c10::Error& e) {
  return absl::InternalError(
      absl::StrCat(what, ": ", e.what_without_backtrace()));
}

// Runs `fn`, turning LibTorch exceptions into a Status naming `what`.
template <typename T, typename Fn>
absl::StatusOr<T> Guarded(const std::string& what, Fn&& fn) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    return TorchError(what, e);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

std::string DefaultRoot(const std::string& job) {
  const char* tmp = std::getenv("TMPDIR");
  std::string id = job.rfind("jobs/", 0) == 0 ? job.substr(5) : job;
  if (id.empty()) id = "local";
  return absl::StrCat(tmp != nullptr && *tmp ? tmp : "/tmp", "/gemma-train/",
                      id);
}

at::Tensor CpuRngState() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void SetCpuRngState(const at::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

}  // namespace

Trainer::Trainer(TrainerOptions options)
    : options_(std::move(options)), spec_(options_.spec) {}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(
    TrainerOptions options) {
  std::unique_ptr<Trainer> t(new Trainer(std::move(options)));
  GEMMA_RETURN_IF_ERROR(t->Init());
  return t;
}

absl::Status Trainer::Init() {
  const auto& optim = spec_.optim();
  const int dp = options_.groups.dp->size();
  root_ = !options_.checkpoint_root.empty()    ? options_.checkpoint_root
          : !spec_.checkpoint().root().empty() ? spec_.checkpoint().root()
                                               : DefaultRoot(options_.job);

  if (optim.max_steps() <= 0)
    return absl::InvalidArgumentError("spec.optim.max_steps: must be > 0");
  if (optim.lr() <= 0)
    return absl::InvalidArgumentError("spec.optim.lr: must be > 0");
  GEMMA_ASSIGN_OR_RETURN(schedule_.kind,
                         LrSchedule::ParseKind(optim.schedule()));
  schedule_.lr = optim.lr();
  schedule_.warmup_steps = optim.warmup_steps();
  schedule_.total_steps = optim.max_steps();
  schedule_.min_lr_ratio = optim.min_lr_ratio();

  const int micro =
      spec_.data().batch_size() > 0 ? spec_.data().batch_size() : 1;
  grad_accum_ = optim.grad_accum() > 0 ? optim.grad_accum() : 1;
  if (optim.global_batch_size() > 0) {
    if (optim.global_batch_size() % (micro * dp) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec.optim.global_batch_size: ", optim.global_batch_size(),
          " is not a multiple of data.batch_size x dp = ", micro * dp));
    }
    grad_accum_ = optim.global_batch_size() / (micro * dp);
  }

  // Where to start: the newest step folder of this job, else model.path
  // when it is a step folder, else model.path as the initial weights.
  const std::string& path = spec_.model().path();
  std::optional<std::string> resume = LatestCheckpoint(root_);
  if (!resume && IsTrainCheckpoint(path)) resume = path;
  std::string weights_dir = path;
  state_.base_model = path;
  if (resume) {
    GEMMA_ASSIGN_OR_RETURN(
        std::string text,
        ReadWholeFile(absl::StrCat(*resume, "/", kTrainStateFile)));
    GEMMA_ASSIGN_OR_RETURN(
        TrainState saved,
        TrainState::FromJson(text,
                             absl::StrCat(*resume, "/", kTrainStateFile)));
    state_.base_model = saved.base_model;
    weights_dir = options_.save_model
                      ? saved.base_model
                      : absl::StrCat(*resume, "/", kModelSubdir);
  }

  try {
    device_ = c10::Device(options_.device.empty() ? "cpu" : options_.device);
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(
        absl::StrCat("device: '", options_.device, "' is not cpu or cuda:N"));
  }
  if (device_.is_cuda() && !torch::cuda::is_available()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device ", options_.device, ": no CUDA device in this build/host"));
  }
  GEMMA_ASSIGN_OR_RETURN(model_,
                         OpenTrainModel(weights_dir, options_.groups, spec_));
  weights_dir_ = weights_dir;

  const std::string& dtype = spec_.model().dtype();
  if (!dtype.empty() && dtype != "float32" && dtype != "bfloat16") {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.model.dtype: must be float32 or bfloat16, got '", dtype, "'"));
  }
  if (dtype.empty() || dtype == "float32") {
    dtype_ = torch::kFloat32;
  } else if (dtype == "bfloat16") {
    dtype_ = torch::kBFloat16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.model.dtype: must be float32 or bfloat16, got '", dtype, "'"));
  }
  torch::manual_seed(static_cast<uint64_t>(optim.seed()));
  auto st = Guarded<bool>("trainer setup", [&] {
    model_->module().to(device_, dtype_);
    model_->module().train();
    for (const std::string& part : spec_.model().freeze()) {
      std::string prefix;
      if (part == "vision")
        prefix = "vision.";
      else if (part == "projector")
        prefix = "projector.";
      else if (part == "language")
        prefix = "text.";
      else
        throw std::invalid_argument(
            absl::StrCat("spec.model.freeze: unknown part '", part,
                         "' (vision, projector, language)"));
      for (auto& p : model_->module().named_parameters()) {
        if (p.key().rfind(prefix, 0) == 0) p.value().set_requires_grad(false);
      }
    }
    return true;
  });
  if (!st.ok()) return absl::InvalidArgumentError(st.status().message());
  if (options_.model_hook) GEMMA_RETURN_IF_ERROR(options_.model_hook(*model_));
  for (auto& p : model_->module().named_parameters()) {
    if (!p.value().requires_grad()) continue;
    trainable_.emplace_back(p.key(), p.value());
  }
  if (trainable_.empty()) {
    return absl::InvalidArgumentError(
        "spec.model.freeze: nothing left to train");
  }
  const auto& parallel = spec_.parallel();
  zero_stage_ =
      parallel.has_zero_stage() ? parallel.zero_stage() : (dp > 1 ? 1 : 0);
  if (zero_stage_ != 0 && zero_stage_ != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.parallel.zero_stage: must be 0 or 1, got ", zero_stage_));
  }
  DistOptimizerOptions oo;
  oo.zero_stage = zero_stage_;
  oo.adamw.beta1 = optim.beta1() > 0 ? optim.beta1() : 0.9;
  oo.adamw.beta2 = optim.beta2() > 0 ? optim.beta2() : 0.95;
  oo.adamw.eps = optim.eps() > 0 ? optim.eps() : 1e-8;
  oo.adamw.weight_decay = optim.weight_decay();
  std::vector<TrainParam> params, experts;
  const auto modules = model_->module().named_modules();
  for (const auto& [name, param] : trainable_) {
    const GradKind kind = model_->Grad(name);
    (kind == GradKind::kExpert ? experts : params)
        .push_back({name, param,
                    /*tp_sharded=*/kind == GradKind::kTpSharded,
                    /*tp_partial=*/kind == GradKind::kTpPartial,
                    /*norm_skip=*/ReplicaNormSkip(modules, name, param)});
  }
  auto built = Guarded<bool>("gradient buffers and optimizer", [&] {
    if (!params.empty()) {
      grad_sync_ =
          std::make_unique<GradSync>(std::move(params), options_.groups,
                                     GradSyncFromEnv(zero_stage_ == 1));
      optimizer_ = std::make_unique<DistOptimizer>(*grad_sync_, oo);
    }
    if (!experts.empty()) {
      // The same machinery over the ranks that hold the same experts.
      // TP plays no part: under TP the experts are split over EP (folded
      // over the TP ranks) and replicated over edp only.
      ParallelGroups eg = options_.groups;
      eg.dp = options_.groups.edp;
      eg.tp = std::make_shared<SingleRankComm>();
      DistOptimizerOptions eo = oo;
      if (eg.dp->size() == 1) eo.zero_stage = 0;
      expert_sync_ = std::make_unique<GradSync>(
          std::move(experts), eg, GradSyncFromEnv(eo.zero_stage == 1));
      expert_optimizer_ = std::make_unique<DistOptimizer>(*expert_sync_, eo);
    }
    return true;
  });
  if (!built.ok()) return built.status();
  if (optimizer_ == nullptr) {
    return absl::InvalidArgumentError(
        "spec.model.freeze: only expert weights are left to train; keep at "
        "least one dense part (norms, router, attention) trainable");
  }

  GEMMA_RETURN_IF_ERROR(LoadData());
  state_.max_steps = schedule_.total_steps;
  state_.dp = dp;
  state_.tp = tp_size();
  state_.ep = options_.groups.ep->size();
  state_.job = options_.job;
  state_.loader.assign(dp, train_loader_->position());
  if (resume) GEMMA_RETURN_IF_ERROR(Restore(*resume));
  return absl::OkStatus();
}

absl::Status Trainer::LoadData() {
  const auto& d = spec_.data();
  std::vector<std::string> candidates;
  if (!spec_.model().tokenizer().empty()) {
    candidates.push_back(spec_.model().tokenizer());
  } else {
    candidates.push_back(
        absl::StrCat(spec_.model().path(), "/tokenizer.model"));
    candidates.push_back(absl::StrCat(spec_.model().path(), "/", kModelSubdir,
                                      "/tokenizer.model"));
    candidates.push_back(absl::StrCat(state_.base_model, "/tokenizer.model"));
  }
  std::string tok_path = candidates[0];
  for (const auto& c : candidates) {
    if (PathExists(c)) {
      tok_path = c;
      break;
    }
  }
  auto tok = Tokenizer::Load(tok_path);
  if (!tok.ok()) {
    return WithContext("spec.model.tokenizer: ", tok.status());
  }
  tokenizer_ = std::move(*tok);
  GEMMA_RETURN_IF_ERROR(model_->CheckTokenizer(*tokenizer_));

  ReadOptions ro;
  ro.skip_bad = d.skip_bad();
  auto train = ReadDataset(d.train(), ro);
  if (!train.ok()) {
    return WithContext("spec.data.train: ", train.status());
  }
  if (!d.eval().empty()) {
    auto eval = ReadDataset(d.eval(), ro);
    if (!eval.ok()) {
      return WithContext("spec.data.eval: ", eval.status());
    }
    eval_data_ = std::move(*eval);
  }
  BatchOptions bo;
  bo.batch_size = d.batch_size() > 0 ? d.batch_size() : 1;
  bo.seq_len = d.seq_len() > 0 ? d.seq_len() : 2048;
  bo.pad_to_multiple = SequenceMultiple();
  bo.pack = d.packing();
  if (bo.pack && bo.seq_len % bo.pad_to_multiple != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.data.seq_len: packed rows of ", bo.seq_len,
                     " tokens do not split over parallel.tp=", tp_size(),
                     " ranks with sequence_parallel"));
  }
  bo.shuffle = true;
  bo.seed = static_cast<uint64_t>(d.seed());
  bo.skip_bad = d.skip_bad();
  model_->ConfigureBatches(bo);
  bo.image.do_pan_and_scan = d.pan_and_scan();
  GEMMA_ASSIGN_OR_RETURN(
      train_loader_,
      DataLoader::Create(std::move(*train), tokenizer_.get(), bo));
  train_size_ = train_loader_->size();
  return absl::OkStatus();
}

int Trainer::SequenceMultiple() const {
  const int pad = std::max(1, spec_.data().pad_to_multiple());
  if (tp_size() == 1 || !spec_.parallel().sequence_parallel()) return pad;
  return std::lcm(pad, tp_size());
}

LoaderPosition Trainer::TrainPosition() const {
  return train_batches_ ? train_batches_->position()
                        : train_loader_->position();
}

Trainer::MicroResult Trainer::Forward(const Batch& batch) {
  // Batches come from the prefetcher in pinned memory on CUDA: the copies
  // overlap with what runs on the GPU.
  const Batch on = BatchOnDevice(batch, device_, dtype_, /*non_blocking=*/true);
  LmLoss l =
      model_->Loss(on, spec_.data().packing(), spec_.model().recompute());
  return {l.loss_sum, l.tokens, l.correct};
}

absl::StatusOr<Batch> Trainer::NextMicroBatch() {
  const int dp = options_.groups.dp->size();
  const int me = options_.groups.dp->rank();
  std::optional<Batch> mine;
  if (!train_batches_) {
    // From the first step on, the next batches are prepared while the model
    // runs; positions stay those of the batches handed out.
    train_batches_ = std::make_unique<BatchPrefetcher>(
        std::move(train_loader_), /*depth=*/2 * grad_accum_ * dp,
        /*pin_memory=*/device_.is_cuda());
  }
  for (int r = 0; r < dp; ++r) {
    auto b = train_batches_->Next();
    if (!b.ok()) {
      return WithContext("spec.data.train: ", b.status());
    }
    if (r == me) mine = std::move(*b);
  }
  return std::move(*mine);
}

absl::StatusOr<StepStats> Trainer::Step() {
  const auto start = std::chrono::steady_clock::now();
  Comm& dp = *options_.groups.dp;
  std::vector<Batch> micro;
  for (int k = 0; k < grad_accum_; ++k) {
    GEMMA_ASSIGN_OR_RETURN(Batch b, NextMicroBatch());
    micro.push_back(std::move(b));
  }
  state_.loader.assign(dp.size(), TrainPosition());
  return Guarded<StepStats>("training step", [&]() -> StepStats {
    // Target tokens of the whole step (all micro batches, all DP ranks),
    // counted before any backward so every micro batch scales the same.
    at::Tensor counts = torch::zeros({2}, torch::kFloat64);
    for (const Batch& b : micro) {
      counts[0] += b.labels.narrow(1, 1, b.labels.size(1) - 1).ne(-100).sum();
      counts[1] += b.attention_mask.sum();
    }
    counts = counts.to(dp.device());
    dp.AllReduceSum(counts);
    counts = counts.cpu();
    const double total_tokens = std::max(1.0, counts[0].item<double>());
    for (GradSync* g : {grad_sync_.get(), expert_sync_.get()})
      if (g != nullptr) g->ZeroGrad();
    // loss, correct: summed on the device, read once at the end of the step.
    at::Tensor sums =
        torch::zeros({2}, torch::dtype(torch::kFloat64).device(device_));
    for (size_t k = 0; k < micro.size(); ++k) {
      // The last micro batch's backward starts the bucket reductions.
      for (GradSync* g : {grad_sync_.get(), expert_sync_.get()})
        if (g != nullptr) g->BeginBackward(/*last=*/k + 1 == micro.size());
      MicroResult r = Forward(micro[k]);
      (r.loss_sum / total_tokens).backward();
      sums[0] += r.loss_sum.detach().to(torch::kFloat64);
      sums[1] += r.correct.to(torch::kFloat64);
    }
    for (GradSync* g : {grad_sync_.get(), expert_sync_.get()})
      if (g != nullptr) g->FinishBackward();
    sums = sums.to(dp.device());
    dp.AllReduceSum(sums);
    sums = sums.cpu();
    StepStats s;
    s.grad_norm = ClipGradNorm(spec_.optim().grad_clip());
    s.lr = schedule_.At(state_.step);
    for (DistOptimizer* o : {optimizer_.get(), expert_optimizer_.get()})
      if (o != nullptr) o->Step(s.lr);
    ++state_.step;
    s.step = state_.step;
    s.tokens = static_cast<int64_t>(counts[0].item<double>());
    s.input_tokens = static_cast<int64_t>(counts[1].item<double>());
    s.loss = sums[0].item<double>() / total_tokens;
    s.accuracy = sums[1].item<double>() / total_tokens;
    state_.losses.push_back(s.loss);
    s.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    return s;
  });
}

double Trainer::ClipGradNorm(double max_norm) {
  if (expert_optimizer_ == nullptr) return optimizer_->ClipGradNorm(max_norm);
  // Expert gradients: each EP rank's experts are distinct, so their squares
  // add over the EP group (after the optimizer summed its EDP segments).
  double squares = optimizer_ != nullptr ? optimizer_->GradSquaredNorm() : 0;
  at::Tensor experts = torch::full(
      {1}, expert_optimizer_->GradSquaredNorm(),
      torch::dtype(torch::kFloat64).device(options_.groups.ep->device()));
  options_.groups.ep->AllReduceSum(experts);
  squares += experts.cpu().item<double>();
  const double norm = std::sqrt(squares);
  if (max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
      for (DistOptimizer* o : {optimizer_.get(), expert_optimizer_.get()})
        if (o != nullptr) o->ScaleGrads(coef);
    }
  }
  return norm;
}

absl::StatusOr<EvalStats> Trainer::Evaluate() {
  if (eval_data_.empty()) {
    return absl::FailedPreconditionError("validation needs spec.data.eval");
  }
  const auto& d = spec_.data();
  BatchOptions bo;
  bo.batch_size = d.batch_size() > 0 ? d.batch_size() : 1;
  bo.seq_len = d.seq_len() > 0 ? d.seq_len() : 2048;
  bo.pad_to_multiple = SequenceMultiple();
  bo.pack = d.packing();
  bo.shuffle = false;
  bo.skip_bad = d.skip_bad();
  model_->ConfigureBatches(bo);
  bo.image.do_pan_and_scan = d.pan_and_scan();
  GEMMA_ASSIGN_OR_RETURN(auto loader,
                         DataLoader::Create(eval_data_, tokenizer_.get(), bo));
  int64_t batches =
      spec_.optim().eval_batches() > 0 ? spec_.optim().eval_batches() : 8;
  // One pass at most.
  batches = std::min<int64_t>(
      batches, (loader->size() + bo.batch_size - 1) / bo.batch_size);
  Comm& dp = *options_.groups.dp;
  at::Tensor sums = torch::zeros(
      {3},
      torch::dtype(torch::kFloat64).device(device_));  // loss, tokens, correct
  for (int64_t i = 0; i < batches; ++i) {
    auto b = loader->Next();
    if (!b.ok()) {
      return WithContext("spec.data.eval: ", b.status());
    }
    if (i % dp.size() != dp.rank()) continue;
    auto r = Guarded<bool>("validation", [&] {
      torch::NoGradGuard no_grad;
      MicroResult m = Forward(*b);
      sums[0] += m.loss_sum.to(torch::kFloat64);
      sums[1] += m.tokens.to(torch::kFloat64);
      sums[2] += m.correct.to(torch::kFloat64);
      return true;
    });
    if (!r.ok()) return r.status();
  }
  sums = sums.to(dp.device());
  dp.AllReduceSum(sums);
  sums = sums.cpu();
  // Validation tokens do not count in the training router load.
  auto dropped = Guarded<bool>("model metrics", [&] {
    model_->TakeMetrics();
    return true;
  });
  if (!dropped.ok()) return dropped.status();
  EvalStats e;
  e.tokens = static_cast<int64_t>(sums[1].item<double>());
  e.loss = sums[0].item<double>() / std::max<double>(1, e.tokens);
  e.accuracy = sums[2].item<double>() / std::max<double>(1, e.tokens);
  e.batches = batches;
  return e;
}

std::string Trainer::OptimizerFile() const {
  // One file per TP rank (each holds the state of its shards).
  if (tp_size() == 1) return kOptimizerFile;
  return absl::StrFormat("optimizer-tp%05d.safetensors", tp_rank());
}

std::string Trainer::ExpertOptimizerFile() const {
  // Stage 1: a shard per rank; stage 0: one file per EP rank (the experts
  // it owns), replicated over the expert-data-parallel group.
  if (expert_optimizer_->zero_stage() == 1) {
    return absl::StrFormat("optimizer-experts-rank-%05d.safetensors",
                           options_.groups.world->rank());
  }
  return absl::StrFormat("optimizer-experts-ep%05d-tp%05d.safetensors",
                         options_.groups.ep->rank(), tp_rank());
}

absl::Status Trainer::AgreeOverWorld(const absl::Status& status) {
  return AgreeAllOk(*options_.groups.world, status, "checkpoint");
}

absl::StatusOr<int64_t> Trainer::WriteModel(const std::string& dir) {
  GEMMA_ASSIGN_OR_RETURN(int64_t bytes, model_->Write(dir, state_.step));
  if (options_.groups.world->rank() == 0) {  // one copy of the tokenizer
    GEMMA_RETURN_IF_ERROR(
        CopyFile(tokenizer_->path(), absl::StrCat(dir, "/tokenizer.model")));
  }
  return bytes;
}

absl::StatusOr<std::pair<std::string, int64_t>> Trainer::SaveCheckpoint() {
  const std::string dir = StepDir(root_, state_.step);
  const std::string tmp = dir + ".tmp";
  int64_t bytes = 0;
  Comm& dp = *options_.groups.dp;
  Comm& world = *options_.groups.world;
  // World rank 0 makes the folder; the TP group of DP rank 0 writes the
  // model shards (and with zero_stage 0 the optimizer file of each TP
  // shard); with zero_stage 1 every rank writes its optimizer shard; world
  // rank 0 writes the train state and publishes the folder once all have
  // written. A failure anywhere fails every rank, and no partial folder is
  // ever published.
  absl::Status st;
  if (world.rank() == 0) {
    st = RemoveTree(tmp);
    if (st.ok()) st = MakeDirs(tmp);
  }
  GEMMA_RETURN_IF_ERROR(AgreeOverWorld(st));
  if (zero_stage_ == 1) {
    const std::string shard =
        absl::StrCat(tmp, "/", DistOptimizer::ShardFileName(world.rank()));
    auto written = Guarded<int64_t>("writing " + shard, [&] {
      return optimizer_->WriteShard(shard, {{"rng/cpu", CpuRngState()}});
    });
    if (written.ok()) {
      bytes += *written;
    } else {
      st = written.status();
    }
  }
  if (st.ok() && expert_optimizer_ && expert_optimizer_->zero_stage() == 1) {
    const std::string shard = absl::StrCat(tmp, "/", ExpertOptimizerFile());
    auto written = Guarded<int64_t>("writing " + shard, [&] {
      return expert_optimizer_->WriteShard(shard, {});
    });
    if (written.ok()) {
      bytes += *written;
    } else {
      st = written.status();
    }
  }
  // The first max(tp, ep) ranks (the TP group of DP rank 0, the first EP
  // group) hold the whole model between them.
  if (st.ok() && options_.groups.writes_model()) {
    auto own = WriteCheckpointFiles(tmp);
    if (own.ok()) {
      bytes += *own;
    } else {
      st = own.status();
    }
  }
  GEMMA_RETURN_IF_ERROR(AgreeOverWorld(st));
  if (world.rank() == 0) {
    st = WriteFileAtomic(absl::StrCat(tmp, "/", kTrainStateFile),
                         state_.ToJson());
    if (st.ok()) {
      SyncDir(tmp);
      st = PublishDir(tmp, dir, /*overwrite=*/true);
    }
  }
  GEMMA_RETURN_IF_ERROR(AgreeOverWorld(st));
  // Bytes of the whole checkpoint (every writer's part).
  auto total = Guarded<int64_t>("checkpoint size", [&] {
    at::Tensor b = torch::tensor({bytes}, torch::kLong).to(world.device());
    world.AllReduceSum(b);
    return b.cpu().item<int64_t>();
  });
  if (!total.ok()) return total.status();
  return std::make_pair(dir, *total);
}

absl::StatusOr<int64_t> Trainer::WriteCheckpointFiles(const std::string& tmp) {
  int64_t bytes = 0;
  const std::string model_dir = absl::StrCat(tmp, "/", kModelSubdir);
  if (options_.save_model) {
    // Adapters are replicated: DP rank 0 saves them.
    if (options_.groups.dp->rank() == 0) {
      GEMMA_ASSIGN_OR_RETURN(bytes,
                             options_.save_model(*model_, model_dir, state_));
    }
  } else {
    GEMMA_ASSIGN_OR_RETURN(bytes, WriteModel(model_dir));
  }
  if (expert_optimizer_ && expert_optimizer_->zero_stage() == 0) {
    auto opt = expert_optimizer_->StateTensors();
    for (const auto& [k, t] : opt) bytes += t.numel() * t.element_size();
    GEMMA_RETURN_IF_ERROR(
        WriteTensorFile(absl::StrCat(tmp, "/", ExpertOptimizerFile()), opt));
  }
  if (zero_stage_ == 0 && options_.groups.dp->rank() == 0) {
    auto opt = optimizer_->StateTensors();
    opt["rng/cpu"] = CpuRngState();
    for (const auto& [k, t] : opt) bytes += t.numel() * t.element_size();
    GEMMA_RETURN_IF_ERROR(
        WriteTensorFile(absl::StrCat(tmp, "/", OptimizerFile()), opt));
  }
  return bytes;
}

absl::Status Trainer::Restore(const std::string& dir) {
  const std::string state_file = absl::StrCat(dir, "/", kTrainStateFile);
  GEMMA_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(state_file));
  GEMMA_ASSIGN_OR_RETURN(TrainState saved,
                         TrainState::FromJson(text, state_file));
  const int dp = options_.groups.dp->size();
  if (saved.dp != dp) {
    return absl::FailedPreconditionError(absl::StrCat(
        state_file, ": written with dp=", saved.dp, ", this run has dp=", dp,
        " (the data position cannot be split differently)"));
  }
  if (saved.ep != options_.groups.ep->size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        state_file, ": written with ep=", saved.ep,
        ", this run has ep=", options_.groups.ep->size(),
        " (the expert optimizer state is per EP rank; start a new job from ",
        dir, "/", kModelSubdir, " to change the layout)"));
  }
  if (saved.tp != tp_size()) {
    return absl::FailedPreconditionError(
        absl::StrCat(state_file, ": written with tp=", saved.tp,
                     ", this run has tp=", tp_size(),
                     " (the optimizer state is per TP shard; start a new job "
                     "from ",
                     dir, "/", kModelSubdir, " to change the layout)"));
  }
  const std::string model_dir = absl::StrCat(dir, "/", kModelSubdir);
  if (options_.load_model) {
    GEMMA_RETURN_IF_ERROR(options_.load_model(*model_, model_dir));
  } else if (model_dir != weights_dir_) {  // Init may have loaded them already
    GEMMA_RETURN_IF_ERROR(model_->Load(model_dir));
    weights_dir_ = model_dir;
  }
  GEMMA_ASSIGN_OR_RETURN(at::Tensor rng_state,
                         RestoreOptimizer(dir, saved.step));
  if (train_batches_) {
    GEMMA_ASSIGN_OR_RETURN(train_loader_, train_batches_->Stop());
    train_batches_.reset();
  }
  GEMMA_RETURN_IF_ERROR(
      train_loader_->Seek(saved.loader[options_.groups.dp->rank()]));
  SetCpuRngState(rng_state);
  saved.base_model =
      state_.base_model.empty() ? saved.base_model : state_.base_model;
  saved.max_steps = schedule_.total_steps;
  saved.job = options_.job;
  state_ = std::move(saved);
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> Trainer::RestoreOptimizer(const std::string& dir,
                                                     int64_t step) {
  const std::string full = absl::StrCat(dir, "/", OptimizerFile());
  const std::string shard = absl::StrCat(
      dir, "/", DistOptimizer::ShardFileName(options_.groups.world->rank()));
  const std::string& file = zero_stage_ == 1 ? shard : full;
  if (!PathExists(file)) {
    const bool other = PathExists(zero_stage_ == 1 ? full : shard);
    return absl::FailedPreconditionError(absl::StrCat(
        file, ": missing; this run has parallel.zero_stage ", zero_stage_,
        other ? absl::StrCat(" but the checkpoint was written with zero_stage ",
                             1 - zero_stage_)
              : ""));
  }
  std::map<std::string, at::Tensor> opt;
  if (zero_stage_ == 1) {
    auto extra = Guarded<std::map<std::string, at::Tensor>>(
        "reading " + file, [&] { return optimizer_->ReadShard(file, step); });
    if (!extra.ok()) return extra.status();
    opt = std::move(*extra);
  } else {
    GEMMA_ASSIGN_OR_RETURN(opt, ReadTensorFile(file));
  }
  auto rng = opt.find("rng/cpu");
  if (rng == opt.end()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": missing rng/cpu"));
  }
  at::Tensor rng_state = rng->second;
  opt.erase(rng);
  if (expert_optimizer_) {
    const std::string efile = absl::StrCat(dir, "/", ExpertOptimizerFile());
    if (!PathExists(efile)) {
      return absl::FailedPreconditionError(
          absl::StrCat(efile, ": missing (expert optimizer state)"));
    }
    if (expert_optimizer_->zero_stage() == 1) {
      auto extra = Guarded<std::map<std::string, at::Tensor>>(
          "reading " + efile,
          [&] { return expert_optimizer_->ReadShard(efile, step); });
      if (!extra.ok()) return extra.status();
    } else {
      GEMMA_ASSIGN_OR_RETURN(auto eopt, ReadTensorFile(efile));
      auto st = expert_optimizer_->LoadState(eopt, step);
      if (!st.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(efile, ": ", st.message()));
      }
    }
  }
  if (zero_stage_ == 0) {
    auto st = optimizer_->LoadState(opt, step);
    if (!st.ok())
      return absl::InvalidArgumentError(absl::StrCat(file, ": ", st.message()));
  }
  return rng_state;
}

absl::Status Trainer::Run(RankContext& ctx) {
  const auto& optim = spec_.optim();
  const int64_t log_every =
      optim.log_interval_steps() > 0 ? optim.log_interval_steps() : 1;
  const int64_t ckpt_every = spec_.checkpoint().interval_steps();
  int64_t params = 0, trainable = 0;
  for (auto& p : model_->module().parameters()) params += p.numel();
  for (auto& [n, p] : trainable_) trainable += p.numel();
  ctx.Log(absl::StrFormat(
      "training %s: %.2f M parameters (%.2f M trainable), %d examples, micro "
      "batch %d x accum %d x dp %d, steps %d..%d, checkpoints under %s",
      state_.base_model, params / 1e6, trainable / 1e6, train_size_,
      std::max(1, spec_.data().batch_size()), grad_accum_,
      options_.groups.dp->size(), state_.step, schedule_.total_steps, root_));
  int64_t last_saved = -1;
  auto save = [&](std::map<std::string, double> metrics) -> absl::Status {
    GEMMA_ASSIGN_OR_RETURN(auto saved, SaveCheckpoint());
    last_saved = state_.step;
    if (!state_.losses.empty()) metrics["loss"] = state_.losses.back();
    // Every rank reports (the catalog commits once all have); the bytes are
    // the whole checkpoint's, counted once.
    if (ctx.checkpoint) {
      ctx.checkpoint(state_.step, saved.first,
                     options_.groups.world->rank() == 0 ? saved.second : 0,
                     metrics);
    }
    ctx.Log(absl::StrFormat("checkpoint step %d -> %s (%.1f MB)", state_.step,
                            saved.first, saved.second / 1e6));
    return absl::OkStatus();
  };
  double tokens_window = 0, seconds_window = 0;
  while (state_.step < schedule_.total_steps) {
    if (ctx.Cancelled()) {
      if (last_saved != state_.step && state_.step > 0)
        GEMMA_RETURN_IF_ERROR(save({}));
      return absl::CancelledError(
          absl::StrCat("training stopped at step ", state_.step));
    }
    GEMMA_ASSIGN_OR_RETURN(StepStats s, Step());
    tokens_window += static_cast<double>(s.input_tokens);
    seconds_window += s.seconds;
    std::map<std::string, double> metrics;
    bool report = s.step % log_every == 0 || s.step == schedule_.total_steps;
    if (report) {
      metrics = {
          {"loss", s.loss},
          {"accuracy", s.accuracy},
          {"lr", s.lr},
          {"grad_norm", s.grad_norm},
          {"tokens_per_s", tokens_window / std::max(1e-9, seconds_window)}};
      tokens_window = seconds_window = 0;
      // Router load of the steps since the last report (MoE models).
      auto model_metrics = Guarded<std::map<std::string, double>>(
          "model metrics", [&] { return model_->TakeMetrics(); });
      if (!model_metrics.ok()) return model_metrics.status();
      metrics.insert(model_metrics->begin(), model_metrics->end());
    }
    std::map<std::string, double> eval_metrics;
    if (optim.eval_interval_steps() > 0 && !eval_data_.empty() &&
        (s.step % optim.eval_interval_steps() == 0 ||
         s.step == schedule_.total_steps)) {
      GEMMA_ASSIGN_OR_RETURN(EvalStats e, Evaluate());
      state_.eval_losses[s.step] = e.loss;
      eval_metrics = {{"eval_loss", e.loss}, {"eval_accuracy", e.accuracy}};
      metrics.insert(eval_metrics.begin(), eval_metrics.end());
      report = true;
      ctx.Log(absl::StrFormat("step %d: eval_loss %.4f eval_accuracy %.4f",
                              s.step, e.loss, e.accuracy));
    }
    if (report) ctx.Progress(s.step, schedule_.total_steps, metrics);
    if ((ckpt_every > 0 && s.step % ckpt_every == 0) ||
        s.step == schedule_.total_steps) {
      GEMMA_RETURN_IF_ERROR(save(eval_metrics));
    }
  }
  if (last_saved != state_.step) GEMMA_RETURN_IF_ERROR(save({}));
  if (spec_.output().empty()) return absl::OkStatus();
  if (options_.save_model) {
    if (options_.groups.dp->rank() != 0) return absl::OkStatus();
    GEMMA_ASSIGN_OR_RETURN(
        int64_t bytes, options_.save_model(*model_, spec_.output(), state_));
    ctx.Log(absl::StrFormat("adapters written to %s (%.1f MB)", spec_.output(),
                            bytes / 1e6));
  } else if (options_.groups.writes_model()) {
    // The first max(tp, ep) ranks (the TP group of DP rank 0, the first EP
    // group) write the model at their layout (any layout loads it); world
    // rank 0 publishes it once all have written.
    // Staged so a finished output replaces an old one whole.
    const std::string staging = spec_.output() + ".staging";
    GEMMA_ASSIGN_OR_RETURN(int64_t bytes, WriteModel(staging));
    if (options_.groups.world->rank() == 0) {
      GEMMA_RETURN_IF_ERROR(
          PublishDir(staging, spec_.output(), /*overwrite=*/true));
      ctx.Log(absl::StrFormat("model written to %s (%.1f MB per rank)",
                              spec_.output(), bytes / 1e6));
    }
  }
  return absl::OkStatus();
}

}  // namespace gemma
