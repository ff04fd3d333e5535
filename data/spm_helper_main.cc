// gemma-spm-helper: SentencePiece in a process of its own (see
// sentencepiece_shim.h for why). Speaks a framed protocol on stdin/stdout:
//   request  = op (1 byte) + payload length (u32, little endian) + payload
//   response = ok (1 byte) + payload length (u32) + payload (error text when
//   !ok)
// ops: 'L' load a serialized model  -> vocab: u32 n, then n x (u8 flags, u32
// len, bytes)
//                                      flags: 1 control
//      'E' encode text              -> u32 n, then n x (i32 id, i32 byte
//      offset) 'D' decode n x i32 ids       -> text 'T' train with a flag
//      string -> empty
// Exits at end of input. Includes SentencePiece and no Abseil header.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

bool ReadAll(int fd, void* buf, size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteAll(int fd, const void* buf, size_t n) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

void PutU32(std::string* out, uint32_t v) {
  out->append(reinterpret_cast<const char*>(&v), 4);
}

bool Reply(bool ok, const std::string& payload) {
  const uint8_t flag = ok ? 1 : 0;
  const uint32_t len = static_cast<uint32_t>(payload.size());
  return WriteAll(1, &flag, 1) && WriteAll(1, &len, 4) &&
         WriteAll(1, payload.data(), payload.size());
}

}  // namespace

int main() {
  sentencepiece::SentencePieceProcessor sp;
  bool loaded = false;
  for (;;) {
    uint8_t op = 0;
    uint32_t len = 0;
    if (!ReadAll(0, &op, 1) || !ReadAll(0, &len, 4)) return 0;
    std::string payload(len, '\0');
    if (len > 0 && !ReadAll(0, payload.data(), len)) return 1;
    bool ok = true;
    std::string out;
    if (op == 'L') {
      const auto status = sp.LoadFromSerializedProto(payload);
      ok = status.ok();
      if (!ok) {
        out = status.ToString();
      } else {
        loaded = true;
        const int n = sp.GetPieceSize();
        PutU32(&out, static_cast<uint32_t>(n));
        for (int id = 0; id < n; ++id) {
          const std::string& piece = sp.IdToPiece(id);
          out.push_back(static_cast<char>(sp.IsControl(id) ? 1 : 0));
          PutU32(&out, static_cast<uint32_t>(piece.size()));
          out += piece;
        }
      }
    } else if (op == 'E' && loaded) {
      const sentencepiece::ImmutableSentencePieceText spt =
          sp.EncodeAsImmutableProto(payload);
      PutU32(&out, static_cast<uint32_t>(spt.pieces_size()));
      for (size_t i = 0; i < spt.pieces_size(); ++i) {
        const auto piece = spt.pieces(static_cast<int>(i));
        const int32_t v[2] = {static_cast<int32_t>(piece.id()),
                              static_cast<int32_t>(piece.begin())};
        out.append(reinterpret_cast<const char*>(v), sizeof(v));
      }
    } else if (op == 'D' && loaded) {
      std::vector<int> ids(payload.size() / 4);
      if (!ids.empty()) std::memcpy(ids.data(), payload.data(), ids.size() * 4);
      const auto status = sp.Decode(ids, &out);
      ok = status.ok();
      if (!ok) out = status.ToString();
    } else if (op == 'T') {
      const auto status = sentencepiece::SentencePieceTrainer::Train(payload);
      ok = status.ok();
      if (!ok) out = status.ToString();
    } else {
      ok = false;
      out = loaded ? "unknown request" : "no model loaded";
    }
    if (!Reply(ok, out)) return 1;
  }
}
