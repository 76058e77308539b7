#!/usr/bin/env bash
# Installs the system packages genrt needs, only those missing: cmake and libclang to build
# llama.cpp through llama-cpp-2, PostgreSQL for the end-to-end tests, curl for `make run`, Node
# and npm for the webhook signature interop test (tests/node).
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
  missing+=(libclang-dev)
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ! command -v python3 >/dev/null 2>&1; then
  missing+=(python3 python3-pip)
fi
# openssl computes GitHub-style signatures independently of our code in the webhook tests.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install a Rust toolchain (1.85 or newer)" >&2
  exit 1
fi
