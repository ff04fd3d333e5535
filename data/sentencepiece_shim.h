// The only door to the SentencePiece library; prefer data/tokenizer.h (this
// is its implementation detail). SentencePiece runs in a helper process,
// gemma-spm-helper, because Debian's libsentencepiece cannot share a process
// with the rest of ours:
//  * it carries its own protobuf 3.14 runtime and exports those symbols,
//    which collide with the system protobuf 3.21 that gRPC brings (a process
//    linking both aborts in protobuf's version check; dlopen with
//    RTLD_DEEPBIND avoids that but breaks libstdc++'s iostreams);
//  * its header declares its own absl::string_view, which clashes with
//    Abseil's.
// The helper is looked up at $GEMMA_SPM_HELPER (a file path), beside the
// running executable, then at its build-tree path; install it with the
// binaries. One helper per loaded model, ended with the Processor. Calls on
// one Processor are serialised (thread-safe, not parallel).
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
  virtual bool Encode(const std::string& text, std::vector<int>* ids,
                      std::vector<int>* begins, std::string* error) const = 0;
  virtual bool Decode(const std::vector<int>& ids, std::string* text,
                      std::string* error) const = 0;
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
std::unique_ptr<Processor> LoadProcessor(const std::string& serialized_model,
                                         std::string* error);

// Runs the SentencePiece trainer with a flag string
// ("--input=... --model_prefix=... ..."). Returns false and sets *error.
bool Train(const std::string& flags, std::string* error);

}  // namespace spm_shim
}  // namespace gemma

#endif  // GEMMA_DATA_SENTENCEPIECE_SHIM_H_
