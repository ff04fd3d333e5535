// libFuzzer target: the safetensors header parser on arbitrary file images.
// Build with clang (cmake -DCMAKE_CXX_COMPILER=clang++-14
// -DGEMMA_BUILD_FUZZ=ON) and run e.g. `safetensors_header_fuzz
// -max_total_time=60 corpus/`. Crashes, sanitizer reports and broken invariants
// of accepted headers are bugs.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::Span<const uint8_t> image(data, size);
  auto header = gemma::ParseSafetensorsImage(image, "fuzz.safetensors");
  if (!header.ok()) return 0;
  // Accepted: the tensors must tile the data region exactly.
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  uint64_t covered = 0;
  for (const gemma::TensorInfo& t : header->tensors) {
    if (t.begin != covered) std::abort();
    if (t.nbytes() !=
        static_cast<uint64_t>(t.numel()) * gemma::DTypeSize(t.dtype))
      std::abort();
    covered = t.end;
  }
  if (covered != size - 8 - n) std::abort();
  return 0;
}
