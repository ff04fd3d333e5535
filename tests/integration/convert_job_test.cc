// The `convert` job as a user runs it: submitted to a real coordinator, run by
// a real worker, on tiny Gemma 3 models that transformers saved (the
// formats_tiny fixture) and a tiny Gemma 4 MoE model (gemma4_parity_data).
// HF -> ours (TP=2; Gemma 4: EP=2) -> HF must give back every tensor bit for
// bit, checked by Python's safetensors (an independent reader).
#include <sys/stat.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_fixture.h"

namespace gemma::testing {
namespace {

using ::testing::HasSubstr;

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string Fixture(const std::string& name) {
  return std::string(GEMMA_FORMATS_FIXTURES) + "/" + name;
}

// Compares every tensor of two HF folders with Python's safetensors.
int CompareHfFolders(const std::string& a, const std::string& b,
                     std::string* out) {
  const std::string script =
      "import sys, glob, torch\n"
      "from safetensors.torch import load_file\n"
      "def load(d):\n"
      "    t = {}\n"
      "    for f in sorted(glob.glob(d + '/*.safetensors')): "
      "t.update(load_file(f))\n"
      "    return t\n"
      "a, b = load(sys.argv[1]), load(sys.argv[2])\n"
      "assert a.keys() == b.keys(), (sorted(a.keys() ^ b.keys()))[:5]\n"
      "for k in a:\n"
      "    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k\n"
      "    assert torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), "
      "k\n"
      "print('identical', len(a), 'tensors')\n";
  return RunProgram({GEMMA_PYTHON_EXE, "-c", script, a, b}, out,
                    absl::Seconds(120));
}

TEST(ConvertJobTest, HfToShardedAndBackThroughTheCoordinatorIsBitExact) {
  for (const std::string model : {"vl_bf16_sharded", "text_f32"}) {
    SCOPED_TRACE(model);
    ASSERT_TRUE(Exists(Fixture(model) + "/config.json"))
        << "missing fixture " << model;
    LocalCluster cluster;
    ASSERT_TRUE(cluster.StartCoordinator());
    cluster.StartWorker();
    const std::string ckpt = cluster.dir() + "/ckpt";
    const std::string back = cluster.dir() + "/hf";
    const std::string to_ours = cluster.WriteRecipe(
        "to_ours.yaml",
        "kind: convert\nresources: {device: cpu}\nconvert: {input: " +
            Fixture(model) + ", output: " + ckpt + ", tp: 2}\n");
    std::string out;
    ASSERT_EQ(cluster.Ctl({"submit", "-f", to_ours, "--follow"}, &out), 0)
        << out;
    EXPECT_TRUE(Exists(ckpt + "/manifest.json"));
    EXPECT_TRUE(Exists(ckpt + "/rank-00000.safetensors"));
    EXPECT_TRUE(Exists(ckpt + "/rank-00001.safetensors"));
    EXPECT_FALSE(Exists(ckpt + ".tmp"));

    const std::string to_hf = cluster.WriteRecipe(
        "to_hf.yaml",
        "kind: convert\nresources: {device: cpu}\nconvert: {input: " + ckpt +
            ", output: " + back + ", to: hf}\n");
    ASSERT_EQ(cluster.Ctl({"submit", "-f", to_hf, "--follow"}, &out), 0) << out;
    ASSERT_EQ(CompareHfFolders(Fixture(model), back, &out), 0) << out;
    EXPECT_THAT(out, HasSubstr("identical"));
  }
}

// Gemma 4 (MoE, the parity fixture's tiny text model): HF -> ours at ep 2 ->
// HF, bit for bit; an ep that does not divide num_experts fails the job with
// the spec field and the config named.
TEST(ConvertJobTest, Gemma4AtEp2AndBackThroughTheCoordinatorIsBitExact) {
  const std::string hf = std::string(GEMMA4_PARITY_DATA) + "/gemma4_text/hf";
  ASSERT_TRUE(Exists(hf + "/config.json")) << "missing fixture " << hf;
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  cluster.StartWorker();
  const std::string ckpt = cluster.dir() + "/ckpt";
  const std::string back = cluster.dir() + "/hf";
  const std::string to_ours = cluster.WriteRecipe(
      "to_ours.yaml",
      "kind: convert\nresources: {device: cpu}\nconvert: {input: " + hf +
          ", output: " + ckpt + ", ep: 2}\n");
  std::string out;
  ASSERT_EQ(cluster.Ctl({"submit", "-f", to_ours, "--follow"}, &out), 0) << out;
  EXPECT_TRUE(Exists(ckpt + "/rank-00001.safetensors"));
  EXPECT_FALSE(Exists(ckpt + "/rank-00002.safetensors"));
  const std::string to_hf = cluster.WriteRecipe(
      "to_hf.yaml",
      "kind: convert\nresources: {device: cpu}\nconvert: {input: " + ckpt +
          ", output: " + back + ", to: hf}\n");
  ASSERT_EQ(cluster.Ctl({"submit", "-f", to_hf, "--follow"}, &out), 0) << out;
  ASSERT_EQ(CompareHfFolders(hf, back, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("identical"));

  const std::string bad = cluster.WriteRecipe(
      "bad.yaml", "kind: convert\nresources: {device: cpu}\nconvert: {input: " +
                      hf + ", output: " + cluster.dir() + "/ep3, ep: 3}\n");
  EXPECT_NE(cluster.Ctl({"submit", "-f", bad, "--follow"}, &out), 0) << out;
  std::string logs;
  cluster.Ctl({"list", "-o", "json"}, &logs);
  EXPECT_THAT(logs, HasSubstr("convert.ep"));
  EXPECT_THAT(logs, HasSubstr("num_experts 4"));
  EXPECT_FALSE(Exists(cluster.dir() + "/ep3"));
}

TEST(ConvertJobTest, AMissingInputFailsTheJobWithTheFileNamed) {
  LocalCluster cluster;
  ASSERT_TRUE(cluster.StartCoordinator());
  cluster.StartWorker();
  const std::string recipe = cluster.WriteRecipe(
      "bad.yaml", "kind: convert\nresources: {device: cpu}\nconvert: {input: " +
                      cluster.dir() + "/nope, output: " + cluster.dir() +
                      "/out}\n");
  std::string out;
  EXPECT_NE(cluster.Ctl({"submit", "-f", recipe, "--follow"}, &out), 0) << out;
  std::string logs;
  cluster.Ctl({"list", "-o", "json"}, &logs);
  EXPECT_THAT(logs, HasSubstr(cluster.dir() + "/nope"));
  EXPECT_FALSE(Exists(cluster.dir() + "/out"));
}

}  // namespace
}  // namespace gemma::testing
