#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using nlohmann::json;

// Same cap as the reference implementation: a header this large is an attack
// or corruption, not a model.
constexpr uint64_t kMaxHeaderSize = 100u << 20;

struct DTypeRow {
  DType dtype;
  absl::string_view name;
  size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::kBool, "BOOL", 1}, {DType::kU8, "U8", 1},
    {DType::kI8, "I8", 1},     {DType::kI16, "I16", 2},
    {DType::kI32, "I32", 4},   {DType::kI64, "I64", 8},
    {DType::kF16, "F16", 2},   {DType::kBF16, "BF16", 2},
    {DType::kF32, "F32", 4},   {DType::kF64, "F64", 8},
};

absl::Status Bad(absl::string_view file, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(file, ": ", what));
}

absl::Status ErrnoStatus(const std::string& what, const std::string& path) {
  int e = errno;
  std::string msg = absl::StrCat(path, ": ", what, ": ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(msg);
  return absl::InternalError(msg);
}

// Reads a JSON value as a non-negative integer that fits in int64.
bool AsCount(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned() &&
      !(v.is_number_integer() && v.get<int64_t>() >= 0))
    return false;
  uint64_t x = v.get<uint64_t>();
  if (x > static_cast<uint64_t>(INT64_MAX)) return false;
  *out = x;
  return true;
}

absl::StatusOr<TensorInfo> ParseEntry(const std::string& name, const json& v,
                                      absl::string_view file) {
  auto where = [&](absl::string_view field) {
    return absl::StrCat("tensor '", name, "' field '", field, "'");
  };
  if (!v.is_object())
    return Bad(file,
               absl::StrCat("tensor '", name, "': entry is not an object"));
  TensorInfo info;
  info.name = name;
  for (const auto& [key, val] : v.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return Bad(file, absl::StrCat("tensor '", name, "': unexpected field '",
                                    key, "'"));
    }
  }
  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string())
    return Bad(file, where("dtype") + " missing or not a string");
  absl::StatusOr<DType> dtype = ParseDType(dt->get_ref<const std::string&>());
  if (!dtype.ok())
    return Bad(file,
               absl::StrCat(where("dtype"), ": ", dtype.status().message()));
  info.dtype = *dtype;
  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array())
    return Bad(file, where("shape") + " missing or not an array");
  if (sh->size() > 64)
    return Bad(file, where("shape") + " has too many dimensions");
  for (const json& d : *sh) {
    uint64_t n;
    if (!AsCount(d, &n))
      return Bad(file, where("shape") + " holds a value that is not a count");
    info.shape.push_back(static_cast<int64_t>(n));
  }
  auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2) {
    return Bad(file, where("data_offsets") + " missing or not [begin, end]");
  }
  if (!AsCount((*off)[0], &info.begin) || !AsCount((*off)[1], &info.end)) {
    return Bad(file,
               where("data_offsets") + " holds a value that is not an offset");
  }
  if (info.end < info.begin)
    return Bad(file, where("data_offsets") + " has end < begin");
  // numel * size, with overflow checks.
  unsigned __int128 bytes = DTypeSize(info.dtype);
  for (int64_t d : info.shape) {
    bytes *= static_cast<uint64_t>(d);
    if (bytes > static_cast<unsigned __int128>(UINT64_MAX)) {
      return Bad(file, absl::StrCat("tensor '", name,
                                    "': shape overflows 64-bit byte counts"));
    }
  }
  if (bytes != info.end - info.begin) {
    return Bad(file, absl::StrCat("tensor '", name, "': shape and dtype need ",
                                  static_cast<uint64_t>(bytes),
                                  " bytes but data_offsets span ",
                                  info.end - info.begin));
  }
  return info;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  for (const auto& r : kDTypes) {
    if (r.dtype == dtype) return r.size;
  }
  return 0;
}

absl::string_view DTypeName(DType dtype) {
  for (const auto& r : kDTypes) {
    if (r.dtype == dtype) return r.name;
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (const auto& r : kDTypes) {
    if (r.name == name) return r.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "'"));
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(
    absl::string_view text, uint64_t data_size, absl::string_view file) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    return Bad(file, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return Bad(file, "header is not a JSON object");
  SafetensorsHeader header;
  for (const auto& [key, val] : root.items()) {
    if (key == "__metadata__") {
      if (!val.is_object())
        return Bad(file, "field '__metadata__' is not an object");
      for (const auto& [mk, mv] : val.items()) {
        if (!mv.is_string()) {
          return Bad(file, absl::StrCat("field '__metadata__.", mk,
                                        "' is not a string"));
        }
        header.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    GEMMA_ASSIGN_OR_RETURN(TensorInfo info, ParseEntry(key, val, file));
    header.tensors.push_back(std::move(info));
  }
  std::stable_sort(header.tensors.begin(), header.tensors.end(),
                   [](const TensorInfo& a, const TensorInfo& b) {
                     return a.begin != b.begin ? a.begin < b.begin
                                               : a.end < b.end;
                   });
  uint64_t expect = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : header.tensors) {
    if (t.end > data_size) {
      return Bad(file,
                 absl::StrCat("tensor '", t.name, "': data_offsets [", t.begin,
                              ", ", t.end, ") run past the data region (",
                              data_size, " bytes)"));
    }
    if (t.begin < expect) {
      return Bad(file, absl::StrCat("tensor '", t.name, "' overlaps tensor '",
                                    prev ? prev->name : "", "'"));
    }
    if (t.begin > expect) {
      return Bad(file,
                 absl::StrCat("data region has a hole of ", t.begin - expect,
                              " bytes before tensor '", t.name, "'"));
    }
    expect = t.end;
    prev = &t;
  }
  if (expect != data_size) {
    return Bad(file, absl::StrCat("data region has ", data_size - expect,
                                  " bytes after the last tensor"));
  }
  return header;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsImage(
    absl::Span<const uint8_t> image, absl::string_view file) {
  if (image.size() < 8) {
    return Bad(file,
               absl::StrCat("truncated: ", image.size(),
                            " bytes, fewer than the 8-byte header length"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | image[i];
  if (n > kMaxHeaderSize)
    return Bad(file,
               absl::StrCat("header length ", n, " is larger than 100 MiB"));
  if (n > image.size() - 8) {
    return Bad(file, absl::StrCat("header length ", n,
                                  " runs past the end of the file (",
                                  image.size(), " bytes)"));
  }
  absl::string_view text(reinterpret_cast<const char*>(image.data() + 8), n);
  if (text.empty() || text[0] != '{')
    return Bad(file, "header does not start with '{'");
  return ParseSafetensorsHeader(text, image.size() - 8 - n, file);
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status s = ErrnoStatus("cannot stat", path);
    ::close(fd);
    return s;
  }
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->size_ = static_cast<size_t>(st.st_size);
  if (file->size_ > 0) {
    void* p = ::mmap(nullptr, file->size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      absl::Status s = ErrnoStatus("cannot mmap", path);
      ::close(fd);
      return s;
    }
    file->base_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  GEMMA_ASSIGN_OR_RETURN(file->header_,
                         ParseSafetensorsImage(file->FileBytes(), path));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file->base_[i];
  file->data_start_ = 8 + n;
  for (size_t i = 0; i < file->header_.tensors.size(); ++i) {
    file->index_.emplace(file->header_.tensors[i].name, i);
  }
  return std::shared_ptr<const SafetensorsFile>(std::move(file));
}

SafetensorsFile::~SafetensorsFile() {
  if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), size_);
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

absl::StatusOr<const TensorInfo*> SafetensorsFile::Get(
    absl::string_view name) const {
  const TensorInfo* t = Find(name);
  if (t == nullptr)
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", name, "'"));
  return t;
}

absl::Span<const uint8_t> SafetensorsFile::Bytes(const TensorInfo& info) const {
  return {base_ + data_start_ + info.begin, info.nbytes()};
}

// ---- writer
// ------------------------------------------------------------------

absl::Status SafetensorsWriter::Add(std::string name, DType dtype,
                                    std::vector<int64_t> shape, FillFn fill) {
  if (name == "__metadata__" || name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid tensor name '", name, "'"));
  }
  for (const Entry& e : entries_) {
    if (e.name == name)
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate tensor '", name, "'"));
  }
  uint64_t nbytes = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (d < 0)
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "': negative dimension"));
    nbytes *= static_cast<uint64_t>(d);
  }
  entries_.push_back(
      {std::move(name), dtype, std::move(shape), nbytes, std::move(fill)});
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddBytes(std::string name, DType dtype,
                                         std::vector<int64_t> shape,
                                         absl::Span<const uint8_t> bytes) {
  uint64_t nbytes = DTypeSize(dtype);
  for (int64_t d : shape)
    nbytes *= static_cast<uint64_t>(std::max<int64_t>(d, 0));
  if (nbytes != bytes.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': shape needs ", nbytes,
                     " bytes, got ", bytes.size()));
  }
  return Add(std::move(name), dtype, std::move(shape), [bytes](uint8_t* dst) {
    if (!bytes.empty()) std::memcpy(dst, bytes.data(), bytes.size());
    return absl::OkStatus();
  });
}

std::vector<const SafetensorsWriter::Entry*> SafetensorsWriter::Ordered()
    const {
  std::vector<const Entry*> order;
  for (const Entry& e : entries_) order.push_back(&e);
  std::stable_sort(order.begin(), order.end(),
                   [](const Entry* a, const Entry* b) {
                     return DTypeSize(a->dtype) > DTypeSize(b->dtype);
                   });
  return order;
}

std::string SafetensorsWriter::HeaderJson(uint64_t* data_size) const {
  json root = json::object();
  if (!metadata_.empty()) root["__metadata__"] = metadata_;
  uint64_t off = 0;
  for (const Entry* ep : Ordered()) {
    const Entry& e = *ep;
    root[e.name] = {{"dtype", std::string(DTypeName(e.dtype))},
                    {"shape", e.shape},
                    {"data_offsets", {off, off + e.nbytes}}};
    off += e.nbytes;
  }
  *data_size = off;
  std::string text = root.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

uint64_t SafetensorsWriter::FileSize() const {
  uint64_t data = 0;
  std::string h = HeaderJson(&data);
  return 8 + h.size() + data;
}

absl::Status SafetensorsWriter::Write(const std::string& path,
                                      uint32_t* crc32c) const {
  uint64_t data_size = 0;
  std::string header = HeaderJson(&data_size);
  const uint64_t total = 8 + header.size() + data_size;
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot create", tmp);
  auto fail = [&](absl::Status s) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  if (::ftruncate(fd, static_cast<off_t>(total)) != 0)
    return fail(ErrnoStatus("cannot size", tmp));
  // Allocate the blocks up front (no allocation per page fault); best effort.
  (void)::posix_fallocate(fd, 0, static_cast<off_t>(total));
  auto pwrite_all = [&](const uint8_t* p, uint64_t n, uint64_t off) {
    while (n > 0) {
      ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
      if (w <= 0) return false;
      p += w;
      n -= static_cast<uint64_t>(w);
      off += static_cast<uint64_t>(w);
    }
    return true;
  };
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i)
    prefix[i] = static_cast<char>(header.size() >> (8 * i));
  prefix += header;
  if (!pwrite_all(reinterpret_cast<const uint8_t*>(prefix.data()),
                  prefix.size(), 0)) {
    return fail(ErrnoStatus("cannot write", tmp));
  }
  uint32_t crc =
      Crc32c({reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size()});
  // Small tensors go through a buffer and pwrite; large ones are filled in
  // place through a mapping of just their range, unmapped right after, so the
  // process never holds more than one tensor of the output mapped.
  constexpr uint64_t kMapAbove = 4u << 20;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<uint8_t> buf;
  uint64_t off = prefix.size();
  for (const Entry* ep : Ordered()) {
    const Entry& e = *ep;
    auto tensor_error = [&](const absl::Status& s) {
      return fail(absl::Status(
          s.code(),
          absl::StrCat(path, ": tensor '", e.name, "': ", s.message())));
    };
    if (e.nbytes < kMapAbove) {
      buf.resize(std::max<uint64_t>(e.nbytes, 1));
      absl::Status s = e.fill(buf.data());
      if (!s.ok()) return tensor_error(s);
      crc = Crc32c({buf.data(), e.nbytes}, crc);
      if (!pwrite_all(buf.data(), e.nbytes, off))
        return fail(ErrnoStatus("cannot write", tmp));
    } else {
      const uint64_t map_off = off / page * page, delta = off - map_off;
      void* p = ::mmap(nullptr, delta + e.nbytes, PROT_READ | PROT_WRITE,
                       MAP_SHARED, fd, static_cast<off_t>(map_off));
      if (p == MAP_FAILED) return fail(ErrnoStatus("cannot mmap", tmp));
      uint8_t* dst = static_cast<uint8_t*>(p) + delta;
      absl::Status s = e.fill(dst);
      if (s.ok()) crc = Crc32c({dst, e.nbytes}, crc);
      ::munmap(p, delta + e.nbytes);
      if (!s.ok()) return tensor_error(s);
    }
    // Start writing back now so the disk works while the next tensor is copied.
    if (e.nbytes > 0) {
      (void)::sync_file_range(fd, static_cast<off_t>(off),
                              static_cast<off_t>(e.nbytes),
                              SYNC_FILE_RANGE_WRITE);
    }
    off += e.nbytes;
  }
  if (crc32c != nullptr) *crc32c = crc;
  if (::fsync(fd) != 0) return fail(ErrnoStatus("cannot fsync", tmp));
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status s = ErrnoStatus("cannot rename to " + path, tmp);
    ::unlink(tmp.c_str());
    return s;
  }
  return absl::OkStatus();
}

// ---- CRC-32C
// -----------------------------------------------------------------

namespace {

struct Crc32cTable {
  uint32_t t[8][256];
  Crc32cTable() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i) {
      for (int k = 1; k < 8; ++k)
        t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
    }
  }
};

uint32_t Crc32cSoftware(const uint8_t* p, size_t n, uint32_t c) {
  static const Crc32cTable table;
  const auto& t = table.t;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    v ^= c;
    c = t[7][v & 0xff] ^ t[6][(v >> 8) & 0xff] ^ t[5][(v >> 16) & 0xff] ^
        t[4][(v >> 24) & 0xff] ^ t[3][(v >> 32) & 0xff] ^
        t[2][(v >> 40) & 0xff] ^ t[1][(v >> 48) & 0xff] ^
        t[0][(v >> 56) & 0xff];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xff];
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(const uint8_t* p,
                                                          size_t n,
                                                          uint32_t c) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c64);
  while (n-- > 0) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}
#endif

}  // namespace

uint32_t Crc32c(absl::Span<const uint8_t> data, uint32_t crc) {
  uint32_t c = ~crc;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return ~Crc32cHardware(data.data(), data.size(), c);
#endif
  return ~Crc32cSoftware(data.data(), data.size(), c);
}

}  // namespace gemma
