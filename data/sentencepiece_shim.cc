// Includes SentencePiece and no Abseil header (see sentencepiece_shim.h).
#include "data/sentencepiece_shim.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace gemma {
namespace spm_shim {
namespace {

class ProcessorImpl : public Processor {
 public:
  sentencepiece::SentencePieceProcessor sp;

  bool Encode(const std::string& text, std::vector<int>* ids, std::vector<int>* begins,
              std::string* error) const override {
    if (begins == nullptr) {
      const auto status = sp.Encode(text, ids);
      if (!status.ok()) *error = status.ToString();
      return status.ok();
    }
    const sentencepiece::ImmutableSentencePieceText spt = sp.EncodeAsImmutableProto(text);
    ids->clear();
    begins->clear();
    for (size_t i = 0; i < spt.pieces_size(); ++i) {
      const auto piece = spt.pieces(static_cast<int>(i));
      ids->push_back(static_cast<int>(piece.id()));
      begins->push_back(static_cast<int>(piece.begin()));
    }
    if (ids->empty() && !text.empty()) {
      *error = "SentencePiece produced no pieces";
      return false;
    }
    return true;
  }
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const override {
    const auto status = sp.Decode(ids, text);
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  }
  int PieceToId(const std::string& piece) const override {
    const int id = sp.PieceToId(piece);
    if (id == sp.unk_id() && piece != sp.IdToPiece(id)) return -1;
    return id;
  }
  std::string IdToPiece(int id) const override { return sp.IdToPiece(id); }
  int VocabSize() const override { return sp.GetPieceSize(); }
  bool IsControl(int id) const override { return sp.IsControl(id); }
};

}  // namespace

std::unique_ptr<Processor> LoadProcessor(const std::string& serialized_model, std::string* error) {
  auto p = std::make_unique<ProcessorImpl>();
  const auto status = p->sp.LoadFromSerializedProto(serialized_model);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return p;
}

bool Train(const std::string& flags, std::string* error) {
  const auto status = sentencepiece::SentencePieceTrainer::Train(flags);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

}  // namespace spm_shim
}  // namespace gemma
