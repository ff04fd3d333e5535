#include "jobs/generate_job.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "data/dataset.h"
#include "data/gemma4_image.h"
#include "jobs/one_rank_job.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/lora.h"
#include "model/lora_layout.h"
#include "model/weights.h"

namespace gemma {
namespace {

std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string TurnText(const Message& m) {
  std::string out;
  for (const ContentPart& p : m.content) {
    if (p.type != ContentPart::Type::kText) continue;
    std::string t = p.text;
    const size_t b = t.find_first_not_of(" \t\n\r\f\v");
    const size_t e = t.find_last_not_of(" \t\n\r\f\v");
    absl::StrAppend(&out, b == std::string::npos ? "" : t.substr(b, e - b + 1));
  }
  return out;
}

// Earliest occurrence of any stop string in `text` (npos if none).
size_t FirstStop(const std::string& text,
                 const std::vector<std::string>& stop) {
  size_t best = std::string::npos;
  for (const std::string& s : stop) {
    if (s.empty()) continue;
    best = std::min(best, text.find(s));
  }
  return best;
}

}  // namespace

std::string TokenizerPathOf(const gemma::v1::ModelSpec& model) {
  if (!model.tokenizer().empty()) return model.tokenizer();
  const std::string own = model.path() + "/tokenizer.model";
  if (!PathExists(own) && PathExists(model.path() + "/adapter.json")) {
    absl::StatusOr<AdapterCheckpointInfo> info =
        ReadAdapterCheckpointInfo(model.path());
    if (info.ok()) return info->base_model + "/tokenizer.model";
  }
  return own;
}

absl::StatusOr<Gemma3Model> LoadJobModel(const std::string& path) {
  if (!PathExists(path + "/adapter.json")) {
    GEMMA_ASSIGN_OR_RETURN(Gemma3Model model, LoadModel(path));
    model->eval();
    return model;
  }
  GEMMA_ASSIGN_OR_RETURN(AdapterCheckpointInfo info,
                         ReadAdapterCheckpointInfo(path));
  absl::StatusOr<Gemma3Model> model = LoadModel(info.base_model);
  if (!model.ok()) {
    return WithContext(absl::StrCat(path, "/adapter.json: base_model: "),
                       model.status());
  }
  GEMMA_RETURN_IF_ERROR(LoadAdapterCheckpoint(path, *model).status());
  (*model)->eval();
  return *model;
}

TextGenerator InferenceModel::Generator(const Tokenizer* tokenizer) {
  if (!gemma4) return TextGenerator(gemma3, tokenizer);
  BatchOptions bo;
  gemma4->ConfigureBatches(bo);
  return TextGenerator(*gemma4->gemma4(), tokenizer,
                       bo.gemma4_image.max_soft_tokens);
}

absl::StatusOr<InferenceModel> OpenInferenceModel(
    const gemma::v1::JobSpec& spec, const Tokenizer& tokenizer,
    const c10::Device& device) {
  const std::string& dtype = spec.model().dtype();
  if (!dtype.empty() && dtype != "float32" && dtype != "bfloat16") {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.model.dtype: must be float32 or bfloat16, got '", dtype, "'"));
  }
  InferenceModel m;
  m.dtype = dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  const std::string& path = spec.model().path();
  std::string base = path;
  const bool adapters = PathExists(path + "/adapter.json");
  if (adapters) {
    GEMMA_ASSIGN_OR_RETURN(AdapterCheckpointInfo info,
                           ReadAdapterCheckpointInfo(path));
    base = info.base_model;
  }
  GEMMA_ASSIGN_OR_RETURN(std::string family, ModelFamily(base));
  if (family != "gemma4") {
    GEMMA_ASSIGN_OR_RETURN(m.gemma3, LoadJobModel(path));
    m.gemma3->to(device, m.dtype);
    m.gemma3->eval();
    return m;
  }
  gemma::v1::JobSpec one = spec;
  one.clear_parallel();
  GEMMA_ASSIGN_OR_RETURN(m.gemma4, OpenTrainModel(base, ParallelGroups{}, one));
  if (adapters) {
    GEMMA_ASSIGN_OR_RETURN(AdapterLayout layout,
                           AdapterLayoutOf(m.gemma4->module()));
    GEMMA_RETURN_IF_ERROR(
        LoadAdapterCheckpoint(path, m.gemma4->module(), layout).status());
  }
  GEMMA_RETURN_IF_ERROR(m.gemma4->CheckTokenizer(tokenizer));
  m.gemma4->module().to(device, m.dtype);
  m.gemma4->module().eval();
  return m;
}

GenerationRequest SplitAtLastModelTurn(const Conversation& conv,
                                       const std::string& id) {
  GenerationRequest r;
  r.id = id;
  r.prompt = conv;
  for (int i = static_cast<int>(conv.messages.size()) - 1; i >= 0; --i) {
    const std::string& role = conv.messages[i].role;
    if (role == "assistant" || role == "model") {
      r.reference = TurnText(conv.messages[i]);
      r.prompt.messages.resize(i);
      break;
    }
  }
  return r;
}

absl::StatusOr<std::vector<GenerationRequest>> ReadGenerationInput(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  const std::string base = DirName(path);
  std::vector<GenerationRequest> out;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string source = absl::StrCat(path, ":", n);
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": not valid JSON"));
    }
    GEMMA_ASSIGN_OR_RETURN(Conversation conv,
                           ParseConversationJson(j, base, source));
    std::string id = absl::StrCat("line-", n);
    if (j.is_object() && j.contains("id")) {
      id = j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump();
    }
    for (const std::string& image : conv.image_paths()) {
      if (!PathExists(image)) {
        return absl::NotFoundError(
            absl::StrCat(source, ": image '", image, "' not found"));
      }
    }
    GenerationRequest r = SplitAtLastModelTurn(conv, id);
    if (r.prompt.messages.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": no user turn to generate from"));
    }
    out.push_back(std::move(r));
  }
  if (out.empty())
    return absl::InvalidArgumentError(absl::StrCat(path, ": no prompts"));
  return out;
}

absl::Status WriteGenerationOutput(
    const std::string& path, const std::vector<GenerationOutput>& outputs) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f)
      return absl::PermissionDeniedError(absl::StrCat(tmp, ": cannot write"));
    for (const GenerationOutput& o : outputs) {
      nlohmann::json j = {{"id", o.id},
                          {"prompt", o.prompt},
                          {"output", o.text},
                          {"tokens", o.tokens},
                          {"finish_reason", o.finish_reason}};
      if (!o.reference.empty()) j["reference"] = o.reference;
      f << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
        << "\n";
    }
    f.flush();
    if (!f) return absl::DataLossError(absl::StrCat(tmp, ": write failed"));
  }
  return RenamePath(tmp, path);
}

namespace {

struct LeftPadded {
  at::Tensor input_ids, attention_mask, token_type_ids;  // [B, L] int64
};

// The prompts as one batch padded on the left to the longest (row r's tokens
// end at the last column), as HF's generate wants them.
LeftPadded LeftPad(const std::vector<EncodedChat>& encoded, int pad) {
  size_t longest = 0;
  for (const auto& e : encoded) longest = std::max(longest, e.input_ids.size());
  const int64_t b = static_cast<int64_t>(encoded.size());
  const int64_t len = static_cast<int64_t>(longest);
  LeftPadded out;
  out.input_ids = torch::full({b, len}, pad, torch::kLong);
  out.attention_mask = torch::zeros({b, len}, torch::kLong);
  out.token_type_ids = torch::zeros({b, len}, torch::kLong);
  for (int64_t r = 0; r < b; ++r) {
    const auto& e = encoded[static_cast<size_t>(r)];
    const int64_t n = static_cast<int64_t>(e.input_ids.size());
    if (n == 0) continue;
    const auto row = [&](const std::vector<int>& v) {
      return torch::tensor(std::vector<int64_t>(v.begin(), v.end()),
                           torch::kLong);
    };
    out.input_ids[r].narrow(0, len - n, n).copy_(row(e.input_ids));
    out.token_type_ids[r].narrow(0, len - n, n).copy_(row(e.token_type_ids));
    out.attention_mask[r].narrow(0, len - n, n).fill_(1);
  }
  return out;
}

// A batch's prompts: token ids (EncodeChat) and text (RenderChat without the
// image soft tokens), per request.
struct EncodedPrompts {
  std::vector<EncodedChat> encoded;
  std::vector<std::string> texts;
};

// Encodes the requests [begin, end) for one family: `image(decoded)`
// preprocesses each image (keeping its pixels) and gives its chat info
// (Gemma 3: pan-and-scan crops, Gemma 4: soft tokens), which EncodeChat gets
// when `pass_infos`. Errors name the request's source (and the image).
template <typename Info>
absl::StatusOr<EncodedPrompts> EncodePrompts(
    const Tokenizer& tokenizer, const GenerationRequest* begin,
    const GenerationRequest* end, bool is_vl, const ChatOptions& chat,
    const std::string& soft_token, bool pass_infos,
    const std::function<absl::StatusOr<Info>(const RgbImage&)>& image) {
  EncodedPrompts out;
  for (const GenerationRequest* r = begin; r != end; ++r) {
    const Conversation& conv = r->prompt;
    if (!is_vl && conv.num_images() > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(conv.source, ": has images but the model is text-only"));
    }
    std::vector<Info> infos;
    for (const std::string& path : conv.image_paths()) {
      absl::StatusOr<RgbImage> decoded = DecodeImageFile(path);
      if (!decoded.ok()) {  // names the file
        return WithContext(absl::StrCat(conv.source, ": "), decoded.status());
      }
      absl::StatusOr<Info> info = image(*decoded);
      if (!info.ok()) {
        return WithContext(absl::StrCat(conv.source, ": ", path, ": "),
                           info.status());
      }
      infos.push_back(*std::move(info));
    }
    if (!pass_infos) infos.clear();
    absl::StatusOr<EncodedChat> enc = EncodeChat(tokenizer, conv, chat, infos);
    if (!enc.ok()) {
      return WithContext(absl::StrCat(conv.source, ": "), enc.status());
    }
    absl::StatusOr<RenderedChat> rendered = RenderChat(conv, chat, infos);
    std::string text = rendered.ok() ? rendered->text : "";
    out.texts.push_back(absl::StrReplaceAll(text, {{soft_token, ""}}));
    out.encoded.push_back(*std::move(enc));
  }
  return out;
}

}  // namespace

TextGenerator::TextGenerator(Gemma3Model model, const Tokenizer* tokenizer)
    : model_(std::move(model)), tokenizer_(tokenizer) {}

TextGenerator::TextGenerator(Gemma4Model model, const Tokenizer* tokenizer,
                             int max_soft_tokens)
    : gemma4_(std::move(model)),
      max_soft_tokens_(max_soft_tokens),
      tokenizer_(tokenizer) {}

absl::StatusOr<std::vector<GenerationOutput>> TextGenerator::Run(
    const std::vector<GenerationRequest>& requests,
    const TextGenerationOptions& options,
    const std::function<bool(int64_t, int64_t)>& on_batch) {
  if (options.batch_size < 1)
    return absl::InvalidArgumentError("generate: batch_size must be >= 1");
  std::vector<GenerationOutput> out;
  const int64_t total = static_cast<int64_t>(requests.size());
  for (int64_t i = 0; i < total; i += options.batch_size) {
    const int64_t end = std::min<int64_t>(total, i + options.batch_size);
    GEMMA_ASSIGN_OR_RETURN(
        std::vector<GenerationOutput> part,
        gemma4_
            ? RunBatchGemma4(requests.data() + i, requests.data() + end,
                             options, options.seed + static_cast<uint64_t>(i))
            : RunBatch(requests.data() + i, requests.data() + end, options,
                       options.seed + static_cast<uint64_t>(i)));
    for (auto& o : part) out.push_back(std::move(o));
    if (on_batch && !on_batch(end, total))
      return absl::CancelledError("generate: stopped");
  }
  return out;
}

absl::StatusOr<std::vector<GenerationOutput>> TextGenerator::RunBatch(
    const GenerationRequest* begin, const GenerationRequest* end,
    const TextGenerationOptions& options, uint64_t seed) {
  const ModelConfig& config = model_->config();
  ChatOptions chat;
  chat.mm_tokens_per_image = static_cast<int>(config.mm_tokens_per_image);
  chat.add_generation_prompt = true;
  ImageOptions image;
  if (config.vision.has_value())
    image.image_size = static_cast<int>(config.vision->image_size);
  image.do_pan_and_scan = options.pan_and_scan;
  const SpecialTokenIds& sp = tokenizer_->special();

  const int64_t b = end - begin;
  std::vector<at::Tensor> images;
  GEMMA_ASSIGN_OR_RETURN(
      EncodedPrompts prompts,
      EncodePrompts<int>(*tokenizer_, begin, end, config.is_vl(), chat,
                         kImageSoftToken, options.pan_and_scan,
                         [&](const RgbImage& decoded) -> absl::StatusOr<int> {
                           at::Tensor t = PreprocessImage(decoded, image);
                           images.push_back(t);
                           return static_cast<int>(t.size(0)) - 1;  // crops
                         }));
  const LeftPadded padded = LeftPad(prompts.encoded, sp.pad);
  ModelInputs in;
  in.input_ids = padded.input_ids;
  in.attention_mask = padded.attention_mask;
  in.token_type_ids = padded.token_type_ids;
  if (!images.empty())
    in.pixel_values = torch::cat(images);
  else
    in.token_type_ids = torch::Tensor();

  std::set<int64_t> stop_ids(config.eos_token_ids.begin(),
                             config.eos_token_ids.end());
  for (int id : {sp.eos, sp.end_of_turn})
    if (id >= 0) stop_ids.insert(id);
  return Finish(
      begin, b, prompts.texts, std::move(stop_ids), options, seed,
      [&](const GenerateOptions& g) { return Generate(model_, in, g); });
}

absl::StatusOr<std::vector<GenerationOutput>> TextGenerator::Finish(
    const GenerationRequest* begin, int64_t b,
    const std::vector<std::string>& prompts, std::set<int64_t> stop_ids,
    const TextGenerationOptions& options, uint64_t seed,
    const std::function<absl::StatusOr<GenerateResult>(const GenerateOptions&)>&
        generate) {
  const SpecialTokenIds& sp = tokenizer_->special();
  GenerateOptions g;
  g.max_new_tokens = options.max_new_tokens;
  g.temperature = options.temperature;
  g.top_k = options.top_k;
  g.top_p = options.top_p;
  g.seed = seed;
  g.pad_token_id = sp.pad;
  g.stop_token_ids.assign(stop_ids.begin(), stop_ids.end());
  // The model's vocabulary may be padded past the tokenizer's (Gemma 3:
  // 262208 vs 262144): such ids have no text and are left out of it.
  const int64_t vocab = tokenizer_->vocab_size();
  // Rows whose text reached a stop string: the token count at that moment.
  std::vector<int64_t> string_stop(b, -1);
  auto row_ids = [&](const at::Tensor& row, int64_t n) {
    std::vector<int> ids;
    const int64_t* p = row.data_ptr<int64_t>();
    for (int64_t k = 0; k < n; ++k) {
      if (stop_ids.count(p[k])) break;
      if (p[k] < vocab) ids.push_back(static_cast<int>(p[k]));
    }
    return ids;
  };
  if (!options.stop.empty()) {
    g.should_stop = [&](const torch::Tensor& generated) {
      torch::Tensor flags = torch::zeros({b}, torch::kBool);
      const int64_t n = generated.size(1);
      for (int64_t r = 0; r < b; ++r) {
        if (string_stop[r] >= 0) {
          flags[r] = true;
          continue;
        }
        at::Tensor row = generated[r].contiguous();
        auto text = tokenizer_->Decode(row_ids(row, n));
        if (text.ok() && FirstStop(*text, options.stop) != std::string::npos) {
          string_stop[r] = n;
          flags[r] = true;
        }
      }
      return flags;
    };
  }
  GEMMA_ASSIGN_OR_RETURN(GenerateResult result, generate(g));
  std::vector<GenerationOutput> out;
  const int64_t n = result.tokens.size(1);
  for (int64_t r = 0; r < b; ++r) {
    GenerationOutput o;
    o.id = begin[r].id;
    o.reference = begin[r].reference;
    o.prompt = prompts[r];
    o.finish_reason = "length";
    at::Tensor row = result.tokens[r].contiguous();
    const int64_t* p = row.data_ptr<int64_t>();
    const int64_t limit = string_stop[r] >= 0 ? string_stop[r] : n;
    std::vector<int> text_ids;
    for (int64_t k = 0; k < limit; ++k) {
      o.tokens.push_back(p[k]);
      if (stop_ids.count(p[k])) {
        o.finish_reason = "stop";
        break;
      }
      if (p[k] < vocab) text_ids.push_back(static_cast<int>(p[k]));
    }
    GEMMA_ASSIGN_OR_RETURN(o.text, tokenizer_->Decode(text_ids));
    if (string_stop[r] >= 0) {
      o.finish_reason = "stop";
      const size_t cut = FirstStop(o.text, options.stop);
      if (cut != std::string::npos) o.text.resize(cut);
    }
    out.push_back(std::move(o));
  }
  return out;
}

absl::StatusOr<std::vector<GenerationOutput>> TextGenerator::RunBatchGemma4(
    const GenerationRequest* begin, const GenerationRequest* end,
    const TextGenerationOptions& options, uint64_t seed) {
  const Gemma4ModelConfig& config = gemma4_->config();
  ChatOptions chat;
  chat.format = ChatFormat::kGemma4;
  chat.add_generation_prompt = true;
  Gemma4ImageOptions image;
  image.max_soft_tokens = max_soft_tokens_;
  if (config.vision) {
    image.patch_size = static_cast<int>(config.vision->patch_size);
    image.pooling_kernel_size =
        static_cast<int>(config.vision->pooling_kernel_size);
  }
  const SpecialTokenIds& sp = tokenizer_->special();
  const int64_t b = end - begin;
  std::vector<at::Tensor> pixels, positions;
  GEMMA_ASSIGN_OR_RETURN(
      EncodedPrompts prompts,
      EncodePrompts<ChatImageInfo>(
          *tokenizer_, begin, end, config.is_vl(), chat, kImagePlaceholder,
          /*pass_infos=*/true,
          [&](const RgbImage& decoded) -> absl::StatusOr<ChatImageInfo> {
            GEMMA_ASSIGN_OR_RETURN(Gemma4ImagePatches patches,
                                   Gemma4PreprocessImage(decoded, image));
            pixels.push_back(
                torch::from_blob(patches.pixel_values.data(),
                                 {patches.max_patches, patches.patch_dim},
                                 torch::kFloat)
                    .clone());
            positions.push_back(torch::from_blob(patches.positions.data(),
                                                 {patches.max_patches, 2},
                                                 torch::kLong)
                                    .clone());
            ChatImageInfo info;
            info.soft_tokens = patches.num_soft_tokens;
            return info;
          }));
  const LeftPadded padded = LeftPad(prompts.encoded, sp.pad);
  Gemma4Inputs in;
  in.input_ids = padded.input_ids;
  in.attention_mask = padded.attention_mask;
  if (!pixels.empty()) {
    in.pixel_values = torch::stack(pixels);
    in.image_positions = torch::stack(positions);
  }
  std::set<int64_t> stop_ids(config.text.eos_token_ids.begin(),
                             config.text.eos_token_ids.end());
  for (int id : {sp.eos, sp.turn_close})
    if (id >= 0) stop_ids.insert(id);
  return Finish(
      begin, b, prompts.texts, std::move(stop_ids), options, seed,
      [&](const GenerateOptions& g) { return GenerateGemma4(gemma4_, in, g); });
}

namespace {

class GenerateJob : public OneRankJob {
 public:
  GenerateJob() : OneRankJob("generate") {}

 private:
  absl::Status RunOneRank(RankContext& ctx) override {
    const auto& spec = ctx.spec;
    const auto& g = spec.generate();
    const std::string output = g.output().empty() ? spec.output() : g.output();
    if (output.empty())
      return absl::InvalidArgumentError("spec.generate.output: required");
    std::vector<GenerationRequest> requests;
    if (!g.input().empty()) {
      GEMMA_ASSIGN_OR_RETURN(requests, ReadGenerationInput(g.input()));
    }
    for (int i = 0; i < g.prompts_size(); ++i) {
      GenerationRequest r;
      r.id = absl::StrCat("prompt-", i);
      Message m;
      m.role = "user";
      m.content.push_back({ContentPart::Type::kText, g.prompts(i), ""});
      r.prompt.messages.push_back(std::move(m));
      r.prompt.source = absl::StrCat("spec.generate.prompts[", i, "]");
      requests.push_back(std::move(r));
    }
    if (requests.empty()) {
      return absl::InvalidArgumentError(
          "spec.generate: give input (JSONL) or prompts");
    }
    GEMMA_ASSIGN_OR_RETURN(auto tokenizer,
                           Tokenizer::Load(TokenizerPathOf(spec.model())));
    GEMMA_ASSIGN_OR_RETURN(
        InferenceModel model,
        OpenInferenceModel(
            spec, *tokenizer,
            c10::Device(ctx.device.empty() ? "cpu" : ctx.device)));
    ctx.Log(absl::StrCat("generate: ", requests.size(), " prompts with ",
                         spec.model().path()));
    TextGenerationOptions opt;
    opt.max_new_tokens = g.max_new_tokens() > 0 ? g.max_new_tokens() : 128;
    opt.temperature = g.temperature();
    opt.top_k = g.top_k();
    opt.top_p = (g.top_p() <= 0 || g.top_p() >= 1) ? 1.0 : g.top_p();
    opt.seed = static_cast<uint64_t>(g.seed());
    opt.stop.assign(g.stop().begin(), g.stop().end());
    opt.batch_size = g.batch_size() > 0 ? g.batch_size() : 8;
    opt.pan_and_scan = spec.data().pan_and_scan();
    TextGenerator gen = model.Generator(tokenizer.get());
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t total = static_cast<int64_t>(requests.size());
    ctx.Progress(0, total, {});
    GEMMA_ASSIGN_OR_RETURN(
        std::vector<GenerationOutput> outputs,
        gen.Run(requests, opt, [&](int64_t done, int64_t all) {
          if (done < all) ctx.Progress(done, all, {});
          return !ctx.Cancelled();
        }));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    int64_t tokens = 0, stopped = 0;
    for (const auto& o : outputs) {
      tokens += static_cast<int64_t>(o.tokens.size());
      stopped += o.finish_reason == "stop";
    }
    GEMMA_RETURN_IF_ERROR(WriteGenerationOutput(output, outputs));
    ctx.Progress(total, total,
                 {{"examples", static_cast<double>(total)},
                  {"generated_tokens", static_cast<double>(tokens)},
                  {"stopped", static_cast<double>(stopped)},
                  {"tokens_per_second", secs > 0 ? tokens / secs : 0.0}});
    ctx.Log(absl::StrFormat("generate: %d outputs, %d tokens in %.2f s -> %s",
                            total, tokens, secs, output));
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Job> NewGenerateJob() {
  return std::make_unique<GenerateJob>();
}

}  // namespace gemma
