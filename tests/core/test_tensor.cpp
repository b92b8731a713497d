#include "test_util.h"

using namespace coil;

TEST_SUITE("core.tensor") {
  TEST_CASE("metadata, 0-d tensors, item, from_blob") {
    Tensor x = zeros({2, 3, 4});
    CHECK(x.dim() == 3);
    CHECK(x.numel() == 24);
    CHECK(x.strides() == Shape{12, 4, 1});
    CHECK(x.size(-1) == 4);
    CHECK(x.nbytes() == 96);
    Tensor s = full({}, 3.5);
    CHECK(s.dim() == 0);
    CHECK(s.item<float>() == 3.5f);
    CHECK(s.item<int64_t>() == 3);
    ct::check_error([&] { x.item<float>(); }, {"item", "24 elements"});
    float buf[6] = {1, 2, 3, 4, 5, 6};
    Tensor b = from_blob(buf, {2, 3});
    buf[4] = 50;
    CHECK(b.t().contiguous().data_ptr<float>()[3] == 50);
    ct::check_error([&] { b.data_ptr<double>(); }, {"data_ptr", "float32", "float64"});
    std::ostringstream os;
    os << tensor(std::vector<float>{1.5, 2}, {1, 2});
    CHECK(os.str().find("1.5") != std::string::npos);
    CHECK(Device("cuda:1").index == 1);
    ct::check_error([] { Device("gpu"); }, {"Device", "gpu"});
    // a build without the CUDA backend says so when asked for a cuda tensor
    if (!cuda_available()) ct::check_error([] { ones({2}).to(Device(kCUDA)); }, {"CUDA", "cuda:0"});
  }

  TEST_CASE("version counter is shared by views and bumped by in-place ops") {
    Tensor x = zeros({4});
    Tensor v = x.slice(0, 1, 3);
    uint32_t v0 = x.version();
    v.fill_(1);
    CHECK(x.version() == v0 + 1);
    x.copy_(ones({4}));
    CHECK(v.version() == v0 + 2);
    ct::check_error([&] { x.copy_(ones({3})); }, {"copy_", "[3]", "[4]"});
  }

  TEST_CASE("thread control") {
    set_num_threads(1);
    CHECK(get_num_threads() == 1);
    set_num_threads(2);
    CHECK(get_num_threads() == 2);
    ct::check_error([] { set_num_threads(0); }, {"set_num_threads", "0"});
  }
}
