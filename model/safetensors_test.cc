#include "model/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tests/formats/test_util.h"

namespace gemma {
namespace {

using ::gemma::testing::ReadFile;
using ::gemma::testing::RunPython;
using ::gemma::testing::TempDir;
using ::gemma::testing::WriteFile;
using nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<uint8_t>(seed * 31 + i * 7 + (i >> 3));
  return v;
}

struct Want {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::vector<Want> AllDtypes() {
  std::vector<Want> w;
  const std::pair<DType, std::vector<int64_t>> specs[] = {
      {DType::kBF16, {3, 4}}, {DType::kF16, {5}},    {DType::kF32, {2, 3, 2}},
      {DType::kF64, {3}},     {DType::kI64, {2, 2}}, {DType::kI32, {7}},
      {DType::kI16, {1, 3}},  {DType::kI8, {5}},     {DType::kU8, {4, 1}},
      {DType::kBool, {3}},    {DType::kF32, {}},     {DType::kBF16, {0, 8}},
  };
  uint8_t seed = 1;
  for (const auto& [dt, shape] : specs) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    auto bytes = Pattern(static_cast<size_t>(n) * DTypeSize(dt), seed);
    if (dt == DType::kBool) {
      for (auto& b : bytes) b &= 1;
    }
    w.push_back({absl::StrCat("t", static_cast<int>(seed), ".", DTypeName(dt)),
                 dt, shape, bytes});
    ++seed;
  }
  return w;
}

TEST(SafetensorsTest, RoundTripsEveryDtypeAlignedWithMetadata) {
  TempDir dir;
  SafetensorsWriter w;
  const auto want = AllDtypes();
  for (const Want& t : want)
    ASSERT_TRUE(w.AddBytes(t.name, t.dtype, t.shape, t.bytes).ok());
  w.SetMetadata({{"format", "pt"}, {"step", "12"}});
  uint32_t crc = 0;
  ASSERT_TRUE(w.Write(dir / "a.safetensors", &crc).ok());
  const std::string raw = ReadFile(dir / "a.safetensors");
  EXPECT_EQ(raw.size(), w.FileSize());
  EXPECT_EQ(crc,
            Crc32c({reinterpret_cast<const uint8_t*>(raw.data()), raw.size()}));
  auto file = SafetensorsFile::Open(dir / "a.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  uint64_t header_len;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ((*file)->metadata().at("step"), "12");
  ASSERT_EQ((*file)->tensors().size(), want.size());
  for (const Want& t : want) {
    const TensorInfo* info = (*file)->Find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->dtype, t.dtype);
    EXPECT_EQ(info->shape, t.shape);
    auto bytes = (*file)->Bytes(*info);
    EXPECT_EQ(std::vector<uint8_t>(bytes.begin(), bytes.end()), t.bytes)
        << t.name;
    EXPECT_EQ((8 + header_len + info->begin) % DTypeSize(t.dtype), 0u)
        << t.name << " misaligned";
  }
  EXPECT_FALSE((*file)->Get("nope").ok());
  EXPECT_THAT(std::string((*file)->Get("nope").status().message()),
              AllOf(HasSubstr("a.safetensors"), HasSubstr("nope")));
}

TEST(SafetensorsTest, WriterRefusesDuplicatesAndLeavesNothingOnFailure) {
  TempDir dir;
  SafetensorsWriter w;
  ASSERT_TRUE(w.AddBytes("x", DType::kU8, {2}, Pattern(2, 1)).ok());
  EXPECT_FALSE(w.AddBytes("x", DType::kU8, {2}, Pattern(2, 1)).ok());
  EXPECT_FALSE(w.AddBytes("y", DType::kF32, {2}, Pattern(7, 1)).ok());
  ASSERT_TRUE(w.Add("z", DType::kU8, {4}, [](uint8_t*) {
                 return absl::InternalError("boom");
               }).ok());
  absl::Status s = w.Write(dir / "b.safetensors");
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(
      std::string(s.message()),
      AllOf(HasSubstr("b.safetensors"), HasSubstr("'z'"), HasSubstr("boom")));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "temporary left behind";
}

TEST(SafetensorsTest, LargeTensorsAreWrittenInPlaceAndChecksummed) {
  TempDir dir;
  const auto big =
      Pattern((6u << 20) + 6, 9);  // above the in-place threshold, odd size
  const auto small = Pattern(10, 4);
  SafetensorsWriter w;
  ASSERT_TRUE(w.AddBytes("small", DType::kU8, {10}, small).ok());
  ASSERT_TRUE(w.AddBytes("big", DType::kI16,
                         {3, static_cast<int64_t>(big.size() / 6)}, big)
                  .ok());
  ASSERT_TRUE(w.AddBytes("after", DType::kU8, {10}, small).ok());
  uint32_t crc = 0;
  ASSERT_TRUE(w.Write(dir / "big.safetensors", &crc).ok());
  const std::string raw = ReadFile(dir / "big.safetensors");
  EXPECT_EQ(crc,
            Crc32c({reinterpret_cast<const uint8_t*>(raw.data()), raw.size()}));
  auto file = SafetensorsFile::Open(dir / "big.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  auto b = (*file)->Bytes(*(*file)->Find("big"));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), big.begin(), big.end()));
  auto a = (*file)->Bytes(*(*file)->Find("after"));
  EXPECT_TRUE(std::equal(a.begin(), a.end(), small.begin(), small.end()));

  SafetensorsWriter bad;
  ASSERT_TRUE(
      bad.Add("huge", DType::kU8, {8 << 20},
              [](uint8_t*) { return absl::DataLossError("source gone"); })
          .ok());
  absl::Status s = bad.Write(dir / "bad.safetensors");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'huge'"));
  EXPECT_FALSE(std::filesystem::exists(dir / "bad.safetensors"));
}

// Writes an image made of a header text and `data_size` bytes of data.
std::string Image(const std::string& header, size_t data_size) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_size, '\x11');
}

struct Malformed {
  const char* label;
  std::string image;
  std::vector<std::string> must_name;  // besides the file name
};

std::vector<Malformed> MalformedCases() {
  const std::string ok =
      R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("b":{"dtype":"F16","shape":[2],"data_offsets":[16,20]}})";
  std::string truncated = Image(ok, 20);
  truncated.resize(truncated.size() - 3);
  std::string long_len = Image(ok, 20);
  uint64_t huge = 1000;
  std::memcpy(long_len.data(), &huge, 8);
  return {
      {"truncated data", truncated, {"'b'", "past the data region"}},
      {"truncated length prefix",
       std::string("\x05\x00\x00", 3),
       {"truncated"}},
      {"header length past end",
       long_len,
       {"header length 1000", "past the end"}},
      {"bad json", Image(R"({"w":{"dtype":"F32",)", 0), {"not valid JSON"}},
      {"not an object", Image("[1,2]", 0), {"header"}},
      {"overlap",
       Image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
             R"("v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
             12),
       {"'v'", "overlaps", "'w'"}},
      {"out of range",
       Image(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
       {"'w'", "past the data region"}},
      {"unknown dtype",
       Image(R"({"w":{"dtype":"F13","shape":[2],"data_offsets":[0,4]}})", 4),
       {"'w'", "dtype", "F13"}},
      {"shape vs bytes",
       Image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       {"'w'", "12 bytes", "span 8"}},
      {"hole",
       Image(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
             R"("v":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
             6),
       {"hole", "'v'"}},
      {"trailing bytes",
       Image(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 5),
       {"3 bytes after the last tensor"}},
      {"negative dim",
       Image(R"({"w":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}})", 2),
       {"'w'", "shape"}},
      {"missing offsets",
       Image(R"({"w":{"dtype":"U8","shape":[2]}})", 2),
       {"'w'", "data_offsets"}},
      {"bad metadata",
       Image(R"({"__metadata__":{"a":1}})", 0),
       {"__metadata__.a"}},
      {"overflowing shape",
       Image(
           R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})",
           4),
       {"'w'"}},
  };
}

TEST(SafetensorsTest, RefusesMalformedFilesNamingFileAndField) {
  TempDir dir;
  for (const Malformed& m : MalformedCases()) {
    const std::string path = dir / "bad.safetensors";
    WriteFile(path, m.image);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << m.label;
    const std::string msg(file.status().message());
    EXPECT_THAT(msg, HasSubstr(path)) << m.label;
    for (const std::string& s : m.must_name)
      EXPECT_THAT(msg, HasSubstr(s)) << m.label;
  }
  EXPECT_TRUE(absl::IsNotFound(
      SafetensorsFile::Open(dir / "absent.safetensors").status()));
}

// The parser is fed a corpus of mutated headers (what the libFuzzer target
// explores without bound): it must never crash, and whatever it accepts must
// satisfy the format's invariants.
TEST(SafetensorsTest, MutatedHeaderCorpusNeverCrashes) {
  SafetensorsWriter w;
  const auto all = AllDtypes();
  for (const Want& t : all)
    ASSERT_TRUE(w.AddBytes(t.name, t.dtype, t.shape, t.bytes).ok());
  w.SetMetadata({{"k", "v"}});
  TempDir dir;
  ASSERT_TRUE(w.Write(dir / "seed.safetensors").ok());
  const std::string seed = ReadFile(dir / "seed.safetensors");
  std::vector<std::string> corpus = {seed};
  for (const Malformed& m : MalformedCases()) corpus.push_back(m.image);
  std::mt19937_64 rng(1234);
  const std::string alphabet =
      "{}[],:\"0123456789-.eE FBUIdtypeshapedata_offsets\\\x00\xff";
  int accepted = 0, refused = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string img = corpus[rng() % corpus.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !img.empty(); ++e) {
      const size_t pos = rng() % img.size();
      switch (rng() % 6) {
        case 0:
          img[pos] = static_cast<char>(rng());
          break;
        case 1:
          img[pos] = alphabet[rng() % alphabet.size()];
          break;
        case 2:
          img.insert(pos, 1, alphabet[rng() % alphabet.size()]);
          break;
        case 3:
          img.erase(pos, 1 + rng() % 8);
          break;
        case 4:
          img.resize(pos);
          break;
        case 5: {  // keep the length prefix consistent with a grown/shrunk
                   // header
          uint64_t n = 0;
          if (img.size() >= 8) std::memcpy(&n, img.data(), 8);
          n += static_cast<int64_t>(rng() % 9) - 4;
          if (img.size() >= 8) std::memcpy(img.data(), &n, 8);
          break;
        }
      }
    }
    absl::Span<const uint8_t> span(reinterpret_cast<const uint8_t*>(img.data()),
                                   img.size());
    auto h = ParseSafetensorsImage(span, "mutant.safetensors");
    if (!h.ok()) {
      ++refused;
      ASSERT_THAT(std::string(h.status().message()),
                  HasSubstr("mutant.safetensors"));
      continue;
    }
    ++accepted;
    uint64_t n = 0;
    std::memcpy(&n, img.data(), 8);
    uint64_t covered = 0;
    for (const TensorInfo& t : h->tensors) {
      ASSERT_EQ(t.begin, covered);
      ASSERT_EQ(t.nbytes(),
                static_cast<uint64_t>(t.numel()) * DTypeSize(t.dtype));
      covered = t.end;
    }
    ASSERT_EQ(covered, img.size() - 8 - n);
  }
  EXPECT_GT(refused, 1000);
  EXPECT_GT(accepted,
            10);  // mutations in padding or values keep some files valid
}

std::vector<uint8_t> FromHex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(
        static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string ToHex(absl::Span<const uint8_t> b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (uint8_t x : b) {
    s += d[x >> 4];
    s += d[x & 15];
  }
  return s;
}

TEST(SafetensorsTest, ReadsFilesWrittenByPythonSafetensors) {
  TempDir dir;
  auto r = RunPython("st_interop.py", "write " + (dir / "py.safetensors") +
                                          " " + (dir / "py.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json want = json::parse(ReadFile(dir / "py.json"));
  auto file = SafetensorsFile::Open(dir / "py.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  using StrMap = std::map<std::string, std::string>;
  EXPECT_EQ((*file)->metadata(), want["metadata"].get<StrMap>());
  ASSERT_EQ((*file)->tensors().size(), want["tensors"].size());
  for (const auto& [name, t] : want["tensors"].items()) {
    const TensorInfo* info = (*file)->Find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(DTypeName(info->dtype), t["dtype"].get<std::string>()) << name;
    EXPECT_EQ(info->shape, t["shape"].get<std::vector<int64_t>>()) << name;
    auto bytes = (*file)->Bytes(*info);
    EXPECT_EQ(std::vector<uint8_t>(bytes.begin(), bytes.end()),
              FromHex(t["hex"]))
        << name;
  }
}

TEST(SafetensorsTest, FilesWeWriteLoadInPythonSafetensors) {
  TempDir dir;
  SafetensorsWriter w;
  json desc;
  const auto all = AllDtypes();
  for (const Want& t : all) {
    ASSERT_TRUE(w.AddBytes(t.name, t.dtype, t.shape, t.bytes).ok());
    desc["tensors"][t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                               {"shape", t.shape},
                               {"hex", ToHex(t.bytes)}};
  }
  desc["metadata"] = {{"format", "pt"}, {"by", "gemma"}};
  w.SetMetadata({{"format", "pt"}, {"by", "gemma"}});
  ASSERT_TRUE(w.Write(dir / "ours.safetensors").ok());
  WriteFile(dir / "ours.json", desc.dump());
  auto r = RunPython("st_interop.py", "check " + (dir / "ours.safetensors") +
                                          " " + (dir / "ours.json"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("st_interop: OK 12 tensors"));
}

TEST(Crc32cTest, MatchesKnownVectors) {
  const std::string s = "123456789";
  EXPECT_EQ(Crc32c({reinterpret_cast<const uint8_t*>(s.data()), s.size()}),
            0xE3069283u);
  std::vector<uint8_t> zeros(32, 0);
  EXPECT_EQ(Crc32c(zeros), 0x8A9136AAu);
  // Chained equals whole.
  auto p = Pattern(1000, 3);
  uint32_t a = Crc32c(absl::Span<const uint8_t>(p).subspan(0, 333));
  EXPECT_EQ(Crc32c(absl::Span<const uint8_t>(p).subspan(333), a), Crc32c(p));
}

}  // namespace
}  // namespace gemma
