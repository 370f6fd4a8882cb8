#!/usr/bin/env bash
# Reproduce the bundled demo model (assets/demo-model/) from nothing: draw the scenes with the Rust
# generator, train the tokenizer and the model, export float16, evaluate the reloaded checkpoint.
#
# Usage: tools/demo_model/train.sh   (from anywhere; the committed run took 43 min on this project's
#        2-core machine, plus the release build of the blip2 binary)
# Environment:
#   BLIP2_BIN   scene generator binary taking `demo-scene --seed S --count N --out-dir DIR`
#               (default: target/release/blip2, built here with cargo)
#   WORK        scenes, checkpoints and evaluation output (default: target/demo-model)
#   OUT         exported model directory (default: assets/demo-model)
#   THREADS     torch intra-op threads (default 1: the committed weights were trained with 1, and the
#               thread count changes float summation order, hence the exact weights)
#   PYTHON      python3.11 used to create the venv (default python3.11)
# An interrupted run resumes from $WORK/checkpoint.pt (saved every 500 steps).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

work="${WORK:-target/demo-model}"
out="${OUT:-assets/demo-model}"
threads="${THREADS:-1}"

# Python: the fixtures venv has the identical pins; reuse it when present, else make our own.
fixtures_venv="$root/tools/fixtures/.venv"
venv="${DEMO_VENV:-$here/.venv}"
if [ -z "${DEMO_VENV:-}" ] && [ -x "$fixtures_venv/bin/python" ] &&
  cmp -s <(sed -n '/^torch==/,$p' "$here/requirements.txt") <(sed -n '/^torch==/,$p' "$fixtures_venv/.requirements.txt" 2>/dev/null); then
  venv="$fixtures_venv"
elif [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$venv/.requirements.txt"; then
  "${PYTHON:-python3.11}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.requirements.txt"
fi

# Scenes: training seeds 1000000..1039999, held-out evaluation seeds 9000000..9000999.
if [ -z "${BLIP2_BIN:-}" ]; then
  cargo build --release --bin blip2
  BLIP2_BIN="$root/target/release/blip2"
fi
"$BLIP2_BIN" demo-scene --seed 1000000 --count 40000 --out-dir "$work/train"
"$BLIP2_BIN" demo-scene --seed 9000000 --count 1000 --out-dir "$work/eval"

start=$(date +%s)
"$venv/bin/python" "$here/train.py" \
  --train-scenes "$work/train" --eval-scenes "$work/eval" --work "$work" --out "$out" \
  --steps 6000 --threads "$threads" 2>&1 | tee "$work/train.log"
echo "train.py finished in $(($(date +%s) - start)) s; evaluation in $work/eval_transformers.json"

# The committed model's transformers predictions on the first 40 held-out scenes, which
# tests/demo_model.rs compares our engine against text for text.
if [ "$out" = "assets/demo-model" ]; then
  "$venv/bin/python" "$here/evaluate.py" --model "$out" --scenes "$work/eval" --limit 40 \
    --threads "$threads" --fixture tests/fixtures/demo/transformers_predictions.json >/dev/null
fi
