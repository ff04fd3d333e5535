// The only door to the SentencePiece library. Debian's sentencepiece headers
// declare `absl::string_view` themselves, which clashes with Abseil's in any
// translation unit that also includes Abseil, so sentencepiece_shim.cc is the
// one file that includes them; this header uses std types only.
// Prefer data/tokenizer.h: this is its implementation detail.
#ifndef GEMMA_DATA_SENTENCEPIECE_SHIM_H_
#define GEMMA_DATA_SENTENCEPIECE_SHIM_H_

#include <memory>
#include <string>
#include <vector>

namespace gemma {
namespace spm_shim {

class Processor {
 public:
  virtual ~Processor() = default;
  // Encodes `text` into ids; returns false and sets *error on failure.
  // With `begins`, also the byte offset in `text` where each piece starts.
  virtual bool Encode(const std::string& text, std::vector<int>* ids, std::vector<int>* begins,
                      std::string* error) const = 0;
  virtual bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const = 0;
  // -1 when the piece is not in the vocabulary (SentencePiece maps unknown
  // pieces to unk; this reports them as absent instead).
  virtual int PieceToId(const std::string& piece) const = 0;
  virtual std::string IdToPiece(int id) const = 0;
  virtual int VocabSize() const = 0;
  // Control symbols (<bos>, <eos>, <pad>, ...) are never produced by Encode.
  virtual bool IsControl(int id) const = 0;
};

// Loads a serialized ModelProto (the bytes of a tokenizer.model file).
// Returns null and sets *error on failure.
std::unique_ptr<Processor> LoadProcessor(const std::string& serialized_model, std::string* error);

// Runs the SentencePiece trainer with a flag string
// ("--input=... --model_prefix=... ..."). Returns false and sets *error.
bool Train(const std::string& flags, std::string* error);

}  // namespace spm_shim
}  // namespace gemma

#endif  // GEMMA_DATA_SENTENCEPIECE_SHIM_H_
