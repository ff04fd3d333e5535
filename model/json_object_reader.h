// Typed reads of one object of an HF config.json, shared by the Gemma 3
// (model/config.cc) and Gemma 4 (model/gemma4_config.cc) parsers. Every error
// is InvalidArgument and reads "SOURCE: PATH.KEY: what", so it names the file
// and the key path.

#ifndef GEMMA_MODEL_JSON_OBJECT_READER_H_
#define GEMMA_MODEL_JSON_OBJECT_READER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace gemma {

class JsonObjectReader {
 public:
  // `obj` is borrowed and must outlive the reader. `source` names the file;
  // `path` is the dotted key path of `obj` in it ("" for the top level).
  JsonObjectReader(const nlohmann::json& obj, std::string_view source,
                   std::string path);

  // PATH.KEY (KEY at the top level).
  std::string KeyPath(std::string_view key) const;
  // InvalidArgument "SOURCE: PATH.KEY: what".
  absl::Status Error(std::string_view key, std::string_view what) const;
  // Present and not null.
  bool Has(std::string_view key) const;
  // Present and null.
  bool IsNull(std::string_view key) const;
  // The raw value; the key must be present.
  const nlohmann::json& Get(std::string_view key) const;

  // Each reader leaves `*out` unchanged when the key is missing or null, and
  // fails (naming the key path) when the value has the wrong type.
  // An integer (a float with no fraction is accepted).
  absl::Status Int(std::string_view key, int64_t* out) const;
  absl::Status Double(std::string_view key, double* out) const;
  absl::Status OptDouble(std::string_view key,
                         std::optional<double>* out) const;
  absl::Status String(std::string_view key, std::string* out) const;
  absl::Status Bool(std::string_view key, bool* out) const;
  // An integer or a list of integers.
  absl::Status IntList(std::string_view key, std::vector<int64_t>* out) const;
  // A reader of the nested object at `key` (which must be present).
  absl::StatusOr<JsonObjectReader> Object(std::string_view key) const;

  const std::string& source() const { return source_; }

 private:
  const nlohmann::json& obj_;
  std::string source_;
  std::string path_;
};

// Parses `text`, the contents of `source`, as JSON; InvalidArgument
// "SOURCE: not valid JSON" when it is not.
absl::StatusOr<nlohmann::json> ParseJsonText(std::string_view text,
                                             std::string_view source);

}  // namespace gemma

#endif  // GEMMA_MODEL_JSON_OBJECT_READER_H_
