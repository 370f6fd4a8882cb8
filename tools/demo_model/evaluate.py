#!/usr/bin/env python3
"""Evaluate a BLIP-2 checkpoint with `transformers` greedy generation on scenes written by
`blip2 demo-scene --count` (DIR/scenes.jsonl + DIR/{seed}.png): caption exact match and VQA accuracy
by question type, case and a trailing period aside. Writes every prediction to --out (JSON).

Example (the held-out set of docs/demo-model.md):
  blip2 demo-scene --seed 9000000 --count 1000 --out-dir target/demo-model/eval
  tools/fixtures/.venv/bin/python tools/demo_model/evaluate.py --model assets/demo-model \
      --scenes target/demo-model/eval --out target/demo-model/eval_transformers.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import Blip2ForConditionalGeneration, Blip2Processor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import evaluate, format_summary, load_scenes  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="save_pretrained directory")
    p.add_argument("--scenes", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--fixture", default=None, help="compact predictions of the first --fixture-scenes scenes")
    p.add_argument("--fixture-scenes", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # The f16 weights upcast to f32, as our engine runs them by default.
    model = Blip2ForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    processor = Blip2Processor.from_pretrained(args.model)
    records, images = load_scenes(args.scenes, args.limit)
    res = evaluate(model, processor, records, images, args.max_new_tokens)
    print(format_summary(res["summary"]))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    if args.fixture:
        seeds = [r["seed"] for r in records[: args.fixture_scenes]]
        keep = set(seeds)
        fixture = {
            "description": f"transformers {transformers.__version__} greedy predictions of {args.model} "
            f"(f16 file loaded as f32) on scenes {seeds[0]}..{seeds[-1]}, from tools/demo_model/evaluate.py --fixture",
            "captions": [{"seed": c["seed"], "got": c["got"]} for c in res["captions"] if c["seed"] in keep],
            "qa": [
                {"seed": q["seed"], "question": q["question"], "got": q["got"]} for q in res["qa"] if q["seed"] in keep
            ],
        }
        Path(args.fixture).write_text(json.dumps(fixture, indent=1) + "\n")


if __name__ == "__main__":
    main()
