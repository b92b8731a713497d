// doctest's main, plus one rule: the GPU suite ("cuda") exits with 77 when this process has no
// GPU, which CTest reports as skipped rather than passed (SKIP_RETURN_CODE in CMakeLists.txt).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <coil/coil.h>

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--test-suite=cuda") == 0 && coil::cuda_device_count() == 0) {
      std::printf("cuda suite skipped: %s\n", coil::cuda_available()
                                                  ? "no GPU is usable by this process"
                                                  : "this build has no CUDA backend");
      return 77;
    }
  return doctest::Context(argc, argv).run();
}
