#!/usr/bin/env python3
"""Loading a real-size checkpoint directory, ours against transformers, interleaved.

Each round runs, in a rotating order, `blip2 info --model DIR --dtype D` for every --bin
and `Blip2ForConditionalGeneration.from_pretrained(DIR, dtype=...)` in a fresh Python
process, each under /usr/bin/time (wall seconds and peak RSS of the whole process). For
transformers the from_pretrained call alone is timed too (the process also imports torch).
Prints the medians and the ratios to transformers. Linux (needs /usr/bin/time).

    tools/bench/.venv/bin/python tools/bench/make_checkpoint.py --preset opt-2.7b \\
        --dtype f16 --out /tmp/opt-2.7b-f16
    tools/bench/.venv/bin/python tools/bench/load_vs_torch.py --model /tmp/opt-2.7b-f16 \\
        --dtype f32 --bin target/release/blip2 [--bin OTHER_BLIP2] [--rounds 3]

--dtype f32 compares with from_pretrained(dtype=torch.float32) (both convert the stored
f16 to f32); f16 with dtype=torch.float16.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

TORCH_LOAD = """
import sys, time, torch
from transformers import Blip2ForConditionalGeneration
torch.set_num_threads({threads})
t = time.perf_counter()
m = Blip2ForConditionalGeneration.from_pretrained({model!r}, dtype=torch.{dtype})
print("from_pretrained_s", time.perf_counter() - t, file=sys.stderr)
"""


def timed(cmd, env=None):
    """(wall seconds, peak RSS GiB, stderr) of `cmd` under /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r") as f:
        p = subprocess.run(["/usr/bin/time", "-o", f.name, "-f", "%e %M"] + cmd,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env=env)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
        wall, kib = f.read().split()[-2:]
    return float(wall), int(kib) / 2**20, p.stderr


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint directory (make_checkpoint.py)")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    p.add_argument("--bin", action="append", required=True, help="a blip2 binary (repeatable)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch_dtype = {"f32": "float32", "f16": "float16"}[a.dtype]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    runs = {}
    names = [f"ours {b}" for b in a.bin] + ["transformers"]
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if name == "transformers":
                code = TORCH_LOAD.format(threads=a.threads, model=a.model, dtype=torch_dtype)
                wall, rss, err = timed([sys.executable, "-c", code], env)
                inner = float(err.split("from_pretrained_s")[-1].split()[0])
                runs.setdefault(name, []).append((wall, rss, inner))
            else:
                b = name[len("ours "):]
                wall, rss, _ = timed([b, "info", "--model", a.model, "--dtype", a.dtype], env)
                runs.setdefault(name, []).append((wall, rss, wall))
            w, m, i = runs[name][-1]
            print(f"round {r + 1}: {name}: {w:.2f} s, peak RSS {m:.2f} GiB"
                  + (f" (from_pretrained {i:.2f} s)" if name == "transformers" else ""),
                  flush=True)
    med = {n: [statistics.median(x[k] for x in v) for k in range(3)] for n, v in runs.items()}
    tw, trss, tinner = med["transformers"]
    print(f"\nmedians of {a.rounds} rounds, --dtype {a.dtype}, {a.threads} threads")
    print(f"transformers: process {tw:.2f} s (from_pretrained {tinner:.2f} s), "
          f"peak RSS {trss:.2f} GiB")
    for n in names[:-1]:
        w, rss, _ = med[n]
        print(f"{n}: {w:.2f} s ({w / tinner:.2f}x from_pretrained, {w / tw:.2f}x the process), "
              f"peak RSS {rss:.2f} GiB ({rss / trss:.2f}x)")


if __name__ == "__main__":
    main()
