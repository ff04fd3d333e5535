#include "model/json_object_reader.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace gemma {

using nlohmann::json;

JsonObjectReader::JsonObjectReader(const json& obj, std::string_view source,
                                   std::string path)
    : obj_(obj), source_(source), path_(std::move(path)) {}

std::string JsonObjectReader::KeyPath(std::string_view key) const {
  return path_.empty() ? std::string(key)
                       : absl::StrCat(path_, ".", std::string(key));
}

absl::Status JsonObjectReader::Error(std::string_view key,
                                     std::string_view what) const {
  return absl::InvalidArgumentError(
      absl::StrCat(source_, ": ", KeyPath(key), ": ", std::string(what)));
}

bool JsonObjectReader::Has(std::string_view key) const {
  auto it = obj_.find(std::string(key));
  return it != obj_.end() && !it->is_null();
}

bool JsonObjectReader::IsNull(std::string_view key) const {
  auto it = obj_.find(std::string(key));
  return it != obj_.end() && it->is_null();
}

const json& JsonObjectReader::Get(std::string_view key) const {
  return obj_.at(std::string(key));
}

absl::Status JsonObjectReader::Int(std::string_view key, int64_t* out) const {
  if (!Has(key)) return absl::OkStatus();
  const json& v = Get(key);
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
  } else if (v.is_number_float() &&
             std::floor(v.get<double>()) == v.get<double>()) {
    *out = static_cast<int64_t>(v.get<double>());
  } else {
    return Error(key, absl::StrCat("expected an integer, got ", v.dump()));
  }
  return absl::OkStatus();
}

absl::Status JsonObjectReader::Double(std::string_view key, double* out) const {
  if (!Has(key)) return absl::OkStatus();
  const json& v = Get(key);
  if (!v.is_number()) {
    return Error(key, absl::StrCat("expected a number, got ", v.dump()));
  }
  *out = v.get<double>();
  return absl::OkStatus();
}

absl::Status JsonObjectReader::OptDouble(std::string_view key,
                                         std::optional<double>* out) const {
  if (!Has(key)) return absl::OkStatus();
  double d = 0;
  GEMMA_RETURN_IF_ERROR(Double(key, &d));
  *out = d;
  return absl::OkStatus();
}

absl::Status JsonObjectReader::String(std::string_view key,
                                      std::string* out) const {
  if (!Has(key)) return absl::OkStatus();
  const json& v = Get(key);
  if (!v.is_string()) {
    return Error(key, absl::StrCat("expected a string, got ", v.dump()));
  }
  *out = v.get<std::string>();
  return absl::OkStatus();
}

absl::Status JsonObjectReader::Bool(std::string_view key, bool* out) const {
  if (!Has(key)) return absl::OkStatus();
  const json& v = Get(key);
  if (!v.is_boolean()) {
    return Error(key, absl::StrCat("expected true or false, got ", v.dump()));
  }
  *out = v.get<bool>();
  return absl::OkStatus();
}

absl::Status JsonObjectReader::IntList(std::string_view key,
                                       std::vector<int64_t>* out) const {
  if (!Has(key)) return absl::OkStatus();
  const json& v = Get(key);
  if (v.is_number_integer()) {
    *out = {v.get<int64_t>()};
    return absl::OkStatus();
  }
  if (!v.is_array()) {
    return Error(key, "expected an integer or a list of integers");
  }
  out->clear();
  for (const json& e : v) {
    if (!e.is_number_integer()) {
      return Error(key, "expected a list of integers");
    }
    out->push_back(e.get<int64_t>());
  }
  return absl::OkStatus();
}

absl::StatusOr<JsonObjectReader> JsonObjectReader::Object(
    std::string_view key) const {
  const json& v = Get(key);
  if (!v.is_object()) return Error(key, "expected an object");
  return JsonObjectReader(v, source_, KeyPath(key));
}

absl::StatusOr<json> ParseJsonText(std::string_view text,
                                   std::string_view source) {
  json doc = json::parse(text.begin(), text.end(), nullptr,
                         /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": not valid JSON"));
  }
  return doc;
}

}  // namespace gemma
