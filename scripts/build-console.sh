#!/usr/bin/env bash
# Builds the web console (console/: Preact + Vite, TypeScript checked against the SDK's types
# generated from the OpenAPI document) into console/dist, which the genrt binary embeds at
# compile time (runtime/build.rs). Installs its packages from the lockfile first when they are
# missing or older than the lockfile. `make run`, `make build` and `make test` call it.
set -euo pipefail
cd "$(dirname "$0")/../console"

if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# A build that fails part-way (after Vite, in the compression) must not leave a dist/ that
# make takes as up to date.
npm run --silent build || {
  rm -rf dist
  exit 1
}
