// Gemma's SentencePiece tokenizer (tokenizer.model) and a trainer for small
// Gemma-style models. No SentencePiece type appears here.
#ifndef GEMMA_DATA_TOKENIZER_H_
#define GEMMA_DATA_TOKENIZER_H_

#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gemma {

namespace spm_shim {
class Processor;
}

// Ids of the pieces the chat formats need, looked up by name in the model;
// -1 when the model has no such piece. <pad>, <eos>, <bos> and <unk> are
// always there (Load fails otherwise); which of the others a format needs is
// CheckChatTokens's business (data/chat.h).
//   Gemma 3: pad 0, eos 1, bos 2, <start_of_turn> 105, <end_of_turn> 106,
//     <start_of_image> 255999, <end_of_image> 256000, <image_soft_token>
//     262144.
//   Gemma 4: <|turn> 105, <turn|> 106, <|image> 255999, <|image|> 258880,
//     <image|> 258882.
struct SpecialTokenIds {
  int pad = -1;
  int eos = -1;
  int bos = -1;
  int unk = -1;
  // Gemma 3.
  int start_of_turn = -1;
  int end_of_turn = -1;
  int start_of_image = -1;
  int end_of_image = -1;
  int image_soft_token = -1;
  // Gemma 4.
  int turn_open = -1;          // <|turn>
  int turn_close = -1;         // <turn|>
  int image_open = -1;         // <|image>  (boi)
  int image_close = -1;        // <image|>  (eoi)
  int image_placeholder = -1;  // <|image|> (the image soft token)
};

inline constexpr char kStartOfTurn[] = "<start_of_turn>";
inline constexpr char kEndOfTurn[] = "<end_of_turn>";
inline constexpr char kStartOfImage[] = "<start_of_image>";
inline constexpr char kEndOfImage[] = "<end_of_image>";
inline constexpr char kImageSoftToken[] = "<image_soft_token>";

inline constexpr char kTurnOpen[] = "<|turn>";
inline constexpr char kTurnClose[] = "<turn|>";
inline constexpr char kImageOpen[] = "<|image>";
inline constexpr char kImageClose[] = "<image|>";
inline constexpr char kImagePlaceholder[] = "<|image|>";

class Tokenizer {
 public:
  // Loads tokenizer.model. NotFound / InvalidArgument naming the path when it
  // is missing or not a SentencePiece model, FailedPrecondition when <pad>,
  // <eos>, <bos> or <unk> is absent. The chat pieces may be absent (a Gemma 3
  // model has no <|turn>, a Gemma 4 one no <start_of_turn>): EncodeChat and
  // CheckChatTokens (data/chat.h) name the piece and the file then.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(
      const std::string& path);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Encodes text as HF's GemmaTokenizer does without special tokens added:
  // control pieces written literally in the text (e.g. "<bos>", "<eos>") and
  // user-defined pieces ("<start_of_turn>", "<image_soft_token>", ...) become
  // their single ids; the rest goes through SentencePiece (BPE with byte
  // fallback). With `begins`, also each id's starting byte offset in `text`.
  absl::StatusOr<std::vector<int>> Encode(
      std::string_view text, std::vector<int>* begins = nullptr) const;

  absl::StatusOr<std::string> Decode(const std::vector<int>& ids) const;

  // -1 when absent.
  int PieceToId(const std::string& piece) const;
  std::string IdToPiece(int id) const;
  int vocab_size() const;
  const SpecialTokenIds& special() const { return special_; }
  const std::string& path() const { return path_; }

 private:
  Tokenizer() = default;
  std::unique_ptr<spm_shim::Processor> sp_;
  // Control pieces (<bos>, <eos>, ...) by their first byte, longest first.
  std::array<std::vector<std::pair<std::string, int>>, 256>
      control_by_first_byte_;
  SpecialTokenIds special_;
  std::string path_;
};

// Training a small Gemma-style SentencePiece model (BPE, byte fallback, digits
// split, identity normalisation, no dummy prefix, whitespace kept) with
// Gemma's special pieces reserved: <pad> 0, <eos> 1, <bos> 2, <unk> 3, then
// user-defined <mask>, <start_of_turn>, <end_of_turn>, <start_of_image>,
// <end_of_image>, <image_soft_token> at 4..9.
struct TokenizerTrainOptions {
  std::vector<std::string> input_files;  // one sentence per line
  std::string model_path;                // written atomically (temp + rename)
  int vocab_size = 1024;  // an upper bound (hard_vocab_limit off)
  // More user-defined pieces (e.g. "<s_total>"), after the Gemma ones.
  std::vector<std::string> extra_user_defined_pieces;
};

// The user-defined pieces reserved at ids 4.. (in order).
const std::vector<std::string>& GemmaUserDefinedPieces();

absl::Status TrainTokenizer(const TokenizerTrainOptions& options);

}  // namespace gemma

#endif  // GEMMA_DATA_TOKENIZER_H_
