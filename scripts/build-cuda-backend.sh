#!/usr/bin/env bash
# Builds llama.cpp's CUDA backend module, libggml-cuda.so, from the same llama.cpp sources the
# genrt binary was built from, and puts it beside the binary, where genrt loads it at start
# (or into the folder given). Needs the CUDA toolkit (nvcc) and CMake; no network.
#
#   scripts/build-cuda-backend.sh [DEST]        # DEST: default target/release
#
# Environment:
#   CUDA_ARCHITECTURES  CMake CUDA architectures, default 90 (H100, H200); e.g. "80;90"
#   LLAMA_CPP_SRC       llama.cpp sources (CMakeLists.txt, cmake/, include/, src/, ggml/,
#                       vendor/ are read); default: the copy that
#                       llama-cpp-sys-2 vendors (scripts/llama-cpp-src.sh), so that the module's
#                       ABI matches the libggml-base.so the binary ships with
#   BUILD_DIR           CMake build folder, default target/cuda-backend
#   JOBS                parallel compile jobs, default: all cores
#   CUDA_FA             ON (default) or OFF: FlashAttention kernels, most of the compile time;
#                       without them llama.cpp attends with ordinary kernels
#
# llama.cpp is configured as llama-cpp-sys-2 configures it (the top-level project: the crate
# ships no ggml.pc.in, which ggml's folder needs as a project of its own), with every tool,
# test and example off, and only the ggml-cuda target is built: the CPU modules and libllama
# come from the cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${1:-target/release}
arch=${CUDA_ARCHITECTURES:-90}
build=${BUILD_DIR:-target/cuda-backend}
jobs=${JOBS:-$(nproc)}

src=${LLAMA_CPP_SRC:-$(scripts/llama-cpp-src.sh)}
[ -f "$src/CMakeLists.txt" ] && [ -f "$src/ggml/CMakeLists.txt" ] \
  || { echo "$src is not a llama.cpp source tree" >&2; exit 1; }

if ! command -v nvcc >/dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    if [ -x "$d/nvcc" ]; then
      export PATH="$d:$PATH"
      break
    fi
  done
fi
command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit" >&2; exit 1; }
command -v cmake >/dev/null || { echo "cmake not found" >&2; exit 1; }
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

echo "building libggml-cuda.so for CUDA architectures $arch from $src with $(nvcc --version | tail -1)"
started=$(date +%s)
# BACKEND_DL: a module loaded at run time, as genrt expects. NATIVE off: built for the named
# architectures, not the build machine. CPU off: the cargo build ships the CPU modules.
# GRAPHS on: llama.cpp's own build turns CUDA graphs on (ggml alone leaves them off), and
# decoding small batches is launch-bound without them. NCCL off: one GPU per model.
cmake -S "$src" -B "$build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON \
  -DGGML_BACKEND_DL=ON \
  -DGGML_CUDA=ON \
  -DGGML_CUDA_GRAPHS=ON \
  -DGGML_CUDA_FA="${CUDA_FA:-ON}" \
  -DGGML_CUDA_NCCL=OFF \
  -DGGML_CPU=OFF \
  -DGGML_NATIVE=OFF \
  -DGGML_CCACHE=OFF \
  -DLLAMA_BUILD_COMMON=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_APP=OFF \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" >"$build.configure.log" 2>&1 \
  || { tail -40 "$build.configure.log" >&2; exit 1; }
cmake --build "$build" --target ggml-cuda -j "$jobs"
module=$(find "$build" -name libggml-cuda.so -type f | head -1)
[ -n "$module" ] || { echo "the build made no libggml-cuda.so" >&2; exit 1; }
mkdir -p "$dest"
cp "$module" "$dest/libggml-cuda.so"
echo "wrote $dest/libggml-cuda.so in $(( $(date +%s) - started )) s"
