// convert_bench: how fast is HF -> our checkpoint conversion next to a plain
// file copy of the same bytes?
//
//   convert_bench [--scale 1.0] [--dir /tmp] [--tp 1] [--keep]
//
// Writes a synthetic Gemma-3-4B-shaped HF folder (random bf16 weights, real
// shapes, ~8.6 GB at --scale 1; --scale shrinks the layer counts and vocab),
// then in the same run times (1) a plain read()/write() copy of its
// safetensors files with fsync, (2) our conversion to a checkpoint at --tp,
// (3) our export back to HF. Prints GB/s of each and the ratios.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <random>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/flags.h"
#include "common/status_macros.h"
#include "model/checkpoint.h"
#include "model/convert.h"
#include "model/hf_mapping.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Gemma 3 4B (google/gemma-3-4b-it) shapes, layers and vocab scaled.
std::string Config(double scale) {
  auto layers = [&](int n) {
    return std::max(1, static_cast<int>(std::lround(n * scale)));
  };
  nlohmann::json c = {
      {"architectures", {"Gemma3ForConditionalGeneration"}},
      {"model_type", "gemma3"},
      {"mm_tokens_per_image", 256},
      {"tie_word_embeddings", true},
      {"text_config",
       {{"model_type", "gemma3_text"},
        {"hidden_size", 2560},
        {"intermediate_size", 10240},
        {"num_hidden_layers", layers(34)},
        {"num_attention_heads", 8},
        {"num_key_value_heads", 4},
        {"head_dim", 256},
        {"vocab_size", std::max<int64_t>(1024, std::lround(262208 * scale))}}},
      {"vision_config",
       {{"model_type", "siglip_vision_model"},
        {"hidden_size", 1152},
        {"intermediate_size", 4304},
        {"num_hidden_layers", layers(27)},
        {"num_attention_heads", 16},
        {"image_size", 896},
        {"patch_size", 14},
        {"vision_use_head", false}}},
  };
  return c.dump(2);
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::InternalError(path + ": cannot create");
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  return absl::OkStatus();
}

// Writes the synthetic HF folder in ~4 GB files with an index; returns bytes.
absl::StatusOr<uint64_t> WriteSyntheticHf(const std::string& dir,
                                          double scale) {
  GEMMA_RETURN_IF_ERROR(MakeDirs(dir));
  const std::string config = Config(scale);
  GEMMA_RETURN_IF_ERROR(WriteText(dir + "/config.json", config));
  GEMMA_ASSIGN_OR_RETURN(HfConfigLite c,
                         ParseHfConfigLite(config, "synthetic config.json"));
  GEMMA_ASSIGN_OR_RETURN(HfMapping m, BuildHfMapping(c));
  const uint64_t max_file = 4ull << 30;
  std::vector<std::vector<const HfTensorShape*>> files(1);
  uint64_t in_file = 0, total = 0;
  for (const HfTensorShape& t : m.hf_tensors) {
    uint64_t bytes = 2;
    for (int64_t d : t.shape) bytes *= d;
    if (!files.back().empty() && in_file + bytes > max_file) {
      files.emplace_back();
      in_file = 0;
    }
    files.back().push_back(&t);
    in_file += bytes;
    total += bytes;
  }
  nlohmann::json weight_map;
  std::mt19937_64 rng(1);
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string name =
        absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, files.size());
    SafetensorsWriter w;
    w.SetMetadata({{"format", "pt"}});
    for (const HfTensorShape* t : files[i]) {
      weight_map[t->hf_name] = name;
      uint64_t bytes = 2;
      for (int64_t d : t->shape) bytes *= d;
      GEMMA_RETURN_IF_ERROR(w.Add(
          t->hf_name, DType::kBF16, t->shape, [&rng, bytes](uint8_t* dst) {
            // Random bf16 values of moderate magnitude (exponent kept in
            // range).
            uint64_t* p = reinterpret_cast<uint64_t*>(dst);
            for (uint64_t k = 0; k < bytes / 8; ++k)
              p[k] = rng() & 0xBF7FBF7FBF7FBF7Full;
            return absl::OkStatus();
          }));
    }
    GEMMA_RETURN_IF_ERROR(w.Write(dir + "/" + name));
  }
  nlohmann::json index = {{"metadata", {{"total_size", total}}},
                          {"weight_map", weight_map}};
  GEMMA_RETURN_IF_ERROR(
      WriteText(dir + "/model.safetensors.index.json", index.dump(2)));
  return total;
}

// cp of every .safetensors file of `from` into `to`: read()/write() with a
// 4 MiB buffer, then fsync, as a baseline for moving the same bytes.
absl::StatusOr<uint64_t> PlainCopy(const std::string& from,
                                   const std::string& to) {
  GEMMA_RETURN_IF_ERROR(MakeDirs(to));
  nlohmann::json index;
  {
    FILE* f =
        std::fopen((from + "/model.safetensors.index.json").c_str(), "rb");
    if (f == nullptr) return absl::NotFoundError(from + ": no index");
    index = nlohmann::json::parse(f);
    std::fclose(f);
  }
  std::set<std::string> names;
  for (const auto& [k, v] : index["weight_map"].items())
    names.insert(v.get<std::string>());
  std::vector<char> buf(4 << 20);
  uint64_t total = 0;
  for (const std::string& n : names) {
    int in = ::open((from + "/" + n).c_str(), O_RDONLY);
    int out =
        ::open((to + "/" + n).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0) return absl::InternalError("cannot open " + n);
    ssize_t r;
    while ((r = ::read(in, buf.data(), buf.size())) > 0) {
      if (::write(out, buf.data(), r) != r)
        return absl::InternalError("short write " + n);
      total += r;
    }
    ::fsync(out);
    ::close(in);
    ::close(out);
  }
  return total;
}

int Main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  double scale = 1.0;
  std::string dir = "/tmp";
  int tp = 1;
  bool keep = false;
  FlagSet flags("convert_bench",
                "Times HF -> checkpoint conversion against a plain copy.");
  flags.Double("scale", &scale,
               "fraction of Gemma-3-4B's layers and vocab (1 = ~8.6 GB)");
  flags.String("dir", &dir, "where to write the temporary folders").Meta("DIR");
  flags.Int("tp", &tp, "TP size of the checkpoint");
  flags.Bool("keep", &keep, "keep the temporary folders");
  if (auto exit_code = flags.ParseOrExit(argc, argv)) return *exit_code;
  if (scale <= 0 || scale > 1)
    return flags.UsageError("--scale must be in (0, 1]");
  const std::string root = absl::StrCat(dir, "/convert_bench.", ::getpid());
  auto fail = [&](const absl::Status& s) {
    std::cerr << "convert_bench: " << s.message() << "\n";
    (void)RemoveTree(root);
    return 1;
  };
  auto t0 = Clock::now();
  auto bytes = WriteSyntheticHf(root + "/hf", scale);
  if (!bytes.ok()) return fail(bytes.status());
  std::printf("synthetic HF folder: %.2f GB in %.1f s\n", *bytes / 1e9,
              Seconds(t0));

  // Each phase starts with no dirty pages pending; the copy runs before and
  // after the conversions and its faster run counts.
  double copy_s = 1e30;
  absl::StatusOr<uint64_t> copied;
  auto time_copy = [&]() -> absl::Status {
    ::sync();
    const auto c0 = Clock::now();
    copied = PlainCopy(root + "/hf", root + "/copy");
    if (!copied.ok()) return copied.status();
    copy_s = std::min(copy_s, Seconds(c0));
    return RemoveTree(root + "/copy");
  };
  if (absl::Status s = time_copy(); !s.ok()) return fail(s);

  ConvertOptions opt;
  opt.tp = tp;
  ::sync();
  auto in = ConvertHfToCheckpoint(root + "/hf", root + "/ckpt", opt);
  if (!in.ok()) return fail(in.status());
  ::sync();
  auto out = ConvertCheckpointToHf(root + "/ckpt", root + "/hf_out", opt);
  if (!out.ok()) return fail(out.status());
  if (absl::Status s = time_copy(); !s.ok()) return fail(s);

  const double copy_gbs = *copied / 1e9 / copy_s;
  const double in_gbs = in->bytes / 1e9 / in->seconds;
  const double out_gbs = out->bytes / 1e9 / out->seconds;
  std::printf(
      "plain copy (read/write + fsync): %.2f GB in %.2f s = %.2f GB/s\n",
      *copied / 1e9, copy_s, copy_gbs);
  std::printf(
      "HF -> ours (tp=%d):              %.2f GB in %.2f s = %.2f GB/s (%.2fx "
      "copy)\n",
      tp, in->bytes / 1e9, in->seconds, in_gbs, in_gbs / copy_gbs);
  std::printf(
      "ours -> HF (verify crc32c):      %.2f GB in %.2f s = %.2f GB/s (%.2fx "
      "copy)\n",
      out->bytes / 1e9, out->seconds, out_gbs, out_gbs / copy_gbs);
  if (!keep) (void)RemoveTree(root);
  return 0;
}

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) { return gemma::Main(argc, argv); }
