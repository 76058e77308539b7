#!/usr/bin/env bash
# Starts genrt on 127.0.0.1:8080 (GENRT_PORT to change) with SQLite under ./data, deploys the
# example functions, prints a token and a curl to try, and stays in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${GENRT_PORT:-8080}
BASE="http://127.0.0.1:$PORT"
BIN=target/release/genrt

"$BIN" serve --port "$PORT" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' INT TERM

for _ in $(seq 1 100); do
  if curl -fs "$BASE/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "genrt failed to start" >&2; exit 1; fi
  sleep 0.2
done

TOKEN=$("$BIN" token --tenant demo)
for f in functions/examples/*.json; do
  result=$(curl -fsS -X POST "$BASE/v1/functions" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' --data-binary @"$f")
  echo "deployed $f: $result"
done

cat <<MSG

genrt is running on $BASE (Ctrl-C stops it).
Token for tenant "demo":

  export TOKEN=$TOKEN

Console: $BASE/console/ (sign in with the token above)

Try:

  curl -s -X POST $BASE/v1/functions/product-description/invoke \\
    -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
    -d '{"input": {"product": "linen summer shirt", "category": "fashion", "features": ["breathable", "relaxed fit"]}}'

  curl -s -X POST $BASE/v1/functions/news-brief/invoke \\
    -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
    -d '{"input": {"topic": "a new solar farm opens near the coast"}}'

MSG
wait $server
