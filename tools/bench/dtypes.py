#!/usr/bin/env python3
"""Weight dtypes side by side: `blip2 bench --json` for each dtype, rounds interleaved
(f16, q8, q4, f16, q8, q4, ...) so machine noise hits every dtype alike, then the median of
each stage and its ratio to the first dtype. Standard library only.

    python3 tools/bench/dtypes.py --bin target/release/blip2 --preset opt-2.7b \
        --dtypes f16 q8 q4 --rounds 3 [--new-tokens 16] [--device cpu] [--compare-f32]

A dtype may carry environment settings after `+`, for an A/B of a kernel switch in the same
interleaved run: `--dtypes q8 q8+BLIP2_CPU_VNNI=0`, and another binary after `@`, for an
A/B of two builds: `--dtypes f16@old/blip2 f16`. Each bench process is fresh (its own
load and peak RSS). `--compare-f32` adds the prompt
logits' cosine similarity to the f32 model of the same seed (one extra run per dtype, after
the timed rounds, since it needs the f32 model's memory).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

STAGES = [
    ("load_random_weights", "load (random weights)", "ms"),
    ("vision", "vision", "ms"),
    ("qformer", "qformer", "ms"),
    ("prefill", "prefill", "ms"),
    ("per_token_decode", "decode per token", "ms"),
]


def run(args, spec, extra=()):
    # "q8@BIN+NAME=VALUE+..." = dtype q8, run by BIN (default --bin), with those
    # environment variables set.
    head, *assignments = spec.split("+")
    dtype, _, binary = head.partition("@")
    env = dict(os.environ)
    for a in assignments:
        name, sep, value = a.partition("=")
        if not sep:
            sys.exit(f"bad environment setting {a!r} in {spec!r}: expected NAME=VALUE")
        env[name] = value
    cmd = [binary or args.bin, "bench", "--preset", args.preset, "--device", args.device,
           "--dtype", dtype, "--new-tokens", str(args.new_tokens), "--runs", "1", "--json",
           *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/blip2")
    p.add_argument("--preset", default="opt-2.7b")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["f16", "q8", "q4"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--compare-f32", action="store_true")
    p.add_argument("--save", help="also write every run's JSON here")
    args = p.parse_args()

    results = {d: [] for d in args.dtypes}
    for r in range(args.rounds):
        for d in args.dtypes:
            results[d].append(run(args, d))
            print(f"round {r + 1}/{args.rounds} {d}: done", file=sys.stderr)
            if args.save:
                with open(args.save, "w") as f:
                    json.dump(results, f)

    def med(d, f):
        return statistics.median(f(x) for x in results[d])

    rows = [(label, lambda x, k=key: x["timings_ms"][k]) for key, label, _ in STAGES]
    rows.append(("peak RSS (GiB)", lambda x: x["peak_rss_bytes"] / 2**30))
    rows.append(("weights (GiB)", lambda x: x["weights"]["bytes"] / 2**30))
    base = args.dtypes[0]
    first = results[base][0]
    print(f"preset {args.preset}, device {first['device']} ({first['backend']}), "
          f"{args.new_tokens} new tokens, {args.rounds} interleaved rounds: medians")
    w = max(12, *(len(d) + 2 for d in args.dtypes))
    names = [f"#{i}" for i in range(len(args.dtypes))] if w > 24 else args.dtypes
    if w > 24:
        w = 12
        for n, d in zip(names, args.dtypes):
            print(f"{n} = {d}")
    head = f"{'stage':<24}" + "".join(f"{n:>{w}}" for n in names)
    head += "".join(f"{n + '/' + names[0]:>{w}}" for n in names[1:])
    print(head)
    for label, f in rows:
        vals = [med(d, f) for d in args.dtypes]
        line = f"{label:<24}" + "".join(f"{v:>{w}.2f}" for v in vals)
        line += "".join(f"{v / vals[0]:>{w}.3f}" if vals[0] else f"{'-':>{w}}" for v in vals[1:])
        print(line)
    if args.compare_f32:
        cos = {d: run(args, d, ["--compare-f32"])["logits_cosine_vs_f32"] for d in args.dtypes}
        print("prompt logits cosine vs f32: " + ", ".join(f"{d} {c:.6f}" for d, c in cos.items()))


if __name__ == "__main__":
    main()
