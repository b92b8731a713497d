#!/usr/bin/env bash
# The GPU check (issue 9): the CUDA suite, the NCCL communicator and group check (across the GPUs
# too, where there are several), the GPU benchmark (bench_cuda) and a short table, in under 5
# minutes on one GPU.
#
#   scripts/gpu_check.sh bundle   here, on a build machine: configures build-gpu for sm_90 (or
#                                 $GPU_ARCH), builds, and gathers the programs and the non-system
#                                 libraries they need into .gpu/ (git-ignored)
#   scripts/gpu_check.sh run      on the GPU machine, from the repository root with .gpu/ beside
#                                 it: runs everything and prints the table last
#   scripts/gpu_check.sh          both, on a machine that has the build tools and a GPU
#
# A GPU machine without Debian's build packages (OpenBLAS, OpenMPI, doctest) can still run the
# bundle: cuBLAS, the CUDA runtime and NCCL are taken from that machine's own CUDA or PyTorch.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
arch=${GPU_ARCH:-90}

bundle() {
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOIL_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCOIL_NATIVE=OFF -DCOIL_BUILD_BENCH=ON \
    -DCOIL_BUILD_EXAMPLES=OFF > build-gpu.configure.log 2>&1 || { cat build-gpu.configure.log; exit 1; }
  cmake --build build-gpu --target coil_tests nccl_check bench_cuda -j "$(nproc)" || exit 1
  rm -rf .gpu && mkdir -p .gpu/lib
  cp build-gpu/tests/coil_tests build-gpu/tests/nccl_check build-gpu/bench/bench_cuda .gpu/
  cp build-gpu/libcoil.so build-gpu/libcoil_nccl.so .gpu/lib/
  # every library the programs load that is not part of the C runtime or of CUDA
  for f in .gpu/coil_tests .gpu/nccl_check .gpu/bench_cuda .gpu/lib/libcoil.so; do
    ldd "$f" | awk '/=> \//{print $3}'
  done | sort -u | grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libgcc_s|libstdc\+\+)\.so|cuda|nccl|cublas' |
    while read -r lib; do cp -L "$lib" .gpu/lib/; done
  strip --strip-unneeded .gpu/coil_tests .gpu/nccl_check .gpu/bench_cuda .gpu/lib/*.so* 2>/dev/null
  du -sh .gpu
}

run() {
  [ -x .gpu/coil_tests ] || { echo "gpu_check: no bundle in .gpu/ (run '$0 bundle' first)"; exit 1; }
  # CUDA's and NCCL's shared libraries from this machine: the toolkit, else PyTorch's wheels
  local dirs=""
  for name in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnccl.so.2; do
    local hit
    hit=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$name" 2>/dev/null | head -1)
    [ -n "$hit" ] && dirs="$dirs:$(dirname "$hit")"
  done
  export LD_LIBRARY_PATH="$PWD/.gpu/lib$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  local results=()
  step() {  # name, command...
    local name=$1; shift
    local t0 rc ms
    t0=$(date +%s%N)
    "$@" > "gpu_$name.log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    tail -25 "gpu_$name.log"
    results+=("$(printf '%-16s %-8s %8d ms' "$name" "$([ $rc -eq 0 ] && echo pass || echo "FAIL:$rc")" "$ms")")
  }
  step cuda_suite .gpu/coil_tests --test-suite=cuda
  step nccl_check .gpu/nccl_check
  # the NCCL group across GPUs, one rank each, where there are several (and mpirun)
  local ngpu
  ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
  if [ "$ngpu" -ge 2 ] && command -v mpirun > /dev/null; then
    step nccl_ranks mpirun --allow-run-as-root --oversubscribe -np "$ngpu" -x LD_LIBRARY_PATH \
      .gpu/nccl_check
  fi
  step core_on_cpu .gpu/coil_tests --test-suite=core.tensor,ops.binary,ops.reduce,ops.softmax
  step bench_cuda .gpu/bench_cuda
  # ssd_scan's chunked kernels again on float32 FMAs instead of the tensor cores (A/B)
  step ssd_simt env COIL_SSD_SIMT=1 BENCH_CUDA_ONLY=ssd .gpu/bench_cuda
  # where the mamba-130m training step's time goes, per op (core/profiler.h; slower while on)
  step profile_train env COIL_PROFILE=1 BENCH_CUDA_ONLY=train .gpu/bench_cuda
  if [ -n "${OUT:-}" ]; then cp gpu_*.log "$OUT/" 2>/dev/null; fi
  echo
  echo "== gpu_check"
  printf '%s\n' "${results[@]}"
  grep -h "^bench=" gpu_bench_cuda.log gpu_ssd_simt.log 2>/dev/null
  grep -h "^profile" gpu_profile_train.log 2>/dev/null | head -25
}

case "$mode" in
  bundle) bundle ;;
  run) run ;;
  all) bundle && run ;;
  *) echo "usage: $0 [bundle|run]"; exit 2 ;;
esac
