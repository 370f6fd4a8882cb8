#!/usr/bin/env bash
# Throughput of `blip2 serve` with 1 client at a time and with 16 concurrent clients, measured
# with wrk (a real HTTP load generator) on /v1/chat/completions (one caption per request).
#
#   tools/serve/loadtest.sh [BIN] [-- extra serve flags]
#   tools/serve/loadtest.sh target/release/blip2                         (demo model)
#   tools/serve/loadtest.sh target/release/blip2 -- --preset opt-2.7b --dtype q8
#
# The feature cache is off (--cache-images 0) so that every request runs the vision tower:
# images/s counts whole requests (vision + Q-Former + prefill + decode). Env: DURATION (s,
# default 20), CONCURRENCY (default 16), MAX_TOKENS (default 20; with min_tokens equal, so
# every request decodes the same number of tokens), IMAGE (default examples/three_shapes.png).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/blip2}
shift || true
[[ "${1:-}" == "--" ]] && shift
DURATION=${DURATION:-20}
CONC=${CONCURRENCY:-16}
MAX_TOKENS=${MAX_TOKENS:-20}
IMAGE=${IMAGE:-examples/three_shapes.png}
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
BODY=$tmp/body.json
printf '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,%s"}}]}],"max_tokens":%d,"min_tokens":%d}' \
  "$(base64 -w0 "$IMAGE")" "$MAX_TOKENS" "$MAX_TOKENS" > "$BODY"
export BODY

"$BIN" serve --port 0 --device cpu --quiet --cache-images 0 --max-batch "$CONC" --max-queue "$CONC" \
  --max-tokens "$MAX_TOKENS" "$@" > "$tmp/out" 2> "$tmp/err" &
pid=$!
for _ in $(seq 600); do [[ -s $tmp/out ]] && break; sleep 0.1; done
URL=$(head -1 "$tmp/out" | sed 's/^listening on //')
for _ in $(seq 6000); do curl -sf "$URL/health" >/dev/null && break; sleep 0.1; done
# Warm-up (pipelines, pools, page faults).
curl -sf "$URL/v1/chat/completions" -H 'content-type: application/json' -d @"$BODY" >/dev/null

run() { # connections threads
  wrk -c "$1" -t "$2" -d "${DURATION}s" --timeout 120s -s tools/serve/post.lua "$URL" > "$tmp/wrk$1"
  local rps non2xx
  rps=$(awk '/^Requests\/sec/ {print $2}' "$tmp/wrk$1")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$tmp/wrk$1")
  [[ -z "$non2xx" ]] || { echo "wrk -c $1: $non2xx non-2xx responses" >&2; cat "$tmp/wrk$1" >&2; exit 1; }
  echo "$rps"
}
batch_totals() { curl -s "$URL/metrics" | awk '/^blip2_batch_size_(sum|count) / {v[$1]=$2} END {print v["blip2_batch_size_sum"], v["blip2_batch_size_count"]}'; }
# Worker seconds by phase (vision, prefill, decode) and prefill batches (sum, count); zeros
# where the server has no such series.
phases() { curl -s "$URL/metrics" | awk -F'[ "]' '/^blip2_worker_seconds_total/ {v[$2]=$NF} /^blip2_prefill_batch_size_(sum|count) / {v[$1]=$2} END {printf "%s %s %s %s %s\n", v["vision"]+0, v["prefill"]+0, v["decode"]+0, v["blip2_prefill_batch_size_sum"]+0, v["blip2_prefill_batch_size_count"]+0}'; }
one=$(run 1 1)
read -r s0 c0 < <(batch_totals)
read -r v0 p0 d0 ps0 pc0 < <(phases)
many=$(run "$CONC" 2)
read -r s1 c1 < <(batch_totals)
read -r v1 p1 d1 ps1 pc1 < <(phases)
batches=$(awk -v a="$s0" -v b="$c0" -v x="$s1" -v y="$c1" 'BEGIN {m = 0; if (y > b) m = (x - a) / (y - b); printf "%.1f", m}')
echo "model: $(curl -s "$URL/v1/models" | sed 's/.*"id":"\([^"]*\)".*/\1/')  max_tokens=$MAX_TOKENS  duration=${DURATION}s  cpus=$(nproc)"
echo "1 client:    $one images/s"
echo "$CONC clients:  $many images/s (mean batch: $batches requests)"
awk -v a="$one" -v b="$many" 'BEGIN {printf "ratio:       %.2fx\n", b / a}'
awk -v n="$CONC" -v t="$DURATION" -v v0="$v0" -v v1="$v1" -v p0="$p0" -v p1="$p1" -v d0="$d0" -v d1="$d1" \
  -v s0="$ps0" -v s1="$ps1" -v c0="$pc0" -v c1="$pc1" 'BEGIN {
    v = v1 - v0; p = p1 - p0; d = d1 - d0
    if (v + p + d > 0) printf "worker (%d clients): vision %.1f s, prefill %.1f s, decode %.1f s in %d s; mean prefill batch %.1f\n",
      n, v, p, d, t, (c1 > c0 ? (s1 - s0) / (c1 - c0) : 0)
  }'
