// Distributed checkpoints. Suite "dist": a round trip at the running world size (1, 2, 4 ranks)
// into other placements. Suite "dist.dcp": CTest saves at 4 ranks ("save") and loads at 2 and
// at 1 ("load") from the folder in COIL_DCP_DIR.
#include <filesystem>
#include <random>

#include "../test_util.h"

using namespace coil;
namespace dist = coil::dist;
using dist::Partial;
using dist::Replicate;
using dist::Shard;

namespace {

Tensor values(const Shape& s, uint64_t seed, DType t = kF64) {
  Tensor x = zeros(s, Options(kF64));
  std::mt19937_64 g(seed);
  for (int64_t i = 0; i < x.numel(); ++i)
    x.data_ptr<double>()[i] = static_cast<double>(g() % 17) - 8;
  return x.to(t);
}

bool same(const Tensor& a, const Tensor& b) {
  return a.sizes() == b.sizes() && (a.to(kF64) - b.to(kF64)).abs().sum().item<double>() == 0;
}

// A folder every rank agrees on: rank 0's pid names it.
std::string shared_dir(const std::string& tag) {
  Tensor pid = full({1}, static_cast<double>(::getpid()), Options(kI64));
  dist::broadcast(pid, 0);
  return (std::filesystem::temp_directory_path() /
          ("coil_dcp_" + tag + "_" + std::to_string(pid.item<int64_t>())))
      .string();
}

// What "save" writes: a mix of placements on the world's mesh (2x2 at 4 ranks).
io::NamedTensors saved_state(const dist::DeviceMesh& flat) {
  io::NamedTensors s;
  s.emplace_back("a", dist::distribute_tensor(values({6, 5}, 1, kF32), flat, {Shard(0)}));
  s.emplace_back("b", dist::distribute_tensor(values({4, 7}, 2), flat, {Shard(1)}));
  s.emplace_back("c", values({3}, 3, kI64));
  s.emplace_back("d", dist::distribute_tensor(values({5, 3}, 4), flat, {Partial()}));
  if (dist::world_size() == 4) {
    dist::DeviceMesh mesh({2, 2}, {"dp", "tp"});
    s.emplace_back("e", dist::distribute_tensor(values({5, 6}, 5), mesh, {Shard(0), Shard(1)}));
  } else {
    s.emplace_back("e", dist::distribute_tensor(values({5, 6}, 5), flat, {Replicate()}));
  }
  return s;
}

// Targets with other placements, zero-filled, and the globals they must end up holding.
void load_and_check(const std::string& dir) {
  dist::DeviceMesh flat = dist::DeviceMesh::world();
  io::NamedTensors t;
  t.emplace_back("a", dist::distribute_tensor(zeros({6, 5}), flat, {Replicate()}));
  t.emplace_back("b", dist::distribute_tensor(zeros({4, 7}, Options(kF64)), flat, {Shard(0)}));
  t.emplace_back("c", zeros({3}, Options(kI64)));
  t.emplace_back("d", dist::distribute_tensor(zeros({5, 3}, Options(kF64)), flat, {Shard(1)}));
  t.emplace_back("e", dist::distribute_tensor(zeros({5, 6}, Options(kF64)), flat, {Partial()}));
  io::load_distributed(dir, t);
  CHECK(same(dist::full_tensor(t[0].second), values({6, 5}, 1, kF32)));
  CHECK(same(dist::full_tensor(t[1].second), values({4, 7}, 2)));
  CHECK(same(t[2].second, values({3}, 3, kI64)));
  CHECK(same(dist::full_tensor(t[3].second), values({5, 3}, 4)));
  CHECK(same(dist::full_tensor(t[4].second), values({5, 6}, 5)));
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("distributed checkpoint: save and load back into other placements") {
    const std::string dir = shared_dir("roundtrip");
    dist::DeviceMesh flat = dist::DeviceMesh::world();
    io::save_distributed(dir, saved_state(flat));
    CHECK(std::filesystem::exists(dir + "/metadata.json"));
    load_and_check(dir);
    // errors name the tensor and the file
    io::NamedTensors wrong = {{"a", zeros({6, 4})}};
    CHECK_THROWS_WITH_AS(io::load_distributed(dir, wrong), doctest::Contains("'a' is [6, 5]"),
                         Error);
    io::NamedTensors missing = {{"zz", zeros({1})}};
    CHECK_THROWS_WITH_AS(io::load_distributed(dir, missing), doctest::Contains("'zz' is not in"),
                         Error);
    dist::barrier();
    if (dist::rank() == 0) std::filesystem::remove_all(dir);
  }
}

TEST_SUITE("dist") {
  // Found by fuzz/fuzz_dcp: a piece with fewer offsets than its tensor has dims was read past them.
  TEST_CASE("distributed checkpoint: pieces outside their tensor or overlapping are errors") {
    if (dist::world_size() != 1) return;  // one rank rewrites the metadata
    const std::string dir = shared_dir("pieces");
    io::save_distributed(dir, {{"a", values({6, 5}, 1, kF32)}});
    const std::string meta = io::read_file(dir + "/metadata.json");
    auto piece = [](const char* offsets, const char* sizes) {
      return std::string(R"({"file": "shard-00000.safetensors", "offsets": )") + offsets +
             R"(, "sizes": )" + sizes + "}";
    };
    auto with_pieces = [&](const std::string& pieces) {
      io::write_text_file_atomic(
          dir + "/metadata.json",
          R"({"format": "coil.distributed_checkpoint", "version": 1, "world_size": 1,)"
          R"( "tensors": {"a": {"dtype": "F32", "shape": [6, 5], "pieces": [)" +
              pieces + "]}}}");
    };
    io::NamedTensors t = {{"a", zeros({6, 5})}};
    with_pieces(piece("[0, 0]", "[6]"));
    CHECK_THROWS_WITH_AS(io::load_distributed(dir, t), doctest::Contains("does not lie inside"),
                         Error);
    with_pieces(piece("[1, 0]", "[6, 5]"));
    CHECK_THROWS_WITH_AS(io::load_distributed(dir, t), doctest::Contains("does not lie inside"),
                         Error);
    with_pieces(piece("[0, 0]", "[6, 5]") + ", " + piece("[0, 0]", "[6, 5]"));
    CHECK_THROWS_WITH_AS(io::load_distributed(dir, t), doctest::Contains("overlap"), Error);
    io::write_text_file_atomic(dir + "/metadata.json", meta);
    io::load_distributed(dir, t);
    CHECK(same(t[0].second, values({6, 5}, 1, kF32)));
    std::filesystem::remove_all(dir);
  }
}

TEST_SUITE("dist.dcp") {
  TEST_CASE("save") {
    const char* dir = std::getenv("COIL_DCP_DIR");
    REQUIRE(dir);
    io::save_distributed(dir, saved_state(dist::DeviceMesh::world()));
  }
  TEST_CASE("load") {
    const char* dir = std::getenv("COIL_DCP_DIR");
    REQUIRE(dir);
    load_and_check(dir);
  }
}
