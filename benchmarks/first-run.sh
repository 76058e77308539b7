#!/usr/bin/env bash
# What a newcomer waits for, measured from a fresh clone with an empty target/ (cargo's
# registry cache may be warm; the system packages may be missing, `make` installs them):
#
#   1. `make run` until the first generated token of a streamed invocation of an example;
#   2. with --test, `make test` in a second fresh clone, to the end of the whole suite.
#
#   benchmarks/first-run.sh [--test] [REPO]     # REPO defaults to this checkout's HEAD
#
# Prints a Markdown table for benchmarks/README.md ("First run"). Each clone is built on its
# own (CARGO_TARGET_DIR is unset), on whatever else this machine is doing: run it on an idle
# machine.
set -euo pipefail
cd "$(dirname "$0")/.."
with_test=0
[ "${1:-}" = "--test" ] && { with_test=1; shift; }
repo=${1:-$PWD}
port=${FIRST_RUN_PORT:-18080}
work=$(mktemp -d /tmp/genrt-first-run.XXXXXX)
server=""
cleanup() {
  [ -n "$server" ] && kill -TERM -- "-$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
unset CARGO_TARGET_DIR

clone() { # clone <dir>: a fresh clone; the model is fetched by make, as a newcomer's is
  git clone -q "$repo" "$1"
}

clone "$work/run"
start=$(date +%s.%N)
# setsid: the server and everything make started form one process group, stopped together.
setsid bash -c "cd '$work/run' && GENRT_PORT=$port exec make run" >"$work/run.log" 2>&1 &
server=$!
base="http://127.0.0.1:$port"
until grep -q "genrt is running" "$work/run.log"; do
  if ! kill -0 "$server" 2>/dev/null; then
    tail -40 "$work/run.log" >&2
    echo "first-run: make run stopped before the server was up" >&2
    exit 1
  fi
  sleep 1
done
ready=$(date +%s.%N)
token=$(sed -n 's/^ *export TOKEN=//p' "$work/run.log" | head -1)
# The first `token` event of a streamed invocation of one of the deployed examples.
first=""
while IFS= read -r line; do
  if [[ $line == "event: token"* ]]; then
    first=$(date +%s.%N)
    break
  fi
done < <(curl -sN -X POST "$base/v1/functions/news-brief/invoke" \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"input": {"topic": "a new solar farm opens near the coast"}, "stream": true}')
[ -n "$first" ] || { tail -40 "$work/run.log" >&2; echo "first-run: no token streamed" >&2; exit 1; }
kill -TERM -- "-$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
server=""
secs() { python3 -c "print(f'{$2 - $1:.0f}')"; }
build_s=$(grep -o 'Finished `release` profile .* in [0-9.]*m\? \?[0-9.]*s' "$work/run.log" | tail -1 || true)

echo "| step | seconds | command |"
echo "|---|---|---|"
echo "| make run: start to server ready (packages, model, build, examples deployed) | $(secs "$start" "$ready") | \`make run\` in a fresh clone |"
echo "| make run: start to first streamed token | $(secs "$start" "$first") | then \`POST /v1/functions/news-brief/invoke\` with \`\"stream\": true\` |"
[ -n "$build_s" ] && echo "| (cargo's own report) | | $build_s |"

if [ "$with_test" = 1 ]; then
  rm -rf "$work/run"
  clone "$work/test"
  start=$(date +%s.%N)
  if (cd "$work/test" && make test) >"$work/test.log" 2>&1; then
    echo "| make test: the whole suite | $(secs "$start" "$(date +%s.%N)") | \`make test\` in a second fresh clone |"
  else
    tail -60 "$work/test.log" >&2
    echo "first-run: make test failed after $(secs "$start" "$(date +%s.%N)") s" >&2
    exit 1
  fi
fi
