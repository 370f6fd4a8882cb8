#!/usr/bin/env python3
"""Soak tests of the `blip2` binary (issue 20, item 6): memory over long runs and identical
outputs under concurrency. Standard library only (no torch); Linux (/proc).

  soak.py caption    --bin BLIP2 [--count 10000]          (a) one process, many scenes
  soak.py concurrent --bin BLIP2 [--count 200 --procs 8]  (b) N processes, same images
  soak.py gpu        --bin BLIP2 [--count 2000 --batch-size 32]
                                                          (d) GPU batches, RSS over time

Scenes come from `blip2 demo-scene --count N --out-dir DIR` (kept in --work, reused when
already there). Memory is read from /proc/PID/status while the captioning process runs:
VmRSS (resident now) and VmHWM (peak resident), sampled every --interval seconds, with the
number of captions written so far (the `--json` lines of the output file).
"""

import argparse
import json
import os
import subprocess
import sys
import time


def scenes(bin_, work, count):
    d = os.path.join(work, f"scenes-{count}")
    have = len([f for f in os.listdir(d) if f.endswith(".png")]) if os.path.isdir(d) else 0
    if have < count:
        subprocess.run([bin_, "demo-scene", "--seed", "1", "--count", str(count), "--out-dir", d],
                       check=True, stdout=subprocess.DEVNULL)
    return d


def mem(pid):
    """(VmRSS, VmHWM) in MiB, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kv = dict(l.split(":", 1) for l in f if ":" in l)
        return tuple(int(kv[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
    except (FileNotFoundError, ProcessLookupError, KeyError):
        return None


def lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def watched_run(cmd, out, interval, marks):
    """Runs `cmd` with stdout to `out`; samples memory. Returns (samples, rc, seconds):
    samples are (seconds, captions done, rss MiB, hwm MiB)."""
    t0 = time.time()
    with open(out, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.PIPE)
    samples = []
    while p.poll() is None:
        m = mem(p.pid)
        if m:
            samples.append((time.time() - t0, lines(out), *m))
            if marks:
                s = samples[-1]
                print(f"  {s[0]:7.1f} s  {s[1]:6d} captions  VmRSS {s[2]:7.1f} MiB  VmHWM {s[3]:7.1f} MiB",
                      flush=True)
        time.sleep(interval)
    err = p.stderr.read().decode(errors="replace")
    if p.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    return samples, p.returncode, time.time() - t0


def at(samples, n):
    """The first sample with at least n captions done."""
    return next((s for s in samples if s[1] >= n), None)


def caption(a):
    d = scenes(a.bin, a.work, a.count)
    out = os.path.join(a.work, "caption.jsonl")
    cmd = ["nice", "-n", "10", a.bin, "caption", d, "--json", "--batch-size", str(a.batch_size)]
    cmd += ["--device", a.device]
    print("command:", " ".join(cmd))
    samples, rc, secs = watched_run(cmd, out, a.interval, a.verbose)
    got = lines(out)
    first = next((s for s in samples), None)
    report = {
        "command": " ".join(cmd), "exit": rc, "captions": got, "seconds": round(secs, 1),
        "start": first, "after_1000": at(samples, 1000), "end": samples[-1] if samples else None,
    }
    print(json.dumps(report, indent=1))
    return 0 if rc == 0 and got == a.count else 1


def concurrent(a):
    d = scenes(a.bin, a.work, a.count)
    procs = []
    for i in range(a.procs):
        out = os.path.join(a.work, f"concurrent-{i}.jsonl")
        cmd = ["nice", "-n", "10", a.bin, "caption", d, "--json"]
        f = open(out, "wb")
        procs.append((subprocess.Popen(cmd, stdout=f), f, out))
    t0 = time.time()
    outputs = []
    for p, f, out in procs:
        p.wait()
        f.close()
        with open(out) as g:
            outputs.append([json.loads(l) for l in g])
    secs = time.time() - t0
    # Texts and token ids per image (timings differ from run to run).
    by_image = [{r["image"]: (r.get("text"), r.get("token_ids")) for r in o} for o in outputs]
    ref = by_image[0]
    same = all(b == ref for b in by_image)
    rcs = [p.returncode for p, _, _ in procs]
    print(json.dumps({"processes": a.procs, "images": a.count, "captions_each": [len(o) for o in outputs],
                      "exit_codes": rcs, "identical": same, "seconds": round(secs, 1)}, indent=1))
    return 0 if same and all(r == 0 for r in rcs) and len(ref) == a.count else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["caption", "concurrent", "gpu"])
    ap.add_argument("--bin", required=True, help="the blip2 binary")
    ap.add_argument("--work", default="/tmp/blip2-soak", help="scenes and outputs")
    ap.add_argument("--count", type=int)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--verbose", action="store_true", help="print every memory sample")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    if a.mode == "caption":
        a.count, a.batch_size, a.device = a.count or 10000, a.batch_size or 8, "cpu"
        return caption(a)
    if a.mode == "gpu":
        a.count, a.batch_size, a.device = a.count or 2000, a.batch_size or 32, "gpu"
        a.verbose = True
        return caption(a)
    a.count = a.count or 200
    return concurrent(a)


if __name__ == "__main__":
    sys.exit(main())
