#!/usr/bin/env bash
# Installs the Debian packages genrt needs, only those not installed yet, decided by package
# state (dpkg-query) rather than by globbing for files: a glob such as `libclang*.so*` also
# matches libclang-cpp, the C++ interface a fresh machine has, which is not what bindgen loads.
#
#   cmake, g++, libclang-dev  llama.cpp, built through llama-cpp-2 (CMake + bindgen)
#   postgresql                the Postgres end-to-end tests (a throwaway cluster per run)
#   python3, python3-pip,     the model's download (PyPI), the API fuzz run and the manifest
#   python3-venv              check (tools in virtual environments under target/)
#   openssl                   signatures computed independently of our code in webhook tests
#   nodejs, npm               the TypeScript SDK and its tests
#   curl                      `make run` waits for the server and deploys the examples with it
#   chromium                  with --browser only (`make test`): the console's browser tests,
#                             driven by playwright-core from npm; never a browser download
#
# Ends with a check of every build prerequisite, so a missing one is named here, before
# compilation starts, rather than minutes later inside a build script.
set -euo pipefail

browser=0
for arg in "$@"; do
  case "$arg" in
  --browser) browser=1 ;;
  *)
    echo "install-deps: unknown option $arg (only --browser)" >&2
    exit 2
    ;;
  esac
done

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in cmake g++ make libclang-dev postgresql openssl curl; do
    installed "$pkg" || missing+=("$pkg")
  done
  if [ "$browser" -eq 1 ]; then
    installed chromium || missing+=(chromium)
  fi
  # A Python or Node.js installed outside Debian's packages (pyenv, nodesource) serves as well.
  command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1 ||
    missing+=(python3 python3-pip)
  # Virtual environments hold the Python tools of the checks (schemathesis, check-deploy).
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    missing+=(nodejs npm)
  fi
else
  echo "install-deps: not a Debian system; checking the prerequisites only" >&2
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# What the build needs, checked as the build will use it.
fail=0
need() { # need <what> <why>: a message naming the package to install
  echo "missing build prerequisite: $1 ($2)" >&2
  fail=1
}
command -v cargo >/dev/null 2>&1 || need "cargo" "install a Rust toolchain, 1.85 or newer"
command -v cmake >/dev/null 2>&1 || need "cmake" "apt-get install cmake: llama.cpp's build"
command -v c++ >/dev/null 2>&1 || need "a C++ compiler" "apt-get install g++: llama.cpp's build"
# bindgen loads libclang.so (the unversioned link comes with libclang-dev); LIBCLANG_PATH,
# when set, is where it looks first.
if ! compgen -G "${LIBCLANG_PATH:-/nonexistent}/libclang*.so" >/dev/null &&
  ! compgen -G "/usr/lib/llvm-*/lib/libclang.so" >/dev/null &&
  ! compgen -G "/usr/lib/*/libclang.so" >/dev/null; then
  need "libclang.so" "apt-get install libclang-dev: bindgen, for llama-cpp-sys-2"
fi
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
  need "initdb" "apt-get install postgresql: the Postgres tests"
command -v npm >/dev/null 2>&1 || need "npm" "apt-get install nodejs npm: the SDK"
# The console's bundler (Vite 7) needs Node.js 20.19 or newer (or 22.12+).
if command -v node >/dev/null 2>&1 &&
  ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  need "Node.js >= 20.19 (found $(node --version))" "the console's build (Vite 7); Debian bookworm's nodejs is 18"
fi
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 ||
  need "python3 with venv" "apt-get install python3-venv: the API fuzz run and check-deploy"
if [ "$browser" -eq 1 ]; then
  command -v chromium >/dev/null 2>&1 || need "chromium" "apt-get install chromium: the console's browser tests"
fi
[ "$fail" -eq 0 ] || exit 1
