"""Shared pieces of the demo-model scripts: scene loading, prompts, answer normalisation, evaluation."""

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def vqa_prompt(question):
    # BLIP-2 OPT convention (same as `blip2 ask` and `blip2::scene::vqa_prompt`).
    return f"Question: {question} Answer:"


def normalize(text):
    # Case and a trailing period aside, as the issue states (mirrors `blip2::scene::normalize_answer`).
    t = text.strip().lower()
    if t.endswith("."):
        t = t[:-1].rstrip()
    return t


def question_type(question):
    if question.startswith("how many"):
        return "count"
    if question == "what color is the background?":
        return "background"
    if question.startswith("what color is the"):
        return "colour"
    if question.startswith("what size"):
        return "size"
    if question.startswith("where is"):
        return "position"
    if question.startswith("what shape is"):
        return "shape"
    if question.startswith("is there"):
        return "presence"
    return "other"


def load_scenes(directory, limit=None):
    """Records of `DIR/scenes.jsonl` (written by `blip2 demo-scene --count`) and their RGB images."""
    directory = Path(directory)
    records = []
    with open(directory / "scenes.jsonl") as f:
        for line in f:
            records.append(json.loads(line))
            if limit is not None and len(records) >= limit:
                break
    images = []
    for r in records:
        with Image.open(directory / r["file"]) as im:
            images.append(im.convert("RGB"))
    return records, images


@torch.no_grad()
def evaluate(model, processor, records, images, max_new_tokens=20, batch_size=128, log=print):
    """Greedy `generate` through the HF processor for every caption and every QA pair.

    Prompts in one batch have the same token length, so no padding is involved and each result
    equals what a batch of one gives (modulo float summation order).
    """
    tok = processor.tokenizer
    model.eval()
    t0 = time.time()
    results = {"captions": [], "qa": []}

    def decode_new(out, prompt_len):
        return tok.batch_decode(out[:, prompt_len:], skip_special_tokens=True)

    for start in range(0, len(records), batch_size):
        imgs = images[start : start + batch_size]
        inputs = processor(images=imgs, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        # generate() without input_ids returns [<image>]*Q + [BOS] + new tokens for decoder-only LMs.
        prompt_len = model.config.num_query_tokens + 1
        for r, text in zip(records[start : start + batch_size], decode_new(out, prompt_len)):
            results["captions"].append(
                {"seed": r["seed"], "expected": r["caption"], "got": text.strip(), "ok": normalize(text) == normalize(r["caption"])}
            )

    items = [(i, qa["question"], qa["answer"]) for i, r in enumerate(records) for qa in r["qa"]]
    by_len = defaultdict(list)
    for item in items:
        by_len[len(tok(vqa_prompt(item[1]))["input_ids"])].append(item)
    for _, group in sorted(by_len.items()):
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            inputs = processor(
                images=[images[i] for i, _, _ in chunk], text=[vqa_prompt(q) for _, q, _ in chunk], return_tensors="pt"
            )
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            texts = decode_new(out, inputs["input_ids"].shape[1])
            for (i, q, a), text in zip(chunk, texts):
                results["qa"].append(
                    {
                        "seed": records[i]["seed"],
                        "question": q,
                        "type": question_type(q),
                        "expected": a,
                        "got": text.strip(),
                        "ok": normalize(text) == normalize(a),
                    }
                )
    results["qa"].sort(key=lambda x: (x["seed"], x["question"]))
    results["summary"] = summarize(results, len(records))
    results["summary"]["seconds"] = round(time.time() - t0, 1)
    return results


def summarize(results, n_scenes):
    caps = results["captions"]
    by_count = defaultdict(lambda: [0, 0])
    for c in caps:
        n = 1 + c["expected"].count(" and ") + c["expected"].count(", ")
        by_count[n][0] += c["ok"]
        by_count[n][1] += 1
    by_type = defaultdict(lambda: [0, 0])
    for q in results["qa"]:
        by_type[q["type"]][0] += q["ok"]
        by_type[q["type"]][1] += 1
    qa_ok = sum(q["ok"] for q in results["qa"])
    return {
        "scenes": n_scenes,
        "caption_exact": [sum(c["ok"] for c in caps), len(caps)],
        "caption_exact_by_objects": {str(k): v for k, v in sorted(by_count.items())},
        "qa_accuracy": [qa_ok, len(results["qa"])],
        "qa_by_type": dict(sorted(by_type.items())),
    }


def format_summary(s):
    def pct(pair):
        return f"{pair[0]}/{pair[1]} = {100.0 * pair[0] / max(pair[1], 1):.2f}%"

    lines = [f"scenes: {s['scenes']}", f"caption exact match: {pct(s['caption_exact'])}"]
    for k, v in s["caption_exact_by_objects"].items():
        lines.append(f"  captions with {k} object(s): {pct(v)}")
    lines.append(f"VQA accuracy: {pct(s['qa_accuracy'])}")
    for k, v in s["qa_by_type"].items():
        lines.append(f"  {k}: {pct(v)}")
    return "\n".join(lines)


def pixel_values_uint8(images_u8, mean, std):
    """BlipImageProcessor's arithmetic for images already at the model size: x/255, CLIP mean/std, CHW."""
    mean = torch.tensor(mean, dtype=torch.float64)[None, :, None, None]
    std = torch.tensor(std, dtype=torch.float64)[None, :, None, None]
    out = torch.empty((images_u8.shape[0], 3, images_u8.shape[1], images_u8.shape[2]), dtype=torch.float32)
    # In chunks: float64 intermediates for 40,000 images at once would need ~12 GB.
    for start in range(0, images_u8.shape[0], 4096):
        x = torch.from_numpy(images_u8[start : start + 4096]).permute(0, 3, 1, 2).to(torch.float64) / 255.0
        out[start : start + 4096] = ((x - mean) / std).to(torch.float32)
    return out


def images_to_array(images):
    return np.stack([np.asarray(im, dtype=np.uint8) for im in images])
