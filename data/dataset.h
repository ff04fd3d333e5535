// Readers that turn files on disk into Conversations.
//
// JSONL: one conversation per line, Hugging Face's messages shape:
//   {"messages": [{"role": "user", "content": [{"type": "image", "path":
//   "imgs/a.png"},
//                                              {"type": "text", "text":
//                                              "Describe this image."}]},
//                 {"role": "assistant", "content": [{"type": "text", "text":
//                 "..."}]}]}
// A bare list of messages per line is accepted too, and `content` may be a
// plain string. Image paths are relative to the JSONL file's folder (absolute
// paths are kept); "image", "url" or "path" name the file.
//
// CORD-v2: receipts with ground-truth JSON, in either layout:
//   DIR/metadata.jsonl lines {"file_name": "x.png", "ground_truth":
//   "{\"gt_parse\": {...}}"}
//     (Donut's / HF imagefolder export), or
//   DIR/image/NAME.{png,jpg} beside DIR/json/NAME.json holding {"gt_parse":
//   {...}} (the
//     original release).
// Each receipt becomes: user [image, "Describe this image."], assistant
// [CordTarget(gt_parse)].
#ifndef GEMMA_DATA_DATASET_H_
#define GEMMA_DATA_DATASET_H_

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/chat.h"

namespace gemma {

struct ReadOptions {
  // Off: the first bad record is an error naming file and line. On: bad
  // records are skipped and counted in ReadStats.
  bool skip_bad = false;
  // Check at read time that every image file exists.
  bool check_images_exist = true;
};

struct ReadStats {
  int64_t read = 0;
  int64_t skipped = 0;
  std::vector<std::string> skip_reasons;  // the first few, "file:line: why"
};

absl::StatusOr<std::vector<Conversation>> ReadJsonlConversations(
    const std::string& path, const ReadOptions& options = {},
    ReadStats* stats = nullptr);

// Parses one conversation (the JSON of one JSONL line); `base_dir` resolves
// relative image paths, `source` ("file:line") goes into errors.
absl::StatusOr<Conversation> ParseConversationJson(const nlohmann::json& j,
                                                   const std::string& base_dir,
                                                   const std::string& source);

inline constexpr char kCordPrompt[] = "Describe this image.";

// Donut-style target: a dict becomes <s_key>value</s_key> for each key in
// sorted order (descending when `reverse_keys`, which is what Donut's
// json2token does), nested; a list becomes its items joined by "<sep/>";
// other values their text (numbers as JSON writes them).
std::string CordTarget(const nlohmann::json& value, bool reverse_keys = false);

// The tag pieces CordTarget can produce for this value ("<s_total>",
// "</s_total>", "<sep/>", ...), sorted, for adding to a tokenizer.
std::vector<std::string> CordTagPieces(const nlohmann::json& value);

absl::StatusOr<std::vector<Conversation>> ReadCordDataset(
    const std::string& dir, const ReadOptions& options = {},
    ReadStats* stats = nullptr);

// A folder is read as CORD-v2 (ReadCordDataset), a file as JSONL.
absl::StatusOr<std::vector<Conversation>> ReadDataset(
    const std::string& path, const ReadOptions& options = {},
    ReadStats* stats = nullptr);

}  // namespace gemma

#endif  // GEMMA_DATA_DATASET_H_
