// Safetensors files: our own reader (mmap, zero-copy views) and writer.
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of UTF-8 JSON (may be padded with trailing spaces),
// then the data region. The JSON maps each tensor name to
// {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]} (offsets
// relative to the data region) plus an optional "__metadata__" string map.
// The data region must be covered exactly: no holes, no overlaps, nothing
// after the last tensor, and every tensor's byte count must equal
// numel * dtype size.
//
//   GEMMA_ASSIGN_OR_RETURN(auto file,
//   SafetensorsFile::Open("/m/model.safetensors")); const TensorInfo* t =
//   file->Find("model.norm.weight"); absl::Span<const uint8_t> bytes =
//   file->Bytes(*t);   // a view into the mapping
//
// Every error is an absl::Status whose message names the file and the tensor
// or field at fault. This header does not include LibTorch; the tensor views
// live in model/safetensors_torch.h.
#ifndef GEMMA_MODEL_SAFETENSORS_H_
#define GEMMA_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace gemma {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kI16,
  kI32,
  kI64,
  kF16,
  kBF16,
  kF32,
  kF64,
};

// Bytes per element.
size_t DTypeSize(DType dtype);
// The safetensors spelling ("BF16", "F32", ...).
absl::string_view DTypeName(DType dtype);
// Parses a safetensors dtype name; INVALID_ARGUMENT for unknown names.
absl::StatusOr<DType> ParseDType(absl::string_view name);

// One tensor's entry in a header. Offsets are relative to the data region.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;

  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

// A parsed and validated header.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
};

// Parses the JSON header text `json` of a file whose data region holds
// `data_size` bytes and validates it (see the format comment above). `file`
// only names the file in error messages. Never crashes on any input.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(
    absl::string_view json, uint64_t data_size, absl::string_view file);

// Parses a whole file image (length prefix, header, data) held in memory.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsImage(
    absl::Span<const uint8_t> image, absl::string_view file);

// A read-only memory-mapped safetensors file. Thread-safe after Open (it is
// immutable). Views returned by Bytes() stay valid while the object lives;
// hold the shared_ptr to keep the mapping.
class SafetensorsFile {
 public:
  // Maps and validates `path`. NOT_FOUND when it does not exist,
  // DATA_LOSS / INVALID_ARGUMENT for malformed files.
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Open(
      const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const {
    return header_.metadata;
  }
  // nullptr when absent.
  const TensorInfo* Find(absl::string_view name) const;
  // As Find, but NOT_FOUND naming the file and tensor when absent.
  absl::StatusOr<const TensorInfo*> Get(absl::string_view name) const;
  // The tensor's bytes inside the mapping (row-major, little-endian).
  absl::Span<const uint8_t> Bytes(const TensorInfo& info) const;
  // The whole file as mapped.
  absl::Span<const uint8_t> FileBytes() const { return {base_, size_}; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  const uint8_t* base_ = nullptr;  // whole-file mapping
  size_t size_ = 0;
  uint64_t data_start_ = 0;
  SafetensorsHeader header_;
  std::unordered_map<std::string, size_t> index_;  // name -> tensors() position
};

// Writes one safetensors file. Add() every tensor (its name, dtype and shape,
// and how to produce its bytes), then Write(). The header is padded with
// spaces to a multiple of 8 bytes and the data region holds tensors by
// decreasing dtype size (otherwise in Add order), so every tensor starts at an
// offset aligned to its element size.
class SafetensorsWriter {
 public:
  // Fills exactly nbytes() bytes at `dst` (inside the output mapping).
  using FillFn = std::function<absl::Status(uint8_t* dst)>;

  // INVALID_ARGUMENT on a duplicate name or negative dimension.
  absl::Status Add(std::string name, DType dtype, std::vector<int64_t> shape,
                   FillFn fill);
  // Convenience: `bytes` (numel * dtype size of them) are copied at Write
  // time, so they must stay valid until then.
  absl::Status AddBytes(std::string name, DType dtype,
                        std::vector<int64_t> shape,
                        absl::Span<const uint8_t> bytes);
  void SetMetadata(std::map<std::string, std::string> metadata) {
    metadata_ = std::move(metadata);
  }

  // Total bytes Write() will produce.
  uint64_t FileSize() const;
  // Writes `path` atomically: to `path.tmp.<pid>`, fsync, then rename. On any
  // error the temporary is removed and `path` is untouched. `crc32c` (may be
  // null) receives the CRC-32C of the whole file.
  absl::Status Write(const std::string& path, uint32_t* crc32c = nullptr) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t nbytes;
    FillFn fill;
  };
  // Entries by decreasing dtype size (stable), the order of the data region.
  std::vector<const Entry*> Ordered() const;
  std::string HeaderJson(uint64_t* data_size) const;
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// CRC-32C (Castagnoli) of `data`, continuing from `crc` (0 to start).
uint32_t Crc32c(absl::Span<const uint8_t> data, uint32_t crc = 0);

}  // namespace gemma

#endif  // GEMMA_MODEL_SAFETENSORS_H_
