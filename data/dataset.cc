#include "data/dataset.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace gemma {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr size_t kMaxReasons = 20;

std::string ResolvePath(const std::string& base_dir, const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  return (fs::path(base_dir) / p).lexically_normal().string();
}

// InvalidArgument "<what> is not an object" unless v is one.
absl::Status CheckObject(const json& v, const std::string& what) {
  if (v.is_object()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " is not an object"));
}

// obj[key] when it is a string, else InvalidArgument "<what> has no string
// \"<key>\"". obj is an object.
absl::StatusOr<std::string> StringField(const json& obj, const char* key,
                                        const std::string& what) {
  const auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has no string \"", key, "\""));
  }
  return it->get<std::string>();
}

absl::StatusOr<ContentPart> ParsePart(const json& part,
                                      const std::string& base_dir,
                                      const std::string& where) {
  const std::string item = absl::StrCat(where, ": content item");
  GEMMA_RETURN_IF_ERROR(CheckObject(part, item));
  GEMMA_ASSIGN_OR_RETURN(const std::string type,
                         StringField(part, "type", item));
  ContentPart out;
  if (type == "text") {
    GEMMA_ASSIGN_OR_RETURN(
        out.text,
        StringField(part, "text", absl::StrCat(where, ": text item")));
    return out;
  }
  if (type == "image") {
    out.type = ContentPart::Type::kImage;
    for (const char* key : {"path", "image", "url"}) {
      const auto it = part.find(key);
      if (it != part.end() && it->is_string()) {
        out.image_path = ResolvePath(base_dir, it->get<std::string>());
        break;
      }
    }
    if (out.image_path.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": image item has no \"path\""));
    }
    return out;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      where, ": content item type \"", type, "\" is not text or image"));
}

absl::Status CheckImages(const Conversation& conv) {
  for (const std::string& p : conv.image_paths()) {
    if (!fs::exists(p))
      return absl::NotFoundError(
          absl::StrCat(conv.source, ": image not found: ", p));
  }
  return absl::OkStatus();
}

// Appends a record read to `out` (counted as read), or handles a bad one: its
// error, unless options.skip_bad (then a counted skip, its reason kept).
absl::Status Keep(absl::StatusOr<Conversation> conv, const ReadOptions& options,
                  ReadStats* stats, std::vector<Conversation>* out) {
  if (conv.ok()) {
    out->push_back(*std::move(conv));
    if (stats != nullptr) ++stats->read;
    return absl::OkStatus();
  }
  if (!options.skip_bad) return conv.status();
  if (stats != nullptr) {
    ++stats->skipped;
    if (stats->skip_reasons.size() < kMaxReasons)
      stats->skip_reasons.emplace_back(conv.status().message());
  }
  return absl::OkStatus();
}

// The records of a JSONL file, one per non-blank line: parse(line, where) with
// where = "path:N", each kept or rejected by Keep. NotFound with `open_error`
// when the file cannot be opened, DataLoss on a read error.
template <typename Parse>
absl::StatusOr<std::vector<Conversation>> ReadJsonlRecords(
    const std::string& path, const std::string& open_error, Parse parse,
    const ReadOptions& options, ReadStats* stats) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(open_error);
  std::vector<Conversation> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = absl::StrCat(path, ":", n);
    GEMMA_RETURN_IF_ERROR(Keep(parse(line, where), options, stats, &out));
  }
  if (in.bad())
    return absl::DataLossError(absl::StrCat("error reading ", path));
  return out;
}

void CollectTags(const json& v, std::set<std::string>* tags) {
  if (v.is_object()) {
    for (auto it = v.begin(); it != v.end(); ++it) {
      tags->insert(absl::StrCat("<s_", it.key(), ">"));
      tags->insert(absl::StrCat("</s_", it.key(), ">"));
      CollectTags(it.value(), tags);
    }
  } else if (v.is_array()) {
    if (v.size() > 1) tags->insert("<sep/>");
    for (const json& item : v) CollectTags(item, tags);
  }
}

Conversation CordConversation(const std::string& image, const json& gt_parse,
                              const std::string& source) {
  Conversation conv;
  conv.source = source;
  Message user{"user", {}};
  ContentPart img;
  img.type = ContentPart::Type::kImage;
  img.image_path = image;
  user.content.push_back(img);
  ContentPart prompt;
  prompt.text = kCordPrompt;
  user.content.push_back(prompt);
  Message model{"assistant", {}};
  ContentPart target;
  target.text = CordTarget(gt_parse);
  model.content.push_back(target);
  conv.messages = {user, model};
  return conv;
}

// The gt_parse of a ground-truth object ({"gt_parse": ...} or {"gt_parses":
// [...]}: the first).
absl::StatusOr<json> GtParse(const json& gt, const std::string& where) {
  if (gt.is_object()) {
    if (auto it = gt.find("gt_parse"); it != gt.end()) return *it;
    if (auto it = gt.find("gt_parses");
        it != gt.end() && it->is_array() && !it->empty())
      return (*it)[0];
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": ground truth has no \"gt_parse\""));
}

absl::StatusOr<std::vector<Conversation>> ReadCordMetadata(
    const std::string& dir, const ReadOptions& options, ReadStats* stats) {
  const std::string path = (fs::path(dir) / "metadata.jsonl").string();
  const auto parse =
      [&](const std::string& line,
          const std::string& where) -> absl::StatusOr<Conversation> {
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      return absl::InvalidArgumentError(absl::StrCat(where, ": bad JSON"));
    const auto file = j.find("file_name");
    const auto gt = j.find("ground_truth");
    if (file == j.end() || !file->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": no string \"file_name\""));
    }
    if (gt == j.end())
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": no \"ground_truth\""));
    json parsed = *gt;
    if (gt->is_string()) {
      parsed = json::parse(gt->get<std::string>(), nullptr, false);
      if (parsed.is_discarded()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": \"ground_truth\" is not valid JSON"));
      }
    }
    GEMMA_ASSIGN_OR_RETURN(json gt_parse, GtParse(parsed, where));
    Conversation c = CordConversation(
        ResolvePath(dir, file->get<std::string>()), gt_parse, where);
    if (options.check_images_exist) GEMMA_RETURN_IF_ERROR(CheckImages(c));
    return c;
  };
  return ReadJsonlRecords(path, absl::StrCat("cannot open ", path), parse,
                          options, stats);
}

absl::StatusOr<std::vector<Conversation>> ReadCordFolders(
    const std::string& dir, const ReadOptions& options, ReadStats* stats) {
  std::vector<fs::path> jsons;
  for (const auto& e : fs::directory_iterator(fs::path(dir) / "json")) {
    if (e.path().extension() == ".json") jsons.push_back(e.path());
  }
  std::sort(jsons.begin(), jsons.end());
  std::vector<Conversation> out;
  for (const fs::path& jp : jsons) {
    const std::string where = jp.string();
    absl::StatusOr<Conversation> conv = [&]() -> absl::StatusOr<Conversation> {
      std::ifstream in(jp);
      const json j = json::parse(in, nullptr, false);
      if (j.is_discarded())
        return absl::InvalidArgumentError(absl::StrCat(where, ": bad JSON"));
      GEMMA_ASSIGN_OR_RETURN(json gt_parse, GtParse(j, where));
      std::string image;
      for (const char* ext : {".png", ".jpg", ".jpeg"}) {
        const fs::path p = fs::path(dir) / "image" / (jp.stem().string() + ext);
        if (fs::exists(p)) {
          image = p.string();
          break;
        }
      }
      if (image.empty()) {
        return absl::NotFoundError(absl::StrCat(
            where, ": no image/", jp.stem().string(), ".{png,jpg,jpeg}"));
      }
      return CordConversation(image, gt_parse, where);
    }();
    GEMMA_RETURN_IF_ERROR(Keep(std::move(conv), options, stats, &out));
  }
  return out;
}

}  // namespace

absl::StatusOr<Conversation> ParseConversationJson(const json& j,
                                                   const std::string& base_dir,
                                                   const std::string& source) {
  const json* messages = &j;
  if (j.is_object()) {
    const auto it = j.find("messages");
    if (it == j.end())
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": no \"messages\""));
    messages = &*it;
  }
  if (!messages->is_array() || messages->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": \"messages\" is not a non-empty list"));
  }
  Conversation conv;
  conv.source = source;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string where = absl::StrCat(source, ": messages[", i, "]");
    GEMMA_RETURN_IF_ERROR(CheckObject(m, where));
    Message msg;
    GEMMA_ASSIGN_OR_RETURN(msg.role, StringField(m, "role", where));
    const auto content = m.find("content");
    if (content == m.end())
      return absl::InvalidArgumentError(
          absl::StrCat(where, " has no \"content\""));
    if (content->is_string()) {
      ContentPart part;
      part.text = content->get<std::string>();
      msg.content.push_back(part);
    } else if (content->is_array()) {
      for (size_t k = 0; k < content->size(); ++k) {
        GEMMA_ASSIGN_OR_RETURN(
            ContentPart part,
            ParsePart((*content)[k], base_dir,
                      absl::StrCat(where, ".content[", k, "]")));
        msg.content.push_back(std::move(part));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".content is neither a string nor a list"));
    }
    conv.messages.push_back(std::move(msg));
  }
  return conv;
}

absl::StatusOr<std::vector<Conversation>> ReadJsonlConversations(
    const std::string& path, const ReadOptions& options, ReadStats* stats) {
  const std::string base_dir = fs::path(path).parent_path().string();
  const auto parse =
      [&](const std::string& line,
          const std::string& where) -> absl::StatusOr<Conversation> {
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded())
      return absl::InvalidArgumentError(absl::StrCat(where, ": bad JSON"));
    GEMMA_ASSIGN_OR_RETURN(Conversation conv,
                           ParseConversationJson(j, base_dir, where));
    if (options.check_images_exist) GEMMA_RETURN_IF_ERROR(CheckImages(conv));
    return conv;
  };
  return ReadJsonlRecords(path, absl::StrCat("cannot open JSONL file ", path),
                          parse, options, stats);
}

std::string CordTarget(const json& value, bool reverse_keys) {
  if (value.is_object()) {
    std::vector<std::string> keys;
    for (auto it = value.begin(); it != value.end(); ++it)
      keys.push_back(it.key());
    std::sort(keys.begin(), keys.end());
    if (reverse_keys) std::reverse(keys.begin(), keys.end());
    std::string out;
    for (const std::string& k : keys) {
      absl::StrAppend(&out, "<s_", k, ">",
                      CordTarget(value.at(k), reverse_keys), "</s_", k, ">");
    }
    return out;
  }
  if (value.is_array()) {
    std::vector<std::string> items;
    for (const json& item : value)
      items.push_back(CordTarget(item, reverse_keys));
    return absl::StrJoin(items, "<sep/>");
  }
  if (value.is_string()) return value.get<std::string>();
  if (value.is_null()) return "";
  return value.dump();
}

std::vector<std::string> CordTagPieces(const json& value) {
  std::set<std::string> tags;
  CollectTags(value, &tags);
  return {tags.begin(), tags.end()};
}

absl::StatusOr<std::vector<Conversation>> ReadCordDataset(
    const std::string& dir, const ReadOptions& options, ReadStats* stats) {
  if (fs::exists(fs::path(dir) / "metadata.jsonl"))
    return ReadCordMetadata(dir, options, stats);
  if (fs::is_directory(fs::path(dir) / "json"))
    return ReadCordFolders(dir, options, stats);
  return absl::NotFoundError(
      absl::StrCat("no CORD dataset at ", dir,
                   ": expected metadata.jsonl or json/ and image/ folders"));
}

absl::StatusOr<std::vector<Conversation>> ReadDataset(
    const std::string& path, const ReadOptions& options, ReadStats* stats) {
  if (fs::is_directory(path)) return ReadCordDataset(path, options, stats);
  return ReadJsonlConversations(path, options, stats);
}

}  // namespace gemma
