#include "data/batch.h"

#include <torch/torch.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace gemma {
namespace {

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// One row under construction.
struct Row {
  std::vector<int64_t> ids, labels, types, positions;
  std::vector<int32_t> segments;
  std::vector<at::Tensor> images;           // as in Encoded
  std::vector<at::Tensor> image_positions;  // as Encoded::positions
  int num_segments = 0;
  size_t size() const { return ids.size(); }
};

}  // namespace

struct DataLoader::Encoded {
  EncodedChat chat;
  // Gemma 3: each [1 + crops, 3, S, S]. Gemma 4: each [1, P, 3 * patch^2].
  std::vector<at::Tensor> images;
  std::vector<at::Tensor> positions;  // Gemma 4: each [1, P, 2]
};

namespace {

// A Gemma 4 image's patches and positions as [1, P, D] / [1, P, 2] tensors.
std::pair<at::Tensor, at::Tensor> Gemma4Tensors(Gemma4ImagePatches& p) {
  const int64_t n = p.max_patches;
  at::Tensor pixels =
      torch::from_blob(p.pixel_values.data(), {1, n, int64_t{p.patch_dim}},
                       torch::kFloat32)
          .clone();
  at::Tensor positions =
      torch::from_blob(p.positions.data(), {1, n, 2}, torch::kInt64).clone();
  return {pixels, positions};
}

}  // namespace

std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch,
                                bool shuffle) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  if (!shuffle) return order;
  uint64_t state =
      seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(epoch + 1));
  for (int64_t i = n - 1; i > 0; --i) {
    // Unbiased draw in [0, i] by rejection.
    const uint64_t bound = static_cast<uint64_t>(i) + 1;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t r;
    do {
      r = SplitMix64(&state);
    } while (r >= limit);
    std::swap(order[i], order[static_cast<int64_t>(r % bound)]);
  }
  return order;
}

DataLoader::DataLoader(std::vector<Conversation> data,
                       const Tokenizer* tokenizer, BatchOptions options)
    : data_(std::move(data)),
      tokenizer_(tokenizer),
      options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<DataLoader>> DataLoader::Create(
    std::vector<Conversation> data, const Tokenizer* tokenizer,
    BatchOptions options) {
  if (data.empty())
    return absl::InvalidArgumentError("DataLoader: the dataset is empty");
  if (tokenizer == nullptr)
    return absl::InvalidArgumentError("DataLoader: no tokenizer");
  if (options.batch_size < 1)
    return absl::InvalidArgumentError("DataLoader: batch_size must be >= 1");
  if (options.seq_len < 2)
    return absl::InvalidArgumentError("DataLoader: seq_len must be >= 2");
  if (options.pad_to_multiple < 0)
    return absl::InvalidArgumentError(
        "DataLoader: pad_to_multiple must be >= 0");
  if (absl::Status s = CheckChatTokens(*tokenizer, options.chat.format);
      !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("DataLoader: ", s.message()));
  }
  if (options.chat.format == ChatFormat::kGemma4) {
    if (absl::Status s = ValidateGemma4ImageOptions(options.gemma4_image);
        !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("DataLoader: gemma4_image: ", s.message()));
    }
  }
  return std::unique_ptr<DataLoader>(
      new DataLoader(std::move(data), tokenizer, std::move(options)));
}

const std::vector<int64_t>& DataLoader::Order(int64_t epoch) {
  if (order_epoch_ != epoch) {
    order_ = EpochOrder(size(), options_.seed, epoch, options_.shuffle);
    order_epoch_ = epoch;
  }
  return order_;
}

void DataLoader::Advance() {
  if (++pos_.index >= size()) {
    pos_.index = 0;
    ++pos_.epoch;
  }
}

absl::Status DataLoader::Seek(LoaderPosition pos) {
  if (pos.epoch < 0 || pos.index < 0 || pos.index >= size()) {
    return absl::OutOfRangeError(
        absl::StrCat("DataLoader::Seek: position (", pos.epoch, ", ", pos.index,
                     ") outside a dataset of ", size()));
  }
  pos_ = pos;
  return absl::OkStatus();
}

absl::StatusOr<std::optional<DataLoader::Encoded>> DataLoader::EncodeAt(
    LoaderPosition pos) {
  const Conversation& conv = data_[Order(pos.epoch)[pos.index]];
  absl::StatusOr<Encoded> enc = [&]() -> absl::StatusOr<Encoded> {
    Encoded out;
    if (options_.text_only && conv.num_images() > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          conv.source, ": has ", conv.num_images(),
          " image(s), but the model is text-only (no vision tower)"));
    }
    if (options_.pack && conv.num_images() > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          conv.source,
          ": packing supports text-only conversations; this one has images"));
    }
    const bool gemma4 = options_.chat.format == ChatFormat::kGemma4;
    std::vector<ChatImageInfo> infos;
    for (const std::string& path : conv.image_paths()) {
      absl::StatusOr<RgbImage> image = DecodeImageFile(path);
      if (!image.ok()) {
        return absl::Status(
            image.status().code(),
            absl::StrCat(conv.source, ": ", image.status().message()));
      }
      ChatImageInfo info;
      if (gemma4) {
        absl::StatusOr<Gemma4ImagePatches> patches =
            Gemma4PreprocessImage(*image, options_.gemma4_image);
        if (!patches.ok()) {
          return absl::Status(patches.status().code(),
                              absl::StrCat(conv.source, ": ", path, ": ",
                                           patches.status().message()));
        }
        info.soft_tokens = patches->num_soft_tokens;
        auto [pixels, positions] = Gemma4Tensors(*patches);
        out.images.push_back(std::move(pixels));
        out.positions.push_back(std::move(positions));
      } else {
        at::Tensor t = PreprocessImage(*image, options_.image);
        if (options_.image.do_pan_and_scan)
          info.crops = static_cast<int>(t.size(0)) - 1;
        out.images.push_back(std::move(t));
      }
      infos.push_back(info);
    }
    GEMMA_ASSIGN_OR_RETURN(out.chat,
                           EncodeChat(*tokenizer_, conv, options_.chat, infos));
    if (static_cast<int>(out.chat.input_ids.size()) > options_.seq_len) {
      return absl::OutOfRangeError(
          absl::StrCat(conv.source, ": ", out.chat.input_ids.size(),
                       " tokens, longer than seq_len ", options_.seq_len));
    }
    return out;
  }();
  if (enc.ok()) return std::optional<Encoded>(*std::move(enc));
  if (!options_.skip_bad) return enc.status();
  ++skipped_;
  GEMMA_LOG(WARNING) << "skipping conversation: " << enc.status().message();
  return std::optional<Encoded>();
}

absl::StatusOr<Batch> DataLoader::Next() {
  try {
    std::vector<Row> rows;
    Row current;
    int64_t skips_in_a_row = 0;
    auto append = [&](Row& row, Encoded& e) {
      const int segment = ++row.num_segments;
      for (size_t i = 0; i < e.chat.input_ids.size(); ++i) {
        row.ids.push_back(e.chat.input_ids[i]);
        row.labels.push_back(e.chat.labels[i]);
        row.types.push_back(e.chat.token_type_ids[i]);
        row.segments.push_back(segment);
        row.positions.push_back(static_cast<int64_t>(i));
      }
      for (at::Tensor& t : e.images) row.images.push_back(std::move(t));
      for (at::Tensor& t : e.positions)
        row.image_positions.push_back(std::move(t));
    };
    while (static_cast<int>(rows.size()) < options_.batch_size) {
      GEMMA_ASSIGN_OR_RETURN(std::optional<Encoded> enc, EncodeAt(pos_));
      if (!enc.has_value()) {
        if (++skips_in_a_row > size()) {
          return absl::FailedPreconditionError(
              "DataLoader: every conversation in the dataset is bad");
        }
        Advance();
        continue;
      }
      skips_in_a_row = 0;
      if (!options_.pack) {
        Row row;
        append(row, *enc);
        rows.push_back(std::move(row));
        Advance();
        continue;
      }
      if (current.size() + enc->chat.input_ids.size() >
          static_cast<size_t>(options_.seq_len)) {
        rows.push_back(std::move(current));
        current = Row();
        continue;  // this conversation starts the next row (or the next batch)
      }
      append(current, *enc);
      Advance();
    }

    Batch batch;
    size_t longest = 0;
    for (const Row& r : rows) longest = std::max(longest, r.size());
    int64_t t = static_cast<int64_t>(longest);
    if (options_.pad_to_multiple > 0)
      t = (t + options_.pad_to_multiple - 1) / options_.pad_to_multiple *
          options_.pad_to_multiple;
    const int64_t b = static_cast<int64_t>(rows.size());
    const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    batch.input_ids = torch::full({b, t}, tokenizer_->special().pad, i64);
    batch.labels = torch::full({b, t}, kIgnoreIndex, i64);
    batch.attention_mask = torch::zeros({b, t}, i64);
    batch.segment_ids =
        torch::zeros({b, t}, torch::TensorOptions().dtype(torch::kInt32));
    batch.position_ids = torch::zeros({b, t}, i64);
    batch.token_type_ids = torch::zeros({b, t}, i64);
    std::vector<at::Tensor> images, image_positions;
    for (int64_t r = 0; r < b; ++r) {
      const Row& row = rows[r];
      const int64_t n = static_cast<int64_t>(row.size());
      auto copy_row = [&](at::Tensor& dst, const auto& src) {
        using T = typename std::decay_t<decltype(src)>::value_type;
        std::copy(src.begin(), src.end(), dst[r].template data_ptr<T>());
      };
      copy_row(batch.input_ids, row.ids);
      copy_row(batch.labels, row.labels);
      copy_row(batch.token_type_ids, row.types);
      copy_row(batch.position_ids, row.positions);
      copy_row(batch.segment_ids, row.segments);
      batch.attention_mask[r].narrow(0, 0, n).fill_(1);
      int count = 0;
      for (const at::Tensor& img : row.images) {
        images.push_back(img);
        count += static_cast<int>(img.size(0));
      }
      for (const at::Tensor& pos : row.image_positions)
        image_positions.push_back(pos);
      batch.images_per_row.push_back(count);
      batch.num_conversations += row.num_segments;
    }
    if (options_.chat.format == ChatFormat::kGemma4) {
      const Gemma4ImageOptions& g = options_.gemma4_image;
      const int64_t p = Gemma4MaxPatches(g);
      batch.pixel_values =
          images.empty()
              ? torch::zeros({0, p, int64_t{3} * g.patch_size * g.patch_size})
              : torch::cat(images);
      batch.image_positions = image_positions.empty()
                                  ? torch::zeros({0, p, 2}, i64)
                                  : torch::cat(image_positions);
    } else {
      const int s = options_.image.image_size;
      batch.pixel_values =
          images.empty() ? torch::zeros({0, 3, s, s}) : torch::cat(images);
    }
    return batch;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("DataLoader::Next: ", e.what_without_backtrace()));
  }
}

}  // namespace gemma
