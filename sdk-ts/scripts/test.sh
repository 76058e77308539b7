#!/usr/bin/env bash
# The SDK's whole check, as `make test` runs it last: install from the lockfile, check that the
# generated types match the runtime, build both module formats, lint the package (publint,
# attw), type-check, then the tests against a real genrt. Needs the workspace binaries
# (`cargo build --release --workspace --bins`) and the model under models/.
# GENRT_BIN overrides the genrt binary (default ../target/release/genrt).
set -euo pipefail
cd "$(dirname "$0")/.."

export GENRT_BIN="${GENRT_BIN:-$(cd .. && pwd)/target/release/genrt}"
if [[ ! -x "$GENRT_BIN" ]]; then
  echo "sdk-ts: $GENRT_BIN is missing; build it with: cargo build --release --workspace --bins" >&2
  exit 1
fi

timings=()
step() {
  local name=$1
  shift
  local start=$SECONDS
  echo "==> $name"
  "$@"
  timings+=("$(printf '%-16s %4ss' "$name" $((SECONDS - start)))")
}

total_start=$SECONDS
step "npm ci" npm ci --no-audit --no-fund --loglevel=error
step "generate:check" npm run --silent generate:check
step "build" npm run --silent build -- --silent
step "typecheck" npx tsc --noEmit -p .
step "publint" npx publint --strict
step "attw" npx attw --pack . --quiet
step "tests" node --test --test-concurrency=1 --test-reporter=spec test/*.test.mjs

echo "==> timings"
printf '  %s\n' "${timings[@]}"
echo "  total            $((SECONDS - total_start))s"
