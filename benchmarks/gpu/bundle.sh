#!/usr/bin/env bash
# Packs what benchmarks/gpu/run.sh needs on a machine with no network and no Rust toolchain
# into one file: the benchmark and model-writer binaries (stripped), the llama.cpp libraries
# and CPU backend modules they load, the SmolLM2 tokenizer (a vocabulary-only GGUF) and the
# llama.cpp sources for the CUDA build. About 25 MiB, inside the 64 MiB that travels to the lent
# GPU machine.
#
#   benchmarks/gpu/bundle.sh [OUT]        # default .device/gpu-bundle.tar.gz
#
# The bundle runs on another machine, so by default it carries every CPU variant of llama.cpp
# (GGML_GENRT_CPU_VARIANTS=all), built apart in target/portable so that the local build, which
# has only this processor's (scripts/ggml-cpu.cmake), is not rebuilt. BUNDLE_CPU_VARIANTS=native
# packs the local build instead, for a run on this machine (`make bench-gpu-check`).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-.device/gpu-bundle.tar.gz}
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$model" ] || scripts/fetch-model.sh
case ${BUNDLE_CPU_VARIANTS:-all} in
  all) export GGML_GENRT_CPU_VARIANTS=all CARGO_TARGET_DIR=target/portable ;;
  native) unset GGML_GENRT_CPU_VARIANTS CARGO_TARGET_DIR ;;
  *) echo "bundle.sh: BUNDLE_CPU_VARIANTS must be all or native" >&2; exit 1 ;;
esac
cargo build --release -p genrt-benchmarks --bins
release=${CARGO_TARGET_DIR:-target}/release
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/llama.cpp"
for b in genrt-bench-gpu genrt-make-model; do
  strip -o "$stage/bin/$b" "$release/$b"
done
cp -P "$release"/libllama.so* "$release"/libllama-common.so* \
  "$release"/libggml.so* "$release"/libggml-base.so* \
  "$release"/libggml-cpu*.so "$stage/bin/"
"$release/genrt-make-model" --tokenizer "$model" --vocab-only --out "$stage/vocab.gguf"
src=$(scripts/llama-cpp-src.sh)
# What configuring llama.cpp reads, without the sources of backends other than CPU and CUDA.
tar -C "$src" -cf - \
  --exclude=ggml/src/ggml-vulkan --exclude=ggml/src/ggml-sycl --exclude=ggml/src/ggml-metal \
  --exclude=ggml/src/ggml-cann --exclude=ggml/src/ggml-opencl --exclude=ggml/src/ggml-webgpu \
  --exclude=ggml/src/ggml-hexagon --exclude=ggml/src/ggml-openvino --exclude=ggml/src/ggml-musa \
  CMakeLists.txt LICENSE cmake include src ggml vendor | tar -C "$stage/llama.cpp" -xf -
mkdir -p "$(dirname "$out")"
tar czf "$out" -C "$stage" .
echo "wrote $out ($(du -h "$out" | cut -f1))"
