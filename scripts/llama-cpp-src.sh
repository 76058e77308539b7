#!/usr/bin/env bash
# Prints the folder of the llama.cpp sources the build uses: the copy vendored in the
# llama-cpp-sys-2 crate that Cargo.lock pins, so that anything built from it (the CUDA
# backend) matches the libggml-base.so the genrt binary ships with.
set -euo pipefail
cd "$(dirname "$0")/.."
manifest=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "llama-cpp-sys-2":
        print(p["manifest_path"])
        break')
[ -n "$manifest" ] || { echo "llama-cpp-sys-2 not found by cargo metadata; set LLAMA_CPP_SRC" >&2; exit 1; }
echo "$(dirname "$manifest")/llama.cpp"
