// Gemma 3 chat format: conversations in Hugging Face's messages shape, the
// rendering of Gemma 3's chat template (google/gemma-3-*-it) with the
// processor's image expansion, and the token ids, labels and token types a
// training step needs.
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

struct ChatOptions {
  int mm_tokens_per_image = 256;  // image soft tokens per image (and per crop)
  bool add_generation_prompt = false;
};

// A rendered conversation. `text` is what HF's processor tokenizes: the chat
// template's output with each `<start_of_image>` placeholder expanded to
// "\n\n<start_of_image>" + N x "<image_soft_token>" + "<end_of_image>\n\n"
// (for pan-and-scan, "Here is the original image ... and here are some crops
// to help you see better ..." as Gemma3Processor writes it). `label_spans`
// are the byte ranges [begin, end) of the text that training predicts: each
// assistant turn's content and its closing <end_of_turn>.
struct RenderedChat {
  std::string text;
  std::vector<std::pair<size_t, size_t>> label_spans;
};

// Renders as Gemma 3's chat template does: <bos>, a system message folded
// into the first user turn ("system\n\n" prefix), roles alternating user /
// assistant (InvalidArgument naming conv.source otherwise), "assistant" shown
// as "model", text parts trimmed of surrounding whitespace. `crops_per_image`
// (empty = none) gives each image's pan-and-scan crop count.
absl::StatusOr<RenderedChat> RenderChat(
    const Conversation& conv, const ChatOptions& options,
    const std::vector<int>& crops_per_image = {});

// Token-level result. labels[i] == input_ids[i] on the tokens of label_spans
// (image soft tokens excepted) and -100 elsewhere; labels are not shifted
// (the loss shifts them, as HF does). token_type_ids[i] is 1 on image soft
// tokens, 0 elsewhere (HF's processor's token_type_ids).
struct EncodedChat {
  std::vector<int> input_ids;
  std::vector<int> labels;
  std::vector<int> token_type_ids;
};

inline constexpr int kIgnoreIndex = -100;

absl::StatusOr<EncodedChat> EncodeChat(
    const Tokenizer& tokenizer, const Conversation& conv,
    const ChatOptions& options, const std::vector<int>& crops_per_image = {});

}  // namespace gemma

#endif  // GEMMA_DATA_CHAT_H_
