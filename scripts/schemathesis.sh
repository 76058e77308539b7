#!/usr/bin/env bash
# The schema-driven API fuzz run: schemathesis (from PyPI, in a virtual environment under
# target/) generates requests from genrt's own /openapi.json and sends them to a real genrt
# (SQLite, the SmolLM2 model, tiny generations). It fails on any 5xx answer
# (`not_a_server_error`) and on any status code the document does not list for the operation
# (`status_code_conformance`).
#
# Needs target/release/genrt (`cargo build --release -p genrt-runtime --bin genrt`) and the
# model (`make model`). SCHEMATHESIS_SEED (default 1) makes runs repeatable;
# SCHEMATHESIS_MAX_EXAMPLES (default 20) bounds the examples per operation,
# SCHEMATHESIS_MAX_TIME (default 150 s) the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
BIN=target/release/genrt
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-20}
MAX_TIME=${SCHEMATHESIS_MAX_TIME:-150}

[[ -x $BIN ]] || { echo "schemathesis.sh: $BIN is missing; run cargo build --release -p genrt-runtime --bin genrt" >&2; exit 1; }
[[ -f $MODEL ]] || { echo "schemathesis.sh: $MODEL is missing; run make model" >&2; exit 1; }

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "schemathesis.sh: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  # The newest Python at hand: hypothesis trips over a CPython 3.11 parser bug ("AST
  # constructor recursion depth mismatch") while describing its strategies.
  PYTHON=python3
  for candidate in python3.13 python3.12 \
    $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do
    if "$candidate" -c 'import venv, ensurepip' >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

WORK=$(mktemp -d -t genrt-schemathesis-XXXXXX)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
SECRET="schemathesis-secret-0123456789abcdef"
cat >"$WORK/genrt.toml" <<TOML
data_dir = "$WORK/data"

[server]
host = "127.0.0.1"
port = $PORT
workers = 2
shutdown_timeout_s = 5

[auth]
jwt_secret = "$SECRET"

[tenancy]
rate_limit_rps = 0

[[models]]
id = "smollm2-135m"
path = "$PWD/$MODEL"
n_ctx = 512
threads = 1
slots = 4
max_replicas = 1
TOML

"$BIN" serve --config "$WORK/genrt.toml" >"$WORK/genrt.log" 2>&1 &
server=$!
cleanup() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
  if curl -fs "$BASE/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then
    echo "schemathesis.sh: genrt failed to start:" >&2
    tail -20 "$WORK/genrt.log" >&2
    exit 1
  fi
  sleep 0.2
done

TOKEN=$("$BIN" token --config "$WORK/genrt.toml" --tenant fuzz)
# Something for the function routes to find: generations are tiny so that fuzzed invocations
# stay fast.
curl -fsS -X POST "$BASE/v1/functions" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d '{"name": "fuzz", "model": "smollm2-135m", "prompt": "Say hi to {{ name }}.", "params": {"max_tokens": 4, "temperature": 0}}' \
  >/dev/null

status=0
# The admin routes are left out: the tenant token only gets 403 there, and schemathesis cannot
# generate their bodies (the flattened limits make an allOf of two closed objects).
"$VENV/bin/schemathesis" run "$BASE/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  --phases examples,coverage,fuzzing \
  --workers 2 \
  --request-timeout 60 \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --no-color \
  --exclude-path-regex '^/v1/admin/' \
  2>&1 | tee "$WORK/schemathesis.out" || status=$?

# On a Python older than 3.12, schemathesis itself can fail on an operation with CPython's
# parser bug ("Runtime Error ... AST constructor recursion depth mismatch"): that is no finding
# about genrt, so a run whose only errors are that one, with no failures, passes.
if [[ $status -ne 0 ]] && ! grep -q "= FAILURES =" "$WORK/schemathesis.out" &&
  [[ $(grep -c "^Runtime Error" "$WORK/schemathesis.out") -gt 0 ]] &&
  [[ $(grep -c "^Runtime Error" "$WORK/schemathesis.out") -eq $(grep -cE "^(Runtime Error|Network Error|Schema Error|Connection|Timeout|Server error)" "$WORK/schemathesis.out") ]] &&
  grep -q "AST constructor recursion depth mismatch" "$WORK/schemathesis.out"; then
  echo "schemathesis.sh: schemathesis hit CPython's parser bug (use Python 3.12+); no failures found" >&2
  status=0
fi

if ! kill -0 "$server" 2>/dev/null; then
  echo "schemathesis.sh: genrt died during the run" >&2
  status=1
fi
if [[ $status -ne 0 ]]; then
  mkdir -p target
  cp "$WORK/genrt.log" target/schemathesis-genrt.log
  echo "schemathesis.sh: failures above; genrt's log is in target/schemathesis-genrt.log, its panics:" >&2
  grep -A3 "panicked" "$WORK/genrt.log" >&2 || true
fi
exit $status
