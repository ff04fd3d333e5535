#include "data/tokenizer.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "data/sentencepiece_shim.h"

namespace gemma {

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(
        absl::StrCat("tokenizer model not found or unreadable: ", path));
  const std::string bytes((std::istreambuf_iterator<char>(in)),
                          std::istreambuf_iterator<char>());
  std::string error;
  std::unique_ptr<spm_shim::Processor> sp =
      spm_shim::LoadProcessor(bytes, &error);
  if (sp == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a SentencePiece model: ", path, " (", error, ")"));
  }
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  tok->path_ = path;
  struct Named {
    const char* piece;
    int* id;
  };
  SpecialTokenIds& s = tok->special_;
  const Named required[] = {{"<pad>", &s.pad},
                            {"<eos>", &s.eos},
                            {"<bos>", &s.bos},
                            {"<unk>", &s.unk}};
  for (const Named& n : required) {
    *n.id = sp->PieceToId(n.piece);
    if (*n.id < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("tokenizer model ", path, " has no piece ", n.piece,
                       " (not a Gemma tokenizer?)"));
    }
  }
  const Named optional[] = {{kStartOfTurn, &s.start_of_turn},
                            {kEndOfTurn, &s.end_of_turn},
                            {kStartOfImage, &s.start_of_image},
                            {kEndOfImage, &s.end_of_image},
                            {kImageSoftToken, &s.image_soft_token},
                            {kTurnOpen, &s.turn_open},
                            {kTurnClose, &s.turn_close},
                            {kImageOpen, &s.image_open},
                            {kImageClose, &s.image_close},
                            {kImagePlaceholder, &s.image_placeholder}};
  for (const Named& n : optional) *n.id = sp->PieceToId(n.piece);
  for (int id = 0; id < sp->VocabSize(); ++id) {
    const std::string piece = sp->IdToPiece(id);
    if (sp->IsControl(id) && !piece.empty()) {
      tok->control_by_first_byte_[static_cast<unsigned char>(piece[0])]
          .emplace_back(piece, id);
    }
  }
  for (auto& list : tok->control_by_first_byte_) {
    std::sort(list.begin(), list.end(), [](const auto& a, const auto& b) {
      return a.first.size() > b.first.size();
    });
  }
  tok->sp_ = std::move(sp);
  return tok;
}

absl::StatusOr<std::vector<int>> Tokenizer::Encode(
    std::string_view text, std::vector<int>* begins) const {
  std::vector<int> ids;
  if (begins != nullptr) begins->clear();
  size_t seg_start = 0;
  std::vector<int> seg_ids, seg_begins;
  auto flush = [&](size_t end) -> absl::Status {
    if (end <= seg_start) return absl::OkStatus();
    std::string error;
    const std::string seg(text.substr(seg_start, end - seg_start));
    if (!sp_->Encode(seg, &seg_ids, begins != nullptr ? &seg_begins : nullptr,
                     &error)) {
      return absl::InternalError(
          absl::StrCat("SentencePiece encode failed (", path_, "): ", error));
    }
    ids.insert(ids.end(), seg_ids.begin(), seg_ids.end());
    if (begins != nullptr) {
      for (int b : seg_begins)
        begins->push_back(static_cast<int>(seg_start) + b);
    }
    return absl::OkStatus();
  };
  // Control pieces written in the text are matched first (HF treats every
  // control and user-defined piece as an added token); SentencePiece itself
  // keeps user-defined pieces whole.
  size_t pos = 0;
  while (pos < text.size()) {
    const std::pair<std::string, int>* match = nullptr;
    for (const auto& cp :
         control_by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (text.compare(pos, cp.first.size(), cp.first) == 0) {
        match = &cp;
        break;
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    GEMMA_RETURN_IF_ERROR(flush(pos));
    ids.push_back(match->second);
    if (begins != nullptr) begins->push_back(static_cast<int>(pos));
    pos += match->first.size();
    seg_start = pos;
  }
  GEMMA_RETURN_IF_ERROR(flush(text.size()));
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(
    const std::vector<int>& ids) const {
  for (int id : ids) {
    if (id < 0 || id >= vocab_size()) {
      return absl::OutOfRangeError(
          absl::StrCat("token id ", id, " outside the vocabulary of ", path_));
    }
  }
  std::string text, error;
  if (!sp_->Decode(ids, &text, &error))
    return absl::InternalError(absl::StrCat("decode failed: ", error));
  return text;
}

int Tokenizer::PieceToId(const std::string& piece) const {
  return sp_->PieceToId(piece);
}
std::string Tokenizer::IdToPiece(int id) const { return sp_->IdToPiece(id); }
int Tokenizer::vocab_size() const { return sp_->VocabSize(); }

const std::vector<std::string>& GemmaUserDefinedPieces() {
  static const auto* pieces = new std::vector<std::string>{
      "<mask>",      kStartOfTurn, kEndOfTurn,
      kStartOfImage, kEndOfImage,  kImageSoftToken};
  return *pieces;
}

absl::Status TrainTokenizer(const TokenizerTrainOptions& options) {
  if (options.input_files.empty())
    return absl::InvalidArgumentError("TrainTokenizer: no input files");
  if (options.model_path.empty())
    return absl::InvalidArgumentError("TrainTokenizer: model_path is empty");
  for (const std::string& f : options.input_files) {
    if (!std::filesystem::exists(f))
      return absl::NotFoundError(
          absl::StrCat("tokenizer corpus not found: ", f));
    if (f.find(',') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer corpus path has a comma: ", f));
    }
  }
  std::vector<std::string> user_defined = GemmaUserDefinedPieces();
  for (const std::string& p : options.extra_user_defined_pieces) {
    if (p.find(',') != std::string::npos || p.find(' ') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("user-defined piece has a comma or space: ", p));
    }
    user_defined.push_back(p);
  }
  const std::string prefix = absl::StrCat(options.model_path, ".tmp", getpid());
  const std::string flags = absl::StrCat(
      "--input=", absl::StrJoin(options.input_files, ","),
      " --model_prefix=", prefix, " --vocab_size=", options.vocab_size,
      " --model_type=bpe --byte_fallback=true --split_digits=true"
      " --normalization_rule_name=identity --add_dummy_prefix=false"
      " --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true"
      " --character_coverage=1.0 --hard_vocab_limit=false --minloglevel=2"
      " --pad_id=0 --eos_id=1 --bos_id=2 --unk_id=3"
      " --pad_piece=<pad> --eos_piece=<eos> --bos_piece=<bos> --unk_piece=<unk>"
      " --user_defined_symbols=",
      absl::StrJoin(user_defined, ","));
  std::string error;
  if (!spm_shim::Train(flags, &error)) {
    return absl::InternalError(absl::StrCat(
        "SentencePiece training for ", options.model_path, " failed: ", error));
  }
  std::error_code ec;
  std::filesystem::remove(prefix + ".vocab", ec);
  std::filesystem::rename(prefix + ".model", options.model_path, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot move trained model to ",
                                            options.model_path, ": ",
                                            ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace gemma
