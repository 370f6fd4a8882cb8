#!/usr/bin/env python3
"""Writes a checkpoint directory of a preset's real size with random weights, as
`save_pretrained` writes it (sharded safetensors + index, config.json), plus the tokenizer
and processor files of the tiny OPT fixture so `blip2` can load it. For measuring loading at
size (time, peak RSS) against transformers' from_pretrained; never committed (~7.6 GB for
opt-2.7b in f16).

    tools/bench/.venv/bin/python tools/bench/make_checkpoint.py --preset opt-2.7b \\
        --dtype f16 --out /tmp/blip2-opt-2.7b-f16 [--shard-size 2GB]
"""

import argparse
import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import vs_torch  # noqa: E402  (the preset sizes and the fast random build)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="opt-2.7b", choices=sorted(vs_torch.PRESETS))
    p.add_argument("--dtype", default="f16", choices=["f32", "f16", "bf16"])
    p.add_argument("--out", required=True)
    p.add_argument("--shard-size", default="2GB")
    args = p.parse_args()
    import torch

    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        model = vs_torch.build_torch_model(args.preset, dtype)
        model.save_pretrained(out, max_shard_size=args.shard_size)
    fixture = pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/models/blip2-opt-tiny"
    for name in ["tokenizer.json", "tokenizer_config.json", "processor_config.json"]:
        shutil.copy(fixture / name, out / name)
    print(out)


if __name__ == "__main__":
    main()
