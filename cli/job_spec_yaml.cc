#include "cli/job_spec_yaml.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace gemma {
namespace {

namespace pb = ::google::protobuf;

class Converter {
 public:
  explicit Converter(std::string source) : source_(std::move(source)) {}

  absl::Status Message(const YAML::Node& node, pb::Message* msg,
                       const std::string& path) {
    if (node.IsNull()) return absl::OkStatus();
    if (!node.IsMap())
      return Err(path.empty() ? "(top level)" : path, "expected a mapping");
    const pb::Descriptor* d = msg->GetDescriptor();
    for (const auto& kv : node) {
      std::string key;
      try {
        key = kv.first.as<std::string>();
      } catch (const YAML::Exception&) {
        return Err(path, "keys must be strings");
      }
      const std::string here =
          path.empty() ? key : absl::StrCat(path, ".", key);
      const pb::FieldDescriptor* f = d->FindFieldByName(key);
      if (f == nullptr) {
        std::vector<std::string> known;
        for (int i = 0; i < d->field_count(); ++i)
          known.push_back(d->field(i)->name());
        return Err(here, absl::StrCat("unknown key (known: ",
                                      absl::StrJoin(known, ", "), ")"));
      }
      if (absl::Status s = Field(kv.second, msg, f, here); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Err(const std::string& path, const std::string& what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": ", path, ": ", what));
  }

  absl::Status Field(const YAML::Node& node, pb::Message* msg,
                     const pb::FieldDescriptor* f, const std::string& path) {
    const pb::Reflection* r = msg->GetReflection();
    if (f->is_map()) {
      if (node.IsNull()) return absl::OkStatus();
      if (!node.IsMap()) return Err(path, "expected a mapping");
      const pb::FieldDescriptor* kf = f->message_type()->FindFieldByName("key");
      const pb::FieldDescriptor* vf =
          f->message_type()->FindFieldByName("value");
      for (const auto& kv : node) {
        pb::Message* entry = r->AddMessage(msg, f);
        const std::string k = kv.first.as<std::string>();
        if (absl::Status s = Scalar(kv.first, entry, kf, path); !s.ok())
          return s;
        if (absl::Status s =
                Scalar(kv.second, entry, vf, absl::StrCat(path, ".", k));
            !s.ok()) {
          return s;
        }
      }
      return absl::OkStatus();
    }
    if (f->is_repeated()) {
      if (node.IsNull()) return absl::OkStatus();
      if (!node.IsSequence()) return Err(path, "expected a list");
      for (size_t i = 0; i < node.size(); ++i) {
        const std::string here = absl::StrCat(path, "[", i, "]");
        if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
          if (absl::Status s = Message(node[i], r->AddMessage(msg, f), here);
              !s.ok())
            return s;
        } else if (absl::Status s = Scalar(node[i], msg, f, here); !s.ok()) {
          return s;
        }
      }
      return absl::OkStatus();
    }
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      return Message(node, r->MutableMessage(msg, f), path);
    }
    return Scalar(node, msg, f, path);
  }

  // Sets (or adds, for repeated fields) one scalar value.
  absl::Status Scalar(const YAML::Node& node, pb::Message* msg,
                      const pb::FieldDescriptor* f, const std::string& path) {
    if (!node.IsScalar()) return Err(path, "expected a single value");
    const std::string v = node.Scalar();
    const pb::Reflection* r = msg->GetReflection();
    const bool rep = f->is_repeated();
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32: {
        int32_t x;
        if (!absl::SimpleAtoi(v, &x))
          return Err(path, absl::StrCat("expected an integer, got '", v, "'"));
        rep ? r->AddInt32(msg, f, x) : r->SetInt32(msg, f, x);
        break;
      }
      case pb::FieldDescriptor::CPPTYPE_INT64: {
        int64_t x;
        if (!absl::SimpleAtoi(v, &x))
          return Err(path, absl::StrCat("expected an integer, got '", v, "'"));
        rep ? r->AddInt64(msg, f, x) : r->SetInt64(msg, f, x);
        break;
      }
      case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
        double x;
        if (!absl::SimpleAtod(v, &x))
          return Err(path, absl::StrCat("expected a number, got '", v, "'"));
        rep ? r->AddDouble(msg, f, x) : r->SetDouble(msg, f, x);
        break;
      }
      case pb::FieldDescriptor::CPPTYPE_BOOL: {
        const std::string l = absl::AsciiStrToLower(v);
        if (l != "true" && l != "false") {
          return Err(path,
                     absl::StrCat("expected true or false, got '", v, "'"));
        }
        rep ? r->AddBool(msg, f, l == "true") : r->SetBool(msg, f, l == "true");
        break;
      }
      case pb::FieldDescriptor::CPPTYPE_STRING:
        rep ? r->AddString(msg, f, v) : r->SetString(msg, f, v);
        break;
      case pb::FieldDescriptor::CPPTYPE_ENUM: {
        const pb::EnumValueDescriptor* e = EnumValue(f->enum_type(), v);
        if (e == nullptr) {
          std::vector<std::string> names;
          for (int i = 1; i < f->enum_type()->value_count(); ++i) {
            names.push_back(ShortName(f->enum_type()->value(i)));
          }
          return Err(path, absl::StrCat("'", v, "' is not one of ",
                                        absl::StrJoin(names, ", ")));
        }
        rep ? r->AddEnum(msg, f, e) : r->SetEnum(msg, f, e);
        break;
      }
      default:
        return Err(path, "unsupported field type");
    }
    return absl::OkStatus();
  }

  static std::string ShortName(const pb::EnumValueDescriptor* e) {
    // JOB_KIND_SFT -> sft: drop the longest prefix shared by all values.
    const pb::EnumDescriptor* t = e->type();
    std::string prefix = t->value(0)->name();
    prefix = prefix.substr(0, prefix.rfind('_') + 1);  // "JOB_KIND_"
    std::string n = e->name();
    if (n.rfind(prefix, 0) == 0) n = n.substr(prefix.size());
    return absl::AsciiStrToLower(n);
  }

  static const pb::EnumValueDescriptor* EnumValue(const pb::EnumDescriptor* t,
                                                  const std::string& v) {
    const std::string want = absl::AsciiStrToLower(v);
    for (int i = 1; i < t->value_count(); ++i) {
      if (ShortName(t->value(i)) == want) return t->value(i);
    }
    return nullptr;
  }

  std::string source_;
};

absl::Status ApplyOverride(YAML::Node root, const std::string& kv) {
  const size_t eq = kv.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--set ", kv, ": expected KEY.PATH=VALUE"));
  }
  const std::vector<std::string> keys = absl::StrSplit(kv.substr(0, eq), '.');
  YAML::Node value;
  try {
    value = YAML::Load(kv.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("--set ", kv, ": ", e.msg));
  }
  // yaml-cpp nodes are handles: walking with operator[] on copies mutates root.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    YAML::Node next = chain.back()[keys[i]];
    if (next.IsDefined() && !next.IsNull() && !next.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--set ", kv, ": '", keys[i], "' is not a mapping"));
    }
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[keys[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[keys[i]];
    }
    chain.push_back(next);
  }
  chain.back()[keys.back()] = value;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<gemma::v1::JobSpec> ParseJobSpecYaml(
    const std::string& text, const std::string& source,
    const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
  if (!root.IsDefined() || root.IsNull())
    root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a mapping of JobSpec keys"));
  }
  for (const auto& kv : overrides) {
    if (absl::Status s = ApplyOverride(root, kv); !s.ok()) return s;
  }
  gemma::v1::JobSpec spec;
  Converter conv(source);
  if (absl::Status s = conv.Message(root, &spec, ""); !s.ok()) return s;
  return spec;
}

absl::StatusOr<gemma::v1::JobSpec> LoadJobSpecFile(
    const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in)
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot read (missing file?)"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseJobSpecYaml(ss.str(), path, overrides);
}

}  // namespace gemma
