#include "data/chat.h"

#include <algorithm>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace gemma {

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

namespace {

// Jinja's `trim` strips Python whitespace; ASCII whitespace covers what our
// inputs carry.
std::string Trim(const std::string& s) {
  return std::string(absl::StripAsciiWhitespace(s));
}

// One image in the rendered text: "\n\n", `open`, n times `token`, `close`,
// "\n\n".
std::string ImageRun(std::string_view open, std::string_view token,
                     std::string_view close, int n) {
  std::string out;
  out.reserve(open.size() + close.size() + 4 +
              static_cast<size_t>(std::max(n, 0)) * token.size());
  out.append("\n\n").append(open);
  for (int i = 0; i < n; ++i) out.append(token);
  out.append(close).append("\n\n");
  return out;
}

// Gemma 3: <start_of_image>, n soft tokens, <end_of_image>.
std::string ImageSequence(int n) {
  return ImageRun(kStartOfImage, kImageSoftToken, kEndOfImage, n);
}

// Gemma 4: <|image>, n placeholders, <image|>.
std::string Gemma4ImageSequence(int n) {
  return ImageRun(kImageOpen, kImagePlaceholder, kImageClose, n);
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

// The Gemma 4 template's strip_thinking: drops each "<|channel>...<channel|>"
// thought (split on "<channel|>"; in each piece, what follows "<|channel>"),
// then trims.
std::string StripThoughts(const std::string& s) {
  static constexpr std::string_view kOpen = "<|channel>", kClose = "<channel|>";
  std::string kept;
  size_t begin = 0;
  while (true) {
    const size_t close = s.find(kClose, begin);
    const std::string_view piece = std::string_view(s).substr(
        begin, close == std::string::npos ? std::string::npos : close - begin);
    kept += piece.substr(0, piece.find(kOpen));
    if (close == std::string::npos) break;
    begin = close + kClose.size();
  }
  return Trim(kept);
}

// Ends a turn whose content began at content_begin: the `close` marker, then
// "\n". A model turn's content and close marker are a label span.
void CloseTurn(std::string_view close, bool is_model, size_t content_begin,
               RenderedChat* out) {
  out->text += close;
  if (is_model) out->label_spans.emplace_back(content_begin, out->text.size());
  out->text += "\n";
}

std::string Where(const Conversation& conv) {
  return conv.source.empty() ? std::string("conversation") : conv.source;
}

absl::Status CheckRole(const Conversation& conv, size_t i) {
  const std::string& role = conv.messages[i].role;
  if (role == "user" || role == "assistant" || role == "model")
    return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      Where(conv), ": message ", i, " has role \"", role, "\"",
      role == "system" ? " (only the first message may be the system message)"
                       : " (expected user or assistant)"));
}

absl::StatusOr<RenderedChat> RenderGemma4(
    const Conversation& conv, const ChatOptions& options,
    const std::vector<ChatImageInfo>& images) {
  const std::string where = Where(conv);
  RenderedChat out;
  out.text = "<bos>";
  size_t first = 0;
  if (conv.messages[0].role == "system") {
    std::string system;
    for (const ContentPart& p : conv.messages[0].content) {
      if (p.type != ContentPart::Type::kText) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": the system message may hold text only"));
      }
      system += p.text;
    }
    absl::StrAppend(&out.text, kTurnOpen, "system\n", Trim(system), kTurnClose,
                    "\n");
    first = 1;
  }
  size_t image_index = 0;
  for (size_t i = first; i < conv.messages.size(); ++i) {
    GEMMA_RETURN_IF_ERROR(CheckRole(conv, i));
    const Message& m = conv.messages[i];
    const bool is_model = m.role != "user";
    absl::StrAppend(&out.text, kTurnOpen, is_model ? "model" : "user", "\n");
    const size_t content_begin = out.text.size();
    for (const ContentPart& p : m.content) {
      if (p.type == ContentPart::Type::kText) {
        out.text += is_model ? StripThoughts(p.text) : Trim(p.text);
        continue;
      }
      const int n = images[image_index++].soft_tokens;
      if (n < 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": image ", image_index - 1, " (", p.image_path,
            ") has no soft-token count (Gemma 4 needs ChatImageInfo::"
            "soft_tokens >= 1 per image)"));
      }
      out.text += Gemma4ImageSequence(n);
    }
    CloseTurn(kTurnClose, is_model, content_begin, &out);
  }
  if (options.add_generation_prompt)
    absl::StrAppend(&out.text, kTurnOpen,
                    "model\n<|channel>thought\n<channel|>");
  return out;
}

absl::StatusOr<RenderedChat> RenderGemma3(
    const Conversation& conv, const ChatOptions& options,
    const std::vector<ChatImageInfo>& images) {
  const std::string where = Where(conv);
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
        out.text += ExpandedImage(options.mm_tokens_per_image,
                                  images[image_index].crops);
        ++image_index;
      }
    }
    CloseTurn(kEndOfTurn, is_model, content_begin, &out);
  }
  if (options.add_generation_prompt)
    absl::StrAppend(&out.text, kStartOfTurn, "model\n");
  return out;
}

// The Gemma 3 shorthand's crops (empty = none) as ChatImageInfo.
absl::StatusOr<std::vector<ChatImageInfo>> FromCrops(
    const Conversation& conv, const std::vector<int>& crops_per_image) {
  if (!crops_per_image.empty() &&
      static_cast<int>(crops_per_image.size()) != conv.num_images()) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(conv), ": crops_per_image has ", crops_per_image.size(),
        " entries for ", conv.num_images(), " images"));
  }
  std::vector<ChatImageInfo> images(conv.num_images());
  for (size_t i = 0; i < crops_per_image.size(); ++i)
    images[i].crops = crops_per_image[i];
  return images;
}

}  // namespace

absl::StatusOr<RenderedChat> RenderChat(
    const Conversation& conv, const ChatOptions& options,
    const std::vector<ChatImageInfo>& images) {
  const std::string where = Where(conv);
  if (conv.messages.empty())
    return absl::InvalidArgumentError(absl::StrCat(where, ": no messages"));
  if (static_cast<int>(images.size()) != conv.num_images()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", images.size(), " image entries for ",
                     conv.num_images(), " images"));
  }
  switch (options.format) {
    case ChatFormat::kGemma3:
      return RenderGemma3(conv, options, images);
    case ChatFormat::kGemma4:
      return RenderGemma4(conv, options, images);
  }
  return absl::InvalidArgumentError("unknown chat format");
}

absl::StatusOr<RenderedChat> RenderChat(
    const Conversation& conv, const ChatOptions& options,
    const std::vector<int>& crops_per_image) {
  GEMMA_ASSIGN_OR_RETURN(std::vector<ChatImageInfo> images,
                         FromCrops(conv, crops_per_image));
  return RenderChat(conv, options, images);
}

absl::Status CheckChatTokens(const Tokenizer& tokenizer, ChatFormat format) {
  const SpecialTokenIds& s = tokenizer.special();
  struct Needed {
    const char* piece;
    int id;
  };
  const bool gemma4 = format == ChatFormat::kGemma4;
  const std::vector<Needed> needed =
      gemma4 ? std::vector<Needed>{{kTurnOpen, s.turn_open},
                                   {kTurnClose, s.turn_close},
                                   {kImageOpen, s.image_open},
                                   {kImagePlaceholder, s.image_placeholder},
                                   {kImageClose, s.image_close}}
             : std::vector<Needed>{{kStartOfTurn, s.start_of_turn},
                                   {kEndOfTurn, s.end_of_turn},
                                   {kStartOfImage, s.start_of_image},
                                   {kImageSoftToken, s.image_soft_token},
                                   {kEndOfImage, s.end_of_image}};
  for (const Needed& n : needed) {
    if (n.id < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tokenizer ", tokenizer.path(), " has no piece ", n.piece,
          ", which the ", gemma4 ? "Gemma 4" : "Gemma 3",
          " chat format needs (a tokenizer of another Gemma generation?)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<EncodedChat> EncodeChat(
    const Tokenizer& tokenizer, const Conversation& conv,
    const ChatOptions& options, const std::vector<ChatImageInfo>& images) {
  GEMMA_RETURN_IF_ERROR(CheckChatTokens(tokenizer, options.format));
  GEMMA_ASSIGN_OR_RETURN(RenderedChat rendered,
                         RenderChat(conv, options, images));
  std::vector<int> begins;
  EncodedChat out;
  GEMMA_ASSIGN_OR_RETURN(out.input_ids,
                         tokenizer.Encode(rendered.text, &begins));
  const int image_token = options.format == ChatFormat::kGemma4
                              ? tokenizer.special().image_placeholder
                              : tokenizer.special().image_soft_token;
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

absl::StatusOr<EncodedChat> EncodeChat(
    const Tokenizer& tokenizer, const Conversation& conv,
    const ChatOptions& options, const std::vector<int>& crops_per_image) {
  GEMMA_ASSIGN_OR_RETURN(std::vector<ChatImageInfo> images,
                         FromCrops(conv, crops_per_image));
  return EncodeChat(tokenizer, conv, options, images);
}

}  // namespace gemma
