#include "data/chat.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace gemma {
namespace {

// Jinja's `trim` strips Python whitespace; ASCII whitespace covers what our
// inputs carry.
std::string Trim(const std::string& s) {
  return std::string(absl::StripAsciiWhitespace(s));
}

std::string ImageSequence(int n) {
  std::string out = absl::StrCat("\n\n", kStartOfImage);
  out.reserve(out.size() + n * (sizeof(kImageSoftToken) - 1) + 32);
  for (int i = 0; i < n; ++i) out += kImageSoftToken;
  absl::StrAppend(&out, kEndOfImage, "\n\n");
  return out;
}

std::string ExpandedImage(int tokens, int crops) {
  const std::string full = ImageSequence(tokens);
  if (crops <= 0) return full;
  std::string out =
      absl::StrCat("Here is the original image ", full,
                   " and here are some crops to help you see better ");
  for (int i = 0; i < crops; ++i) {
    if (i > 0) out += " ";
    out += full;
  }
  return out;
}

}  // namespace

int Conversation::num_images() const {
  int n = 0;
  for (const Message& m : messages) {
    for (const ContentPart& p : m.content)
      n += p.type == ContentPart::Type::kImage;
  }
  return n;
}

std::vector<std::string> Conversation::image_paths() const {
  std::vector<std::string> out;
  for (const Message& m : messages) {
    for (const ContentPart& p : m.content) {
      if (p.type == ContentPart::Type::kImage) out.push_back(p.image_path);
    }
  }
  return out;
}

absl::StatusOr<RenderedChat> RenderChat(
    const Conversation& conv, const ChatOptions& options,
    const std::vector<int>& crops_per_image) {
  const std::string where =
      conv.source.empty() ? std::string("conversation") : conv.source;
  if (conv.messages.empty())
    return absl::InvalidArgumentError(absl::StrCat(where, ": no messages"));
  if (!crops_per_image.empty() &&
      static_cast<int>(crops_per_image.size()) != conv.num_images()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": crops_per_image has ", crops_per_image.size(),
                     " entries for ", conv.num_images(), " images"));
  }
  RenderedChat out;
  out.text = "<bos>";
  size_t first = 0;
  std::string first_user_prefix;
  if (conv.messages[0].role == "system") {
    const auto& content = conv.messages[0].content;
    if (content.empty() || content[0].type != ContentPart::Type::kText) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": system message must start with text"));
    }
    first_user_prefix =
        content[0].text + "\n\n";  // the template does not trim the system text
    first = 1;
  }
  int image_index = 0;
  for (size_t i = first; i < conv.messages.size(); ++i) {
    const Message& m = conv.messages[i];
    const bool expect_user = (i - first) % 2 == 0;
    const bool is_model = m.role == "assistant" || m.role == "model";
    if (m.role != "user" && !is_model) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": message ", i, " has role \"", m.role,
                       "\" (expected user or assistant)"));
    }
    if ((m.role == "user") != expect_user) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": message ", i,
          ": conversation roles must alternate user/assistant/..."));
    }
    absl::StrAppend(&out.text, kStartOfTurn, is_model ? "model" : m.role, "\n");
    if (i == first) out.text += first_user_prefix;
    const size_t content_begin = out.text.size();
    for (const ContentPart& p : m.content) {
      if (p.type == ContentPart::Type::kText) {
        out.text += Trim(p.text);
      } else {
        const int crops =
            crops_per_image.empty() ? 0 : crops_per_image[image_index];
        out.text += ExpandedImage(options.mm_tokens_per_image, crops);
        ++image_index;
      }
    }
    out.text += kEndOfTurn;
    if (is_model) out.label_spans.emplace_back(content_begin, out.text.size());
    out.text += "\n";
  }
  if (options.add_generation_prompt)
    absl::StrAppend(&out.text, kStartOfTurn, "model\n");
  return out;
}

absl::StatusOr<EncodedChat> EncodeChat(
    const Tokenizer& tokenizer, const Conversation& conv,
    const ChatOptions& options, const std::vector<int>& crops_per_image) {
  GEMMA_ASSIGN_OR_RETURN(RenderedChat rendered,
                         RenderChat(conv, options, crops_per_image));
  std::vector<int> begins;
  EncodedChat out;
  GEMMA_ASSIGN_OR_RETURN(out.input_ids,
                         tokenizer.Encode(rendered.text, &begins));
  const int image_token = tokenizer.special().image_soft_token;
  out.labels.assign(out.input_ids.size(), kIgnoreIndex);
  out.token_type_ids.assign(out.input_ids.size(), 0);
  size_t span = 0;
  for (size_t i = 0; i < out.input_ids.size(); ++i) {
    const size_t b = static_cast<size_t>(begins[i]);
    while (span < rendered.label_spans.size() &&
           b >= rendered.label_spans[span].second)
      ++span;
    const bool is_image = out.input_ids[i] == image_token;
    out.token_type_ids[i] = is_image ? 1 : 0;
    if (span < rendered.label_spans.size() &&
        b >= rendered.label_spans[span].first && !is_image) {
      out.labels[i] = out.input_ids[i];
    }
  }
  return out;
}

}  // namespace gemma
