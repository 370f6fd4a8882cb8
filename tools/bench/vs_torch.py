#!/usr/bin/env python3
"""Our engine against Hugging Face transformers on the CPU, at the same model sizes.

    tools/bench/.venv/bin/python tools/bench/vs_torch.py [--preset opt-2.7b] \
        [--pairs f32:fp32 f16:bf16] [--rounds 3] [--new-tokens 8] [--batch8] [--save runs.json]

For every pairing OURS:TORCH (our `--dtype` against a torch dtype, fp32 or bf16) it runs
`blip2 bench --json` and an equivalent transformers benchmark (this file re-run with
`--torch-worker`), each run a fresh process so load and peak RSS are per run, and interleaves
the two round by round so that noise from other work on the machine hits both sides alike.
Then it prints, per pairing, a markdown table of the median of each stage and the ratio
ours / torch, plus the machine, versions, threads, command and date.

Kinds of run (each one process per side, per round):
  staged   --new-tokens N (default 8): preprocess, vision, Q-Former + projection, prefill,
           decode per token, peak RSS.
  caption  --new-tokens 30: the wall time of a whole 30-token caption from the image.
  batch8   (only with --batch8) batch size 8, N new tokens: decode throughput in tokens/s.

What both sides feed the language model for a caption without a prompt (this is what sets
the prefill length): num_query_tokens `<image>` placeholders, replaced by the projected
Q-Former outputs, followed by the OPT BOS token (id 2) -- Q + 1 positions, 33 for the OPT
presets. Ours: `Blip2::prompt_ids` -> `Blip2Tokenizer::encode_prompt_with_start` with no text
(model/src/blip2.rs, model/src/tokenizer.rs); HF: `Blip2ForConditionalGeneration.generate`
builds the same ids when `input_ids` is None. The caption worker checks HF's count from the
length of what `generate` returns.

The torch side uses random weights like ours (`Checkpoint::random`): norm weights 1, every
other tensor uniform with std 0.02, built on the meta device and filled in place so that the
slow default initialisation never runs. Only the standard library here; the worker imports
torch and transformers (pinned in tools/bench/requirements.txt).
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Model sizes of model/src/config/presets.rs, in HF config keys. Keys that are absent take
# the transformers default, which is also ours (model/src/config/schema.rs and
# model/src/lm/opt/config.rs copy HF's defaults). Keep in sync with presets.rs.
def _opt(hidden, ffn, layers, heads):
    return dict(model_type="opt", vocab_size=50304, hidden_size=hidden, num_hidden_layers=layers,
                ffn_dim=ffn, num_attention_heads=heads, word_embed_proj_dim=hidden,
                eos_token_id=50118)


PRESETS = {
    # Vision (EVA ViT-g/14) and Q-Former at the HF defaults, 32 queries, <image> = 50265.
    "opt-2.7b": dict(vision={}, qformer={}, text=_opt(2560, 10240, 32, 32),
                     num_query_tokens=32, image_token_index=50265),
    "opt-6.7b": dict(vision={}, qformer={}, text=_opt(4096, 16384, 32, 32),
                     num_query_tokens=32, image_token_index=50265),
    # presets.rs "tiny": for testing the harness in seconds, not for conclusions.
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, image_size=30, patch_size=6),
        qformer=dict(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, encoder_hidden_size=32),
        # OPT defaults otherwise: bos 2, eos 2, pad 1, ReLU, pre-LN, tied lm_head.
        text=dict(model_type="opt", vocab_size=100, hidden_size=32, num_hidden_layers=2,
                  ffn_dim=64, num_attention_heads=4, max_position_embeddings=64,
                  word_embed_proj_dim=32),
        num_query_tokens=4, image_token_index=99),
}

OPT_BOS = 2  # OPTConfig's bos_token_id; none of the presets changes it.
CAPTION_TOKENS = 30
TORCH_DTYPES = ("fp32", "bf16")
# Our bench generates from a random 640x480 image; the torch side resizes one of that size.
SOURCE_H, SOURCE_W = 480, 640
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def prefill_tokens(preset):
    """Prefill length of a caption without prompt: Q image placeholders + BOS."""
    return PRESETS[preset]["num_query_tokens"] + 1


# ---------------------------------------------------------------------------------------
# Torch worker: one run in this process, one JSON line on stdout.
# ---------------------------------------------------------------------------------------

def build_torch_model(preset, dtype):
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    p = PRESETS[preset]
    cfg = Blip2Config(vision_config=dict(p["vision"]), qformer_config=dict(p["qformer"]),
                      text_config=dict(p["text"]), num_query_tokens=p["num_query_tokens"],
                      image_token_index=p["image_token_index"])
    # On the meta device nothing is allocated or initialised; `to_empty` then allocates
    # every tensor once, uninitialised. The whole model is in `dtype`, Q-Former included:
    # that is what from_pretrained(dtype=torch.bfloat16) gives (Blip2's
    # _keep_in_fp32_modules only applies to float16).
    with torch.device("meta"):
        model = Blip2ForConditionalGeneration._from_config(cfg, dtype=dtype)
    model.to_empty(device="cpu")
    # to_empty gives lm_head its own tensor; OPT's is tied to embed_tokens (ours too).
    model.tie_weights()
    a = 0.02 * 3 ** 0.5  # uniform on [-a, a] has std 0.02, as in our Checkpoint::random
    with torch.no_grad():
        for name, t in model.named_parameters():  # tied tensors are listed once
            lname = name.lower()
            if "norm" in lname and lname.endswith(".weight"):
                t.fill_(1.0)
            else:
                t.uniform_(-a, a)
    # Blip2 + OPT in transformers 5.24 register no buffers; if a later version adds one,
    # fail here rather than benchmark on uninitialised memory.
    buffers = [n for n, _ in model.named_buffers()]
    if buffers:
        raise SystemExit(f"torch worker: unexpected buffers to initialise: {buffers}")
    return model.eval()


def preprocess(images_u8, size, dtype):
    """The processor's work in torch: bicubic resize to size x size, rescale, normalise.
    (What the fast BlipImageProcessor does, without PIL; ours does the same in Rust.)"""
    import torch
    import torch.nn.functional as F

    x = F.interpolate(images_u8.float(), size=(size, size), mode="bicubic", antialias=True)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x / 255.0 - mean) / std).to(dtype)


def staged_pass(model, images_u8, new_tokens, eos_id, dtype):
    """One pass of our bench's stages; returns seconds per stage and the prefill length."""
    import torch

    cfg = model.config
    b = images_u8.shape[0]
    t = {}
    s = time.perf_counter()
    pixels = preprocess(images_u8, cfg.vision_config.image_size, dtype)
    t["preprocess"] = time.perf_counter() - s

    s = time.perf_counter()
    image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
    t["vision"] = time.perf_counter() - s

    # Q-Former + language projection, as Blip2ForConditionalGeneration.generate does them.
    s = time.perf_counter()
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    query_tokens = model.query_tokens.expand(b, -1, -1)
    q = model.qformer(query_embeds=query_tokens, encoder_hidden_states=image_embeds,
                      encoder_attention_mask=image_mask).last_hidden_state
    projected = model.language_projection(q.to(image_embeds.dtype))
    t["qformer"] = time.perf_counter() - s

    # Prefill: build the ids (<image> x Q, BOS), embed, scatter the queries in, run OPT.
    # No attention mask (nothing is padded; ours passes none either) and logits for the
    # last position only, as ours and HF generate (logits_to_keep) compute them.
    s = time.perf_counter()
    ids = torch.tensor([[cfg.image_token_index] * cfg.num_query_tokens + [OPT_BOS]] * b)
    embeds = model.get_input_embeddings()(ids)
    image_slots = (ids == cfg.image_token_index).unsqueeze(-1)
    embeds = embeds.masked_scatter(image_slots, projected.to(embeds.dtype))
    out = model.language_model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
    t["prefill"] = time.perf_counter() - s
    n_prefill = embeds.shape[1]

    # Greedy decode of new_tokens - 1 steps after the prefill's token, like ours: the
    # first token's argmax is inside the timing, eos is suppressed (min_new_tokens).
    s = time.perf_counter()
    cache, logits = out.cache, out.logits[:, -1]
    for _ in range(new_tokens - 1):
        logits[:, eos_id] = float("-inf")
        tok = logits.argmax(-1, keepdim=True)
        out = model.language_model(input_ids=tok, cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
    t["decode"] = time.perf_counter() - s
    return t, n_prefill


def caption_pass(model, images_u8, dtype):
    """A whole 30-token caption from the image through HF's own generate (which builds
    <image> x Q + BOS itself); returns seconds and the prompt length generate used."""
    s = time.perf_counter()
    pixels = preprocess(images_u8, model.config.vision_config.image_size, dtype)
    out = model.generate(pixel_values=pixels, max_new_tokens=CAPTION_TOKENS,
                         min_new_tokens=CAPTION_TOKENS, do_sample=False, num_beams=1)
    took = time.perf_counter() - s
    # Decoder-only: generate returns the prompt ids followed by the new tokens.
    return took, out.shape[1] - CAPTION_TOKENS


def torch_worker(args):
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.torch_dtype]
    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.inference_mode():
        s = time.perf_counter()
        model = build_torch_model(args.preset, dtype)
        build = time.perf_counter() - s
        gen = torch.Generator().manual_seed(args.seed)
        images = torch.randint(0, 256, (args.batch_size, 3, SOURCE_H, SOURCE_W),
                               dtype=torch.uint8, generator=gen)
        eos = PRESETS[args.preset]["text"].get("eos_token_id", 2)
        res = {"side": "torch", "kind": args.kind, "dtype": args.torch_dtype,
               "preset": args.preset, "batch_size": args.batch_size,
               "threads": torch.get_num_threads(),
               "torch_version": torch.__version__,
               "transformers_version": transformers.__version__,
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "attn_implementation": model.config.text_config._attn_implementation}
        ms = {"build_random_weights": build * 1e3}
        # One warm-up pass first (allocator, oneDNN primitives), then one timed pass, as
        # our bench runs with --runs 1.
        if args.kind == "caption":
            caption_pass(model, images, dtype)
            took, n = caption_pass(model, images, dtype)
            ms["caption_30"] = took * 1e3
            res.update(new_tokens=CAPTION_TOKENS, prefill_tokens=n)
        else:
            staged_pass(model, images, args.new_tokens, eos, dtype)
            t, n = staged_pass(model, images, args.new_tokens, eos, dtype)
            ms.update({k: v * 1e3 for k, v in t.items()})
            steps = args.new_tokens - 1
            ms["per_token_decode"] = ms["decode"] / max(steps, 1)
            res["decode_tokens_per_s"] = (steps * args.batch_size / t["decode"]
                                          if t["decode"] > 0 else 0.0)
            res.update(new_tokens=args.new_tokens, prefill_tokens=n)
    res["timings_ms"] = ms
    # ru_maxrss is in KiB on Linux. The start/import values show the interpreter + torch's
    # own share of the peak, which our binary does not pay.
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res["rss_at_start_bytes"] = rss_start
    res["rss_after_import_bytes"] = rss_import
    print(json.dumps(res))


# ---------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------

def ours_cmd(args, dtype, kind):
    new = CAPTION_TOKENS if kind == "caption" else args.new_tokens
    batch = 8 if kind == "batch8" else 1
    return [args.bin, "bench", "--preset", args.preset, "--device", "cpu", "--dtype", dtype,
            "--new-tokens", str(new), "--batch-size", str(batch), "--runs", "1",
            "--seed", str(args.seed), "--json"]


def torch_cmd(args, dtype, kind):
    batch = 8 if kind == "batch8" else 1
    return [sys.executable, os.path.abspath(__file__), "--torch-worker", "--preset",
            args.preset, "--torch-dtype", dtype, "--kind", "caption" if kind == "caption"
            else "staged", "--new-tokens", str(args.new_tokens), "--batch-size", str(batch),
            "--threads", str(args.threads), "--seed", str(args.seed)]


def run_one(cmd, env):
    s = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - s
    if p.returncode != 0:
        # Fail early: a missing dtype in the binary or an OOM would otherwise show only as
        # a hole in the table after the whole benchmark.
        sys.stderr.write(p.stderr)
        raise SystemExit(f"failed ({p.returncode}): {shlex.join(cmd)}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


def machine_info():
    info = {"model_name": platform.processor() or "?", "cpus": os.cpu_count(), "flags": {}}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ""
    fields = {}
    for line in lscpu.splitlines():
        k, _, v = line.partition(":")
        fields[k.strip()] = v.strip()
    info["model_name"] = fields.get("Model name", info["model_name"])
    if "Core(s) per socket" in fields and "Socket(s)" in fields:
        info["cores"] = int(fields["Core(s) per socket"]) * int(fields["Socket(s)"])
    flags = set(fields.get("Flags", "").split())
    info["flags"] = {f: f in flags for f in ("avx512f", "avx512_bf16", "avx512_fp16",
                                             "amx_bf16")}
    return info


def versions():
    v = {}
    for pkg in ("torch", "transformers"):
        try:
            v[pkg] = importlib.metadata.version(pkg)  # without importing torch here
        except importlib.metadata.PackageNotFoundError:
            v[pkg] = "not installed"
    try:
        git = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        git = ""
    v["repo"] = git or "?"
    return v


def median(runs, f):
    vals = [f(r) for r in runs]
    vals = [x for x in vals if x is not None]
    return statistics.median(vals) if vals else None


def fmt(x, digits=3):
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.1f}"
    # Small values (tiny preset, ratios far below 1) keep 3 significant digits.
    return f"{x:.{digits}f}" if abs(x) >= 1 else f"{x:.3g}"


def report(args, meta, results):
    # Rows: (label, kind of run, getter on our JSON, getter on the torch JSON, digits).
    ms = lambda k: (lambda r: r["timings_ms"][k])  # noqa: E731
    gib = lambda r: r["peak_rss_bytes"] / 2**30 if r.get("peak_rss_bytes") else None  # noqa: E731
    ours_caption = lambda r: sum(r["timings_ms"][k] for k in  # noqa: E731
                                 ("preprocess", "vision", "qformer", "prefill", "decode"))
    n = prefill_tokens(args.preset)
    rows = [
        ("preprocess (ms)", "staged", ms("preprocess"), ms("preprocess"), 3),
        ("vision (ms)", "staged", ms("vision"), ms("vision"), 3),
        ("qformer + projection (ms)", "staged", ms("qformer"), ms("qformer"), 3),
        (f"prefill, {n} tokens (ms)", "staged", ms("prefill"), ms("prefill"), 3),
        ("decode per token (ms)", "staged", ms("per_token_decode"), ms("per_token_decode"), 3),
        (f"caption, {CAPTION_TOKENS} new tokens (ms)", "caption", ours_caption,
         ms("caption_30"), 3),
    ]
    if args.batch8:
        rows.append(("batch-8 decode (tokens/s, higher is better)", "batch8",
                     lambda r: r["decode_tokens_per_s"], lambda r: r["decode_tokens_per_s"], 1))
    rows.append(("peak RSS, staged run (GiB)", "staged", gib, gib, 3))

    m = meta["machine"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["flags"].items())
    print(f"## blip2 vs transformers: preset {args.preset}, {args.rounds} interleaved rounds, "
          "medians")
    print()
    print(f"- date: {meta['date']}")
    print(f"- command: `{meta['command']}`")
    print(f"- machine: {m['model_name']}, {m.get('cores', '?')} cores / {m['cpus']} CPUs; "
          f"{flags}")
    print(f"- versions: torch {meta['versions']['torch']}, transformers "
          f"{meta['versions']['transformers']}, blip2 at git {meta['versions']['repo']}")
    torch_any = next((r for k, v in results.items() if k[0] == "torch" for r in v), {})
    ours_any = next((r for k, v in results.items() if k[0] == "ours" for r in v), {})
    print(f"- threads: {args.threads} (ours RAYON_NUM_THREADS, torch set_num_threads -> "
          f"{torch_any.get('threads', '?')}); ours backend {ours_any.get('backend', '?')}, "
          f"torch CPU capability {torch_any.get('cpu_capability', '?')}, attention "
          f"{torch_any.get('attn_implementation', '?')}")
    print(f"- staged runs: batch 1, {args.new_tokens} new tokens (decode per token over "
          f"{args.new_tokens - 1} steps); prefill {n} tokens = {n - 1} query embeddings + BOS")
    print(f"- per run: `{shlex.join(meta['example_commands']['ours'])}` and "
          f"`{shlex.join(meta['example_commands']['torch'])}`")
    print()

    for ours_dt, torch_dt in args.pairs:
        print(f"### ours {ours_dt} vs torch {torch_dt}")
        print()
        print("| stage | ours median | torch median | ours / torch |")
        print("|---|---:|---:|---:|")
        for label, kind, fo, ft, digits in rows:
            a = median(results.get(("ours", ours_dt, kind), []), fo)
            b = median(results.get(("torch", torch_dt, kind), []), ft)
            ratio = a / b if a is not None and b else None
            print(f"| {label} | {fmt(a, digits)} | {fmt(b, digits)} | {fmt(ratio, 3)} |")
        staged = results.get(("torch", torch_dt, "staged"), [])
        imp = median(staged, lambda r: r.get("rss_after_import_bytes"))
        plen = sorted({r["prefill_tokens"] for k, v in results.items() if k[0] == "torch"
                       and k[1] == torch_dt for r in v})
        print()
        print(f"Ratios below 1 mean ours is faster/smaller, except tokens/s (above 1 = ours "
              f"faster). Torch's peak RSS includes {fmt(imp / 2**30 if imp else None)} GiB "
              f"of Python + torch after import. Torch prefill tokens seen: {plen}.")
        print()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(REPO, "target", "release", "blip2"))
    p.add_argument("--preset", default="opt-2.7b", choices=sorted(PRESETS))
    p.add_argument("--pairs", nargs="+", default=["f32:fp32", "f16:bf16"],
                   help="OURS:TORCH dtype pairs; ours is passed to `blip2 bench --dtype` as "
                        "is (f32, f16, bf16, q8, q4), torch is fp32 or bf16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=8,
                   help="new tokens of the staged and batch-8 runs (the caption is 30)")
    p.add_argument("--batch8", action="store_true",
                   help="also measure batch-8 decode throughput (costly at real sizes)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write every raw run (and the metadata) as JSON here")
    # Worker mode (internal): one torch run, one JSON line.
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--torch-dtype", choices=TORCH_DTYPES, help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=("staged", "caption"), default="staged",
                   help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.torch_worker:
        return torch_worker(args)

    if args.new_tokens < 2:
        p.error("--new-tokens must be at least 2 (decode is timed after the first token)")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    pairs = []
    for s in args.pairs:
        ours_dt, sep, torch_dt = s.partition(":")
        if not sep or not ours_dt or torch_dt not in TORCH_DTYPES:
            p.error(f"bad pair '{s}': expected OURS:TORCH with TORCH one of {TORCH_DTYPES}")
        pairs.append((ours_dt, torch_dt))
    args.pairs = pairs
    if not os.path.exists(args.bin):
        p.error(f"{args.bin} not found (cargo build --release first, or pass --bin)")

    kinds = ["staged", "caption"] + (["batch8"] if args.batch8 else [])
    # Same thread count on both sides; rayon otherwise uses every CPU, which is the same
    # number by default but not when --threads is given.
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable] + sys.argv),
        "machine": machine_info(),
        "versions": versions(),
        "threads": args.threads,
        "prefill_tokens_ours": prefill_tokens(args.preset),
        "example_commands": {"ours": ours_cmd(args, pairs[0][0], "staged"),
                             "torch": torch_cmd(args, pairs[0][1], "staged")},
    }
    results = {}

    def save():
        if args.save:
            runs = [dict(r, side=k[0], run_dtype=k[1], run_kind=k[2])
                    for k, v in results.items() for r in v]
            with open(args.save, "w") as f:
                json.dump({"meta": meta, "runs": runs}, f, indent=1)

    # Each round runs every job once, alternating ours / torch pairing by pairing, so a
    # noisy stretch on the shared machine lands on both sides. A dtype used by two pairings
    # is run once per round and shared.
    for r in range(args.rounds):
        jobs = []
        for kind in kinds:
            for ours_dt, torch_dt in pairs:
                for job in (("ours", ours_dt, kind), ("torch", torch_dt, kind)):
                    if job not in jobs:
                        jobs.append(job)
        for side, dt, kind in jobs:
            cmd = ours_cmd(args, dt, kind) if side == "ours" else torch_cmd(args, dt, kind)
            out = run_one(cmd, env)
            out.update(round=r + 1, cmd=cmd)
            results.setdefault((side, dt, kind), []).append(out)
            print(f"round {r + 1}/{args.rounds} {side} {dt} {kind}: "
                  f"{out['process_wall_s']:.1f} s", file=sys.stderr)
            save()

    # Our prefill length is not in the bench JSON; it is Q + 1 by construction (see the
    # module docstring). The torch runs report theirs, and HF generate's must agree.
    want = prefill_tokens(args.preset)
    seen = {o["prefill_tokens"] for k, v in results.items() if k[0] == "torch" for o in v}
    if seen != {want}:
        print(f"WARNING: torch prefill lengths {sorted(seen)} differ from ours ({want})",
              file=sys.stderr)
    report(args, meta, results)


if __name__ == "__main__":
    main()
