// gemmactl local generate: text (and images) or prompt token ids in, text or
// token ids out, with a local model.
#include <torch/torch.h>

#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/local_forward.h"
#include "cli/local_model.h"
#include "common/flags.h"
#include "data/tokenizer.h"
#include "jobs/generate_job.h"
#include "model/generate.h"

namespace gemma::cli {
namespace {

absl::StatusOr<std::vector<int64_t>> ParseIds(const std::string& flag,
                                              const std::string& text) {
  std::vector<int64_t> ids;
  for (absl::string_view part :
       absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", flag, ": \"", std::string(part), "\" is not a token id"));
    }
    ids.push_back(v);
  }
  return ids;
}

// Text mode: --prompt (with --image) or --input JSONL through TextGenerator.
int GenerateText(Gemma3Model model, const std::string& tokenizer_path,
                 const std::vector<GenerationRequest>& requests,
                 const TextGenerationOptions& opts, bool json) {
  auto tokenizer = Tokenizer::Load(tokenizer_path);
  if (!tokenizer.ok()) {
    std::cerr << "gemmactl local generate: " << tokenizer.status().message()
              << "\n";
    return 1;
  }
  TextGenerator gen(model, tokenizer->get());
  const auto t0 = std::chrono::steady_clock::now();
  auto outputs = gen.Run(requests, opts, [&](int64_t done, int64_t total) {
    if (total > 1) std::cerr << "generated " << done << "/" << total << "\n";
    return true;
  });
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  if (!outputs.ok()) {
    std::cerr << "gemmactl local generate: " << outputs.status().message()
              << "\n";
    return 1;
  }
  int64_t tokens = 0;
  for (const GenerationOutput& o : *outputs) {
    tokens += static_cast<int64_t>(o.tokens.size());
    if (json) {
      nlohmann::json j = {{"id", o.id},
                          {"output", o.text},
                          {"tokens", o.tokens},
                          {"finish_reason", o.finish_reason}};
      if (!o.reference.empty()) j["reference"] = o.reference;
      std::cout << j.dump(-1, ' ', false,
                          nlohmann::json::error_handler_t::replace)
                << "\n";
    } else if (requests.size() == 1) {
      std::cout << o.text << "\n";
    } else {
      std::cout << o.id << "\t" << o.text << "\n";
    }
  }
  std::cerr << tokens << " tokens in " << secs << " s\n";
  return 0;
}

}  // namespace

int LocalGenerateMain(int argc, char** argv) {
  FlagSet flags("gemmactl local generate",
                "Generate with a local model: text and images in, text out "
                "(--prompt/--image or --input JSONL), or token ids in and out "
                "(--prompt-ids). Greedy by default.");
  std::string model_dir, prompt, stop = "default", output = "table";
  std::string text_prompt, input, tokenizer_path;
  std::vector<std::string> images, stop_strings;
  int64_t max_new_tokens = 32, top_k = 0, seed = 0, batch_size = 8;
  double temperature = 0.0, top_p = 1.0;
  bool no_cache = false;
  flags
      .String("model", &model_dir,
              "model folder (HF, our checkpoint, our names; in text mode also "
              "a PEFT adapter checkpoint)")
      .Meta("DIR");
  flags
      .String("prompt-ids", &prompt,
              "comma-separated prompt token ids, e.g. 2,105,2364")
      .Meta("IDS");
  flags.String("prompt", &text_prompt, "a user prompt (text mode)")
      .Meta("TEXT");
  flags
      .Repeated("image", &images,
                "an image for --prompt, placed before the text (repeatable)")
      .Meta("PATH");
  flags
      .String("input", &input,
              "JSONL of conversations (HF messages shape; images relative to "
              "the file); a final assistant turn is kept as the reference")
      .Meta("FILE");
  flags
      .String(
          "tokenizer", &tokenizer_path,
          "tokenizer.model for text mode (default: <model>/tokenizer.model)")
      .Meta("FILE");
  flags
      .Repeated("stop", &stop_strings,
                "stop string for text mode (repeatable); <end_of_turn> always "
                "stops")
      .Meta("TEXT");
  flags.Int("batch-size", &batch_size, "prompts per batch in text mode");
  flags.Int("max-new-tokens", &max_new_tokens, "most tokens to generate");
  flags.Double("temperature", &temperature, "sampling temperature; 0 = greedy");
  flags.Int("top-k", &top_k, "sample among the k best tokens (0 = all)");
  flags.Double("top-p", &top_p, "nucleus sampling mass (1 = off)");
  flags.Int("seed", &seed, "sampling seed");
  flags
      .String("stop-ids", &stop,
              "stop token ids (\"default\": the config's eos; \"none\")")
      .Meta("IDS");
  flags.Bool("no-cache", &no_cache,
             "recompute the whole sequence each step (slow; for checks)");
  AddOutputFlag(flags, &output);
  flags.Epilog(
      "Examples:\n"
      "  gemmactl local generate --model ./ckpt --image receipt.png --prompt "
      "\"Describe this image.\"\n"
      "  gemmactl local generate --model ./ckpt --input eval.jsonl "
      "--max-new-tokens 128 -o json > out.jsonl\n"
      "  gemmactl local generate --model ./gemma-3-4b --prompt-ids "
      "2,105,2364,107 --max-new-tokens 16\n"
      "  gemmactl local generate --model ./tiny --prompt-ids 2,7,9 "
      "--temperature 1 --top-k 64 "
      "--top-p 0.95 --seed 3 -o json\n");
  if (auto exit_code = flags.ParseOrExit(argc, argv, 3)) return *exit_code;
  const bool text_mode = !text_prompt.empty() || !input.empty();
  if (model_dir.empty()) return flags.UsageError("--model is required");
  if ((text_mode ? 1 : 0) + (prompt.empty() ? 0 : 1) != 1) {
    return flags.UsageError(
        "give one of --prompt / --input (text) or --prompt-ids (token ids)");
  }
  if (!text_prompt.empty() && !input.empty())
    return flags.UsageError("give --prompt or --input, not both");
  if (!images.empty() && text_prompt.empty())
    return flags.UsageError("--image goes with --prompt");
  if (output != "json" && output != "table")
    return flags.UsageError("--output: must be table or json");
  std::vector<GenerationRequest> requests;
  if (!input.empty()) {
    auto read = ReadGenerationInput(input);
    if (!read.ok()) return flags.UsageError(read.status().message());
    requests = *std::move(read);
  } else if (!text_prompt.empty()) {
    GenerationRequest r;
    r.id = "prompt";
    Message m;
    m.role = "user";
    for (const std::string& path : images) {
      ContentPart p;
      p.type = ContentPart::Type::kImage;
      p.image_path = path;
      m.content.push_back(p);
    }
    m.content.push_back({ContentPart::Type::kText, text_prompt, ""});
    r.prompt.messages.push_back(std::move(m));
    r.prompt.source = "--prompt";
    requests.push_back(std::move(r));
  }
  if (!text_mode && !stop_strings.empty())
    return flags.UsageError("--stop is for text mode; use --stop-ids");
  std::vector<int64_t> ids;
  if (!text_mode) {
    auto parsed = ParseIds("prompt-ids", prompt);
    if (!parsed.ok()) return flags.UsageError(parsed.status().message());
    ids = *std::move(parsed);
  }
  auto model = text_mode ? LoadJobModel(model_dir) : LoadLocalModel(model_dir);
  if (!model.ok()) {
    std::cerr << "gemmactl local generate: " << model.status().message()
              << "\n";
    return 1;
  }
  // The sampling flags, into TextGenerationOptions or GenerateOptions.
  auto set_sampling = [&](auto& o) {
    o.max_new_tokens = max_new_tokens;
    o.temperature = temperature;
    o.top_k = top_k;
    o.top_p = top_p;
    o.seed = static_cast<uint64_t>(seed);
  };
  if (text_mode) {
    TextGenerationOptions t;
    set_sampling(t);
    t.stop = stop_strings;
    t.batch_size = static_cast<int>(batch_size);
    gemma::v1::ModelSpec ms;
    ms.set_path(model_dir);
    ms.set_tokenizer(tokenizer_path);
    return GenerateText(*model, TokenizerPathOf(ms), requests, t,
                        output == "json");
  }
  GenerateOptions opts;
  set_sampling(opts);
  opts.use_cache = !no_cache;
  opts.pad_token_id = (*model)->config().text.pad_token_id;
  if (stop == "default") {
    opts.stop_token_ids = (*model)->config().eos_token_ids;
  } else if (stop != "none") {
    auto parsed = ParseIds("stop-ids", stop);
    if (!parsed.ok()) return flags.UsageError(parsed.status().message());
    opts.stop_token_ids = *parsed;
  }
  const int64_t vocab = (*model)->config().text.vocab_size;
  for (int64_t id : ids) {
    if (id >= vocab) {
      return flags.UsageError(absl::StrCat(
          "--prompt-ids: ", id, " is outside the vocabulary (", vocab, ")"));
    }
  }
  const bool json = output == "json";
  if (!json) {
    opts.on_step = [](int64_t, const torch::Tensor& t) {
      std::cerr << t[0].item<int64_t>() << " " << std::flush;  // progress
    };
  }
  ModelInputs in;
  in.input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0);
  const auto t0 = std::chrono::steady_clock::now();
  auto result = Generate(*model, in, opts);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  if (!json) std::cerr << "\n";
  if (!result.ok()) {
    std::cerr << "gemmactl local generate: " << result.status().message()
              << "\n";
    return 1;
  }
  at::Tensor row = result->tokens[0].contiguous();
  std::vector<int64_t> out(row.data_ptr<int64_t>(),
                           row.data_ptr<int64_t>() + row.numel());
  const bool stopped =
      !out.empty() &&
      std::find(opts.stop_token_ids.begin(), opts.stop_token_ids.end(),
                out.back()) != opts.stop_token_ids.end();
  if (json) {
    nlohmann::json j = {
        {"tokens", out},
        {"stopped", stopped},
        {"seconds", secs},
        {"tokens_per_second", out.empty() ? 0.0 : out.size() / secs}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << absl::StrJoin(out, ",") << "\n";
    std::cerr << out.size() << " tokens in " << secs << " s"
              << (stopped ? " (stop token)" : "") << "\n";
  }
  return 0;
}

}  // namespace gemma::cli
