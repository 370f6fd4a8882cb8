#!/bin/bash
# Throughput and memory of `blip2 dataset caption` on the CPU (docs/performance.md).
#   tools/bench/dataset.sh [BLIP2_BINARY]       (default: target/debug/blip2 as `cargo test` builds it)
# 1. demo model, 500 demo scenes, batch 1 and 8, three interleaved runs each: images/s.
# 2. random-weight opt-2.7b (f16): 8 images at batch 1 and 16 at batch 8, one run each.
# 3. RSS over 10,000 demo scenes in one process (RSS logged every 1,000 rows).
# Each run writes to a fresh output directory and prints its stats' images_per_s and rss.
set -euo pipefail
BIN="${1:-target/debug/blip2}"
W="${WORK:-target/dataset-bench}"
mkdir -p "$W"
[ -d "$W/scenes10k" ] || "$BIN" demo-scene --seed 2000000 --count 10000 --out-dir "$W/scenes10k"
[ -d "$W/scenes500" ] || "$BIN" demo-scene --seed 3000000 --count 500 --out-dir "$W/scenes500"
[ -d "$W/scenes16" ] || "$BIN" demo-scene --seed 4000000 --count 16 --out-dir "$W/scenes16"
[ -d "$W/scenes8" ] || "$BIN" demo-scene --seed 4000000 --count 8 --out-dir "$W/scenes8"

# Prints one line per shard from the --json stats on stdin; $1 names the run.
read -r -d '' SUMMARY <<'PY' || true
import json, sys
for line in sys.stdin:
    s = json.loads(line)
    rss = ", ".join(f"{x['rows']}: {x['rss_mb']:.0f} MB" for x in s["rss"])
    print(f"{sys.argv[1]}: {s['rows']} rows, {s['errors']} errors, {s['seconds']:.2f} s, "
          f"{s['images_per_s']:.3g} images/s, RSS {rss} (peak {s['rss'][-1]['peak_mb']:.0f} MB)")
PY

run() { # NAME INPUT ARGS...
    local name=$1 input=$2; shift 2
    rm -rf "$W/out-$name"
    "$BIN" dataset caption --input "$input" --output "$W/out-$name" --device cpu --quiet --json "$@" \
        | python3 -c "$SUMMARY" "$name"
}

for rep in 1 2 3; do
    run "demo-b1-r$rep" "$W/scenes500" --batch-size 1
    run "demo-b8-r$rep" "$W/scenes500" --batch-size 8
done
run opt27-b1 "$W/scenes8" --preset opt-2.7b --dtype f16 --batch-size 1
run opt27-b8 "$W/scenes16" --preset opt-2.7b --dtype f16 --batch-size 8
run demo-10k "$W/scenes10k" --batch-size 8 --rss-every 1000
