#!/usr/bin/env bash
# The [engine] benchmark on an NVIDIA GPU: builds the CUDA backend module from the same
# llama.cpp sources, writes a ~1.2B-parameter test model (SmolLM2 tokenizer, random weights)
# that needs no download, and runs genrt-bench-gpu (1, 16 and 64 streams and cold start,
# against raw llama.cpp on the same GPU) into benchmarks/RESULTS-gpu.md.
#
# On a GPU machine with this repository and cargo:
#   benchmarks/gpu/run.sh
# On one without network or cargo (the lent H200): make the bundle here, carry it, then
#   benchmarks/gpu/bundle.sh                                  # → .device/gpu-bundle.tar.gz
#   GPU_BUNDLE=.device/gpu-bundle.tar.gz benchmarks/gpu/run.sh
#
# Environment:
#   GPU_BUNDLE   the bundle's path (binaries, libraries, CPU modules, tokenizer, ggml sources)
#   SKIP_CUDA=1  no CUDA build and no GPU needed: checks the benchmark itself on the CPU
#   MODEL_ARGS   extra genrt-make-model arguments (a smaller shape, another weight type)
#   BENCH_ARGS   extra genrt-bench-gpu arguments (e.g. "--streams 1,16 --runs 5")
#   OUT          results file, default benchmarks/RESULTS-gpu.md
#   CUDA_ARCHITECTURES, JOBS, CUDA_FA: passed to scripts/build-cuda-backend.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

work=${WORK_DIR:-$(mktemp -d /tmp/genrt-gpu-bench.XXXXXX)}
out=${OUT:-benchmarks/RESULTS-gpu.md}
log() { echo "[$(date +%T)] $*"; }
started=$(date +%s)

if [ -n "${GPU_BUNDLE:-}" ]; then
  mkdir -p "$work/bundle"
  tar xzf "$GPU_BUNDLE" -C "$work/bundle"
  bin=$work/bundle/bin
  vocab=$work/bundle/vocab.gguf
  export LLAMA_CPP_SRC=$work/bundle/llama.cpp
else
  bin=${BIN_DIR:-target/release}
  [ -x "$bin/genrt-bench-gpu" ] || cargo build --release -p genrt-benchmarks --bins
  vocab=${VOCAB:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
  [ -f "$vocab" ] || scripts/fetch-model.sh
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
fi
allow=()
if [ "${SKIP_CUDA:-0}" = 1 ]; then
  log "SKIP_CUDA=1: no CUDA backend; checking the benchmark on the CPU"
  allow=(--allow-cpu)
else
  log "building the CUDA backend into $bin"
  cuda_started=$(date +%s)
  BUILD_DIR=$work/cuda-build scripts/build-cuda-backend.sh "$bin"
  # The module links the CUDA runtime and cuBLAS: make the toolkit's libraries findable when
  # the dynamic loader's cache does not list them.
  nvcc_path=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
  nvcc_version=$({ [ -n "$nvcc_path" ] && "$nvcc_path" --version | tail -1; } || echo "nvcc")
  cuda_note="- CUDA backend: \`libggml-cuda.so\` built by scripts/build-cuda-backend.sh in $(( $(date +%s) - cuda_started )) s with $nvcc_version, architectures ${CUDA_ARCHITECTURES:-90}, FlashAttention kernels ${CUDA_FA:-ON}."
  if [ -n "$nvcc_path" ]; then
    cuda_home=$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")
    for d in "$cuda_home/lib64" "$cuda_home/targets/x86_64-linux/lib"; do
      if [ -d "$d" ]; then
        export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      fi
    done
  fi
fi

log "writing the test model"
# shellcheck disable=SC2086 # MODEL_ARGS is a list of arguments
"$bin/genrt-make-model" --tokenizer "$vocab" --out "$work/synthetic.gguf" ${MODEL_ARGS:-}

log "benchmarking"
# shellcheck disable=SC2086
"$bin/genrt-bench-gpu" --model "$work/synthetic.gguf" --backends-dir "$bin" --out "$out" \
  "${allow[@]}" ${BENCH_ARGS:-}
rm -f "$work/synthetic.gguf"
if [ -n "${cuda_note:-}" ]; then
  echo "$cuda_note" >>"$out"
fi
if command -v nvidia-smi >/dev/null; then
  echo "- GPU as nvidia-smi reports it: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)." >>"$out"
fi
log "done in $(( $(date +%s) - started )) s: $out"
