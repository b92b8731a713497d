// ByteCorpus::open and batch on an arbitrary text file, or a directory of such files (the
// input's last bytes choose the mode, the split, the batch shape, seed and batch index, which a
// checkpoint's step sets; the rest is the text). Bad files and arguments are coil::Error; a batch
// holds bytes of the chosen split only.
#include "fuzz_util.h"

#include <fuzzer/FuzzedDataProvider.h>

#include <coil/nn/lm_trainer.h>

using namespace coil;

namespace {

std::string file_path, dir_path;

void write_seeds(const std::string& dir) {
  fuzz::write_file(dir + "/fortune.txt",
                   "Q: How many programmers does it take to change a light bulb?\n"
                   "A: None, that's a hardware problem.\n%\n");
  fuzz::write_file(dir + "/tiny.txt", "ab");
  fuzz::write_file(dir + "/bytes.bin", std::string("\x00\xff\x80\x7f\n\r\t", 7) +
                                           std::string(64, 'x') + "\x01\x02\x03\x04\x05\x06");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_common();
  fuzz::write_seeds_if_asked(write_seeds);
  file_path = fuzz::temp_dir() + "/text";
  dir_path = fuzz::temp_dir() + "/texts";
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  FuzzedDataProvider in(data, size);
  const bool as_dir = in.ConsumeBool();
  const double val_fraction = in.ConsumeBool() ? 0.05 : in.ConsumeFloatingPoint<double>();
  const bool validation = in.ConsumeBool();
  const int64_t batch = in.ConsumeIntegralInRange<int64_t>(-1, 4);
  const int64_t L = in.ConsumeIntegralInRange<int64_t>(-1, static_cast<int64_t>(size) + 2);
  const uint64_t seed = in.ConsumeIntegral<uint64_t>();
  const int64_t index =
      in.ConsumeBool() ? in.ConsumeIntegralInRange<int64_t>(0, 100) : in.ConsumeIntegral<int64_t>();
  const std::string text = in.ConsumeRemainingBytesAsString();

  std::string path = file_path;
  if (as_dir) {  // the text in up to three files, plus an index file and a link to skip
    std::error_code ec;
    fs::remove_all(dir_path, ec);
    fs::create_directories(dir_path);
    const size_t third = text.size() / 3;
    fuzz::write_file(dir_path + "/b", text.substr(0, third));
    fuzz::write_file(dir_path + "/a", text.substr(third, third));
    fuzz::write_file(dir_path + "/c.dat", "skipped");
    fuzz::write_file(dir_path + "/c", text.substr(2 * third));
    fs::create_symlink("a", dir_path + "/d", ec);
    path = dir_path;
  } else {
    fuzz::write_file(file_path, text);
  }
  try {
    nn::ByteCorpus c = nn::ByteCorpus::open(path, val_fraction);
    fuzz::require(c.size() == static_cast<int64_t>(text.size()), "corpus size");
    fuzz::require(c.train_size() >= 0 && c.train_size() <= c.size(), "train split");
    Tensor b = c.batch(validation, batch, L, seed, index);
    fuzz::require(b.dtype() == kI64 && b.sizes() == Shape({batch, L + 1}), "batch shape");
    const int64_t* v = b.data_ptr<int64_t>();
    for (int64_t i = 0; i < b.numel(); ++i) fuzz::require(v[i] >= 0 && v[i] < 256, "a byte");
  } catch (const Error&) {
  }
  return 0;
}
