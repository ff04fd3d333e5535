#include "cli/local_forward.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/local_model.h"
#include "model/weights.h"
#include "common/flags.h"
#include "common/status_macros.h"
#include "model/config.h"

namespace gemma::cli {
namespace {

struct DTypeInfo {
  const char* name;
  torch::ScalarType type;
  int64_t size;
};
constexpr DTypeInfo kDTypes[] = {{"F32", torch::kFloat, 4},
                                 {"BF16", torch::kBFloat16, 2},
                                 {"F16", torch::kHalf, 2},
                                 {"I64", torch::kLong, 8},
                                 {"I32", torch::kInt, 4}};

}  // namespace

absl::StatusOr<std::map<std::string, at::Tensor>> ReadSafetensors(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                          std::istreambuf_iterator<char>());
  uint64_t header_len = 0;
  if (bytes.size() < 8)
    return absl::InvalidArgumentError(absl::StrCat(path, ": too short"));
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > bytes.size() - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length beyond the file"));
  }
  nlohmann::json header =
      nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + header_len,
                            nullptr, /*allow_exceptions=*/false);
  if (!header.is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad header"));
  const uint64_t data_start = 8 + header_len;
  std::map<std::string, at::Tensor> out;
  for (auto& [name, e] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string dtype = e.value("dtype", "");
    const DTypeInfo* info = nullptr;
    for (const auto& d : kDTypes) {
      if (dtype == d.name) info = &d;
    }
    if (info == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", name, ": unsupported dtype ", dtype));
    }
    auto shape = e.value("shape", std::vector<int64_t>{});
    auto offsets = e.value("data_offsets", std::vector<uint64_t>{});
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    if (offsets.size() != 2 ||
        offsets[1] - offsets[0] != uint64_t(numel * info->size) ||
        data_start + offsets[1] > bytes.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", name, ": bad data_offsets"));
    }
    out[name] = torch::from_blob(bytes.data() + data_start + offsets[0], shape,
                                 torch::TensorOptions().dtype(info->type))
                    .clone();
  }
  return out;
}

absl::Status WriteSafetensors(
    const std::string& path, const std::map<std::string, at::Tensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const DTypeInfo* info = nullptr;
    for (const auto& d : kDTypes) {
      if (t.scalar_type() == d.type) info = &d;
    }
    if (info == nullptr)
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": unsupported dtype"));
    at::Tensor c = t.contiguous().cpu();
    const uint64_t n = c.numel() * info->size;
    header[name] = {{"dtype", info->name},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + n}}};
    offset += n;
    data.push_back(c);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out)
      return absl::PermissionDeniedError(absl::StrCat(tmp, ": cannot create"));
    uint64_t len = h.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const at::Tensor& c : data) {
      out.write(static_cast<const char*>(c.data_ptr()),
                static_cast<std::streamsize>(c.nbytes()));
    }
    if (!out.flush())
      return absl::DataLossError(absl::StrCat(tmp, ": write failed"));
  }
  std::error_code ec;
  if (::rename(tmp.c_str(), path.c_str()) != 0) ec = std::error_code(errno, std::generic_category());
  if (ec)
    return absl::InternalError(
        absl::StrCat(path, ": rename failed: ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<Gemma3Model> LoadLocalModel(const std::string& dir) { return LoadModel(dir); }

int LocalForwardMain(int argc, char** argv) {
  FlagSet flags("gemmactl local forward",
                "Run one forward pass of a local model and write its logits.");
  std::string model_dir, inputs_path, out_path, output = "table";
  flags
      .String("model", &model_dir,
              "model folder: config.json + *.safetensors (our names)")
      .Meta("DIR");
  flags
      .String(
          "inputs", &inputs_path,
          "safetensors with input_ids [B, L] and optionally attention_mask, "
          "pixel_values, token_type_ids")
      .Meta("FILE");
  flags
      .String("out", &out_path,
              "safetensors file to write (\"logits\" [B, L, V] float32)")
      .Meta("FILE");
  flags.String("output", &output, "summary format: table or json")
      .Short('o')
      .Meta("FORMAT");
  flags.Epilog(
      "Example:\n  gemmactl local forward --model ./tiny --inputs "
      "in.safetensors --out logits.safetensors\n");
  if (auto exit_code = flags.ParseOrExit(argc, argv, 3)) return *exit_code;
  if (model_dir.empty() || inputs_path.empty() || out_path.empty())
    return flags.UsageError("--model, --inputs and --out are required");
  torch::NoGradGuard no_grad;
  const auto t0 = std::chrono::steady_clock::now();
  auto model = LoadLocalModel(model_dir);
  if (!model.ok()) {
    std::cerr << "gemmactl local forward: " << model.status().message() << "\n";
    return 1;
  }
  auto tensors = ReadSafetensors(inputs_path);
  if (!tensors.ok()) {
    std::cerr << "gemmactl local forward: " << tensors.status().message()
              << "\n";
    return 1;
  }
  ModelInputs in;
  auto take = [&](const char* key) {
    return tensors->count(key) ? tensors->at(key) : at::Tensor();
  };
  in.input_ids = take("input_ids");
  in.attention_mask = take("attention_mask");
  in.pixel_values = take("pixel_values");
  in.token_type_ids = take("token_type_ids");
  if (!in.input_ids.defined()) {
    std::cerr << "gemmactl local forward: " << inputs_path
              << ": no input_ids tensor\n";
    return 1;
  }
  if (in.pixel_values.defined())
    in.pixel_values = in.pixel_values.to(torch::kFloat);
  const auto t1 = std::chrono::steady_clock::now();
  auto logits = (*model)->Forward(in);
  if (!logits.ok()) {
    std::cerr << "gemmactl local forward: " << logits.status().message()
              << "\n";
    return 1;
  }
  const auto t2 = std::chrono::steady_clock::now();
  absl::Status st =
      WriteSafetensors(out_path, {{"logits", logits->to(torch::kFloat)}});
  if (!st.ok()) {
    std::cerr << "gemmactl local forward: " << st.message() << "\n";
    return 1;
  }
  const double load_s = std::chrono::duration<double>(t1 - t0).count();
  const double fwd_s = std::chrono::duration<double>(t2 - t1).count();
  at::Tensor last = logits->select(1, -1).argmax(-1);
  std::vector<int64_t> next(last.data_ptr<int64_t>(),
                            last.data_ptr<int64_t>() + last.numel());
  if (output == "json") {
    nlohmann::json j = {{"out", out_path},
                        {"shape", logits->sizes().vec()},
                        {"next_token_argmax", next},
                        {"load_seconds", load_s},
                        {"forward_seconds", fwd_s}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << "wrote " << out_path << ": logits ["
              << absl::StrJoin(logits->sizes().vec(), ", ")
              << "], argmax at last position " << absl::StrJoin(next, ",")
              << " (load " << load_s << " s, forward " << fwd_s << " s)\n";
  }
  return 0;
}

}  // namespace gemma::cli
