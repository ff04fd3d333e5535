// Gemma chat formats: conversations in Hugging Face's messages shape, their
// rendering as Gemma 3's (google/gemma-3-*-it) or Gemma 4's
// (google/gemma-4-*-it) chat template does it, with the processor's image
// expansion, and the token ids, labels and token types a training step needs.
//
// Gemma 4 in short (ChatOptions::format = ChatFormat::kGemma4):
//   <bos>[<|turn>system\n{system}<turn|>\n]<|turn>user\n{content}<turn|>\n
//   <|turn>model\n{content}<turn|>\n ...
// with each image part rendered "\n\n" + <|image> + n x <|image|> + <image|>
// + "\n\n", n being that image's soft-token count (Gemma4ImagePatches::
// num_soft_tokens, data/gemma4_image.h), so the rendering needs the images'
// counts: pass ChatImageInfo{.soft_tokens = n} per image. Labels cover each
// model turn's content and its <turn|>; token types (HF's mm_token_type_ids)
// are 1 on the <|image|> soft tokens only. DataLoader (data/batch.h) does all
// of this from BatchOptions.
#ifndef GEMMA_DATA_CHAT_H_
#define GEMMA_DATA_CHAT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer.h"

namespace gemma {

struct ContentPart {
  enum class Type { kText, kImage };
  Type type = Type::kText;
  std::string text;  // kText
  std::string
      image_path;  // kImage: absolute, or relative to the working directory
};

// role: "system" (first message only), "user", or "assistant"/"model".
struct Message {
  std::string role;
  std::vector<ContentPart> content;
};

struct Conversation {
  std::vector<Message> messages;
  std::string source;  // "file:line" for error messages

  int num_images() const;
  std::vector<std::string> image_paths() const;  // in order of appearance
};

enum class ChatFormat {
  kGemma3,  // <start_of_turn>...<end_of_turn>, fixed soft tokens per image
  kGemma4,  // <|turn>...<turn|>, per-image soft tokens, system turn
};

struct ChatOptions {
  ChatFormat format = ChatFormat::kGemma3;
  // Gemma 3: image soft tokens per image (and per crop). Unused by Gemma 4,
  // whose counts come per image (ChatImageInfo::soft_tokens).
  int mm_tokens_per_image = 256;
  // Ends with the prompt for the model's reply: Gemma 3
  // "<start_of_turn>model\n"; Gemma 4
  // "<|turn>model\n<|channel>thought\n<channel|>" (thinking off, an empty
  // thought channel, as the template writes it).
  bool add_generation_prompt = false;
};

// What rendering needs to know about each image, in order of appearance.
struct ChatImageInfo {
  int crops = 0;        // Gemma 3: pan-and-scan crops (0 = none)
  int soft_tokens = 0;  // Gemma 4: the image's soft-token count (>= 1)
};

// A rendered conversation. `text` is what HF's processor tokenizes: the chat
// template's output with each image placeholder expanded as the processor
// does. Gemma 3: `<start_of_image>` becomes "\n\n<start_of_image>" + N x
// "<image_soft_token>" + "<end_of_image>\n\n" (for pan-and-scan, "Here is
// the original image ... and here are some crops to help you see better ..."
// as Gemma3Processor writes it). Gemma 4: the template's "\n\n<|image|>\n\n"
// becomes "\n\n<|image>" + n x "<|image|>" + "<image|>\n\n". `label_spans`
// are the byte ranges [begin, end) of the text that training predicts: each
// model turn's content and its closing <end_of_turn> / <turn|>.
struct RenderedChat {
  std::string text;
  std::vector<std::pair<size_t, size_t>> label_spans;
};

// Renders as the format's chat template does; roles are "system" (first
// message only), "user" and "assistant" (shown as "model"; "model" is
// accepted too); other roles are InvalidArgument naming conv.source.
//
// Gemma 3: <bos>, a system message folded into the first user turn
// ("system\n\n" prefix, untrimmed), roles alternating user / assistant, text
// parts trimmed of surrounding whitespace.
//
// Gemma 4 (the message part of google/gemma-4-*-it's chat_template.jinja;
// no tools, thinking off): <bos>; a system message becomes its own
// `<|turn>system\n...<turn|>\n` turn (its text parts joined, then trimmed;
// images there are InvalidArgument); roles need not alternate (the template
// does not check); user text parts trimmed; model text parts with any
// `<|channel>...<channel|>` thought removed, then trimmed (the template strips
// thoughts from history turns, so they are never trained on); an image part
// is "\n\n" + its expansion + "\n\n". `images` must hold one entry per image
// with soft_tokens >= 1 (InvalidArgument otherwise).
absl::StatusOr<RenderedChat> RenderChat(
    const Conversation& conv, const ChatOptions& options,
    const std::vector<ChatImageInfo>& images);

// Gemma 3 shorthand: `crops_per_image` (empty = none) gives each image's
// pan-and-scan crop count. With ChatFormat::kGemma4 it serves text-only
// conversations (images need their soft-token counts: use the overload above).
absl::StatusOr<RenderedChat> RenderChat(
    const Conversation& conv, const ChatOptions& options,
    const std::vector<int>& crops_per_image = {});

// Token-level result. labels[i] == input_ids[i] on the tokens of label_spans
// (image soft tokens excepted) and -100 elsewhere; labels are not shifted
// (the loss shifts them, as HF does). token_type_ids[i] is 1 on image soft
// tokens (<image_soft_token> / <|image|>), 0 elsewhere (HF's processor's
// token_type_ids for Gemma 3, mm_token_type_ids for Gemma 4).
struct EncodedChat {
  std::vector<int> input_ids;
  std::vector<int> labels;
  std::vector<int> token_type_ids;
};

inline constexpr int kIgnoreIndex = -100;

// OK when `tokenizer` has every piece `format` writes; FailedPrecondition
// naming the piece, the format and the tokenizer file otherwise (e.g. a
// Gemma 3 tokenizer.model asked for Gemma 4 conversations). EncodeChat checks
// this itself; a trainer may call it once at startup to fail early.
absl::Status CheckChatTokens(const Tokenizer& tokenizer, ChatFormat format);

// RenderChat, then the tokenizer (errors as RenderChat's and CheckChatTokens').
absl::StatusOr<EncodedChat> EncodeChat(
    const Tokenizer& tokenizer, const Conversation& conv,
    const ChatOptions& options, const std::vector<ChatImageInfo>& images);

// Gemma 3 shorthand, as RenderChat's.
absl::StatusOr<EncodedChat> EncodeChat(
    const Tokenizer& tokenizer, const Conversation& conv,
    const ChatOptions& options, const std::vector<int>& crops_per_image = {});

}  // namespace gemma

#endif  // GEMMA_DATA_CHAT_H_
