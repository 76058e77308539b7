#!/usr/bin/env bash
# The console's browser tests, as `make test` runs them: Debian's Chromium (installed by
# scripts/install-deps.sh --browser) driven by playwright-core against a real genrt with the
# real model. Needs target/release/genrt built with the console embedded (scripts/build-console.sh
# before the cargo build). Screenshots land in target/console-screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."

export GENRT_BIN="${GENRT_BIN:-$(cd .. && pwd)/target/release/genrt}"
if [[ ! -x "$GENRT_BIN" ]]; then
  echo "console: $GENRT_BIN is missing; build it with: make build" >&2
  exit 1
fi
export CHROMIUM="${CHROMIUM:-$(command -v chromium || true)}"
if [[ -z "$CHROMIUM" ]]; then
  echo "console: Chromium is missing; install it with: scripts/install-deps.sh --browser" >&2
  exit 1
fi
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npx tsc --noEmit -p .
node --test --test-concurrency=1 --test-reporter=spec test/*.test.mjs
