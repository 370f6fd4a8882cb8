#!/usr/bin/env python3
"""Train the bundled demo BLIP-2 (ViT + Q-Former + projection + OPT, the real HF classes) on scenes
drawn by `blip2 demo-scene --count`, export it as a float16 `save_pretrained` checkpoint with its
processor, and evaluate the reloaded checkpoint with `transformers` greedy generation.

Run through `train.sh`; see README.md for the data layout, seeds and the numbers it reaches.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    evaluate,
    format_summary,
    images_to_array,
    load_scenes,
    pixel_values_uint8,
    vqa_prompt,
)

IMAGE_SIZE = 64  # = the scene size, so the processor's resize is the identity on our scenes


def build_tokenizer(records):
    """Byte-level BPE like OPT: <s>=0 <pad>=1 </s>=2 <unk>=3, BOS `</s>` added by the post-processor,
    `<image>` as the last (special) token. Trained on every caption and QA text of the training set."""
    corpus = []
    for r in records:
        corpus.append(r["caption"])
        for qa in r["qa"]:
            corpus.append(f"{vqa_prompt(qa['question'])} {qa['answer']}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        # Above what the corpus can fill: merging stops once every word of the grammar (with and
        # without its leading space) is a single token, which keeps captions within 20 new tokens.
        vocab_size=1024,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,  # v5 writes a TemplateProcessing "</s> $A" post-processor, as OPT's tokenizer
        add_eos_token=False,
        model_max_length=128,
    )
    fast.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    return fast


def build_model(args, tokenizer):
    vision = Blip2VisionConfig(
        hidden_size=args.vision_hidden,
        intermediate_size=4 * args.vision_hidden,
        num_hidden_layers=args.vision_layers,
        num_attention_heads=args.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=args.patch,
        # The default 1e-10 starts the tower at ~0 and training stalls (docs/demo-model-notes).
        initializer_range=0.02,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=args.qformer_hidden,
        num_hidden_layers=args.qformer_layers,
        num_attention_heads=args.qformer_heads,
        intermediate_size=4 * args.qformer_hidden,
        cross_attention_frequency=1,
        encoder_hidden_size=args.vision_hidden,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    text = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.lm_hidden,
        num_hidden_layers=args.lm_layers,
        ffn_dim=4 * args.lm_hidden,
        num_attention_heads=args.lm_heads,
        max_position_embeddings=128,
        word_embed_proj_dim=args.lm_hidden,
        do_layer_norm_before=True,
        activation_function="relu",
        dropout=0.0,
        attention_dropout=0.0,
        enable_bias=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # </s>: generation stops there
        tie_word_embeddings=True,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=args.queries,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(args.seed)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        # Width-scaled init: N(0, 0.05) ~ 0.55/sqrt(128), GPT-2's 0.02 at width 768 scaled to our width. With
        # HF's 0.02 at width 128 the Q-Former's cross-attention adds ~5% to the layer-normed query stream, and
        # object attributes stayed at chance for 1,000+ steps (only the background colour got through).
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)):
                module.weight.normal_(0.0, args.init_std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        emb = model.vision_model.embeddings
        emb.class_embedding.normal_(0.0, args.init_std)
        # Patch positions start from a 2D sin-cos table (as MAE) at the scale of the patch features: from
        # N(0, 0.05) the table had not moved after 1,300 steps and "where" answers stayed at chance (and
        # captions, which list objects left to right, need positions too). Still a learned parameter.
        emb.position_embedding.zero_()
        emb.position_embedding[0, 1:] = sincos_2d(args.vision_hidden, IMAGE_SIZE // args.patch)
        # HF initialises query_tokens to zeros; BLIP-2 (LAVIS) draws them from N(0, 0.02) so the queries differ.
        model.query_tokens.normal_(0.0, 0.02)
    return model


def sincos_2d(dim, grid):
    """[grid*grid, dim] table, patches row-major; the first half of the channels encodes y, the second x.
    Base 100 rather than MAE's 10000: on an 8x8 grid most of 10000's slow channels would be constant."""
    quarter = dim // 4
    omega = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")

    def enc(v):
        angles = v.reshape(-1, 1) * omega[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([enc(ys), enc(xs)], dim=1).to(torch.float32)


class Batches:
    """Training sequences: per image its caption plus `qa_per_image` random QA pairs, built exactly as
    Blip2Processor + generate() build inputs ([<image>]*Q + BOS + prompt), labels only on the target + eos."""

    def __init__(self, records, tokenizer, num_query, image_token):
        self.tok = tokenizer
        self.q = num_query
        self.image_token = image_token
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.cache = {}
        self.records = records

    def ids(self, text, special):
        key = (text, special)
        if key not in self.cache:
            self.cache[key] = self.tok(text, add_special_tokens=special)["input_ids"]
        return self.cache[key]

    def caption_seq(self, caption):
        target = self.ids(caption, False) + [self.eos]
        return [self.image_token] * self.q + [self.bos] + target, len(target)

    def qa_seq(self, question, answer):
        prompt = self.ids(vqa_prompt(question), True)  # starts with BOS
        target = self.ids(" " + answer, False) + [self.eos]
        return [self.image_token] * self.q + prompt + target, len(target)

    def make(self, indices, rng, qa_per_image):
        seqs = []
        for i in indices:
            r = self.records[i]
            seqs.append(self.caption_seq(r["caption"]))
            picks = rng.choice(len(r["qa"]), size=min(qa_per_image, len(r["qa"])), replace=False)
            for j in picks:
                seqs.append(self.qa_seq(r["qa"][j]["question"], r["qa"][j]["answer"]))
        per_image = 1 + min(qa_per_image, min(len(self.records[i]["qa"]) for i in indices))
        assert all(len(self.records[i]["qa"]) >= qa_per_image for i in indices)
        width = max(len(s) for s, _ in seqs)
        input_ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        for row, (s, n_target) in enumerate(seqs):
            input_ids[row, : len(s)] = torch.tensor(s)
            attention[row, : len(s)] = 1
            labels[row, len(s) - n_target : len(s)] = torch.tensor(s[len(s) - n_target :])
        return input_ids, attention, labels, per_image


def lm_logits(model, pixel_values, input_ids, attention, per_image):
    """Blip2ForConditionalGeneration.forward with the image tower run once per image and its projected
    queries shared by that image's `per_image` sequences (checked against forward() at start-up).
    Returns the LM logits and the vision tower's patch outputs [B, patches, hidden] (for the auxiliary loss)."""
    image = model.get_image_features(pixel_values=pixel_values)
    feats = image.pooler_output.repeat_interleave(per_image, dim=0)
    embeds = model.get_input_embeddings()(input_ids)
    mask = (input_ids == model.config.image_token_index).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
    logits = model.language_model(inputs_embeds=embeds, attention_mask=attention).logits
    return logits, image.last_hidden_state[:, 1:]


# Auxiliary per-patch targets: what the object covering most of a patch is. Colours are unique within a
# scene and objects never overlap, so a pixel's exact colour names its object (src/scene.rs).
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ["circle", "square", "triangle"]
SIZES = ["small", "large"]
POSITIONS = ["left", "center", "right"]
# Class 0 of each head is "no object in this patch".
AUX_HEADS = {
    "shape": 1 + len(SHAPES),
    "colour": 1 + len(COLOURS),
    "size": 1 + len(SIZES),
    "position": 1 + len(POSITIONS),
}


def patch_targets(images_u8, records, patch):
    """[N, patches] class indices per auxiliary head, patches row-major as the ViT's patch embedding."""
    n, h, w, _ = images_u8.shape
    gh, gw = h // patch, w // patch
    counts = np.zeros((n, len(COLOURS), gh * gw), dtype=np.int32)
    for c, rgb in enumerate(COLOURS.values()):
        hit = np.all(images_u8 == np.array(rgb, dtype=np.uint8), axis=-1)
        counts[:, c] = hit.reshape(n, gh, patch, gw, patch).sum(axis=(2, 4)).reshape(n, gh * gw)
    colour_idx = counts.argmax(axis=1)  # [N, patches]
    empty = counts.max(axis=1) == 0
    # Per scene, colour -> (shape, size, position) from its QA ground truth.
    table = np.zeros((n, len(COLOURS), 3), dtype=np.int64)
    names = list(COLOURS)
    for i, r in enumerate(records):
        answers = {qa["question"]: qa["answer"] for qa in r["qa"]}
        for shape in SHAPES:
            colour = answers.get(f"what color is the {shape}?")
            if colour is None:
                continue
            table[i, names.index(colour)] = (
                1 + SHAPES.index(shape),
                1 + SIZES.index(answers[f"what size is the {shape}?"]),
                1 + POSITIONS.index(answers[f"where is the {shape}?"]),
            )
    picked = np.take_along_axis(table, colour_idx[:, :, None].repeat(3, axis=2), axis=1)  # [N, patches, 3]
    out = {
        "shape": picked[:, :, 0],
        "colour": 1 + colour_idx,
        "size": picked[:, :, 1],
        "position": picked[:, :, 2],
    }
    for v in out.values():
        v[empty] = 0
    assert (out["shape"][~empty] > 0).all(), "a coloured patch whose colour no QA pair names"
    return {k: torch.from_numpy(v.astype(np.int64)) for k, v in out.items()}


class AuxHead(torch.nn.Module):
    """Linear classifiers on the vision tower's patch outputs. Training only: not part of the export.
    They give the tower a dense, direct signal for shape (the language loss alone reaches the tower
    through the Q-Former and the LM, and shapes were the slowest thing it learnt)."""

    def __init__(self, hidden):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, n) for k, n in AUX_HEADS.items()})

    def loss(self, patches, targets):
        total = 0.0
        for k, head in self.heads.items():
            logits = head(patches)
            total = total + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[k].reshape(-1))
        return total / len(self.heads)


def shifted_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def check_inputs(processor, batches, records, images, pixel_values):
    """Our training inputs must be what Blip2Processor gives for the same image and text."""
    proc_pv = processor(images=images[:4], return_tensors="pt")["pixel_values"]
    diff = (proc_pv - pixel_values[:4]).abs().max().item()
    # Same float64 arithmetic rounded to f32: equal up to one f32 rounding step.
    assert diff < 1e-6, f"pixel values differ from the processor by {diff}"
    for r, im in zip(records[:4], images[:4]):
        for qa in r["qa"]:
            seq, n = batches.qa_seq(qa["question"], qa["answer"])
            enc = processor(images=im, text=vqa_prompt(qa["question"]))["input_ids"][0]
            assert seq[: len(seq) - n] == list(enc), (seq, enc)
            # Prompt and answer tokenised apart equal the tokens of the whole text (no merge across them).
            whole = processor.tokenizer(f"{vqa_prompt(qa['question'])} {qa['answer']}")["input_ids"]
            assert whole == seq[batches.q : len(seq) - 1], (whole, seq)
        seq, n = batches.caption_seq(r["caption"])
        whole = processor.tokenizer(r["caption"])["input_ids"]
        assert whole == seq[batches.q : len(seq) - 1], (whole, seq)


def save_checkpoint(path, model, aux, optimizer, step):
    tmp = path.with_suffix(".tmp")
    state = {"model": model.state_dict(), "aux": aux.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    torch.save(state, tmp)
    os.replace(tmp, path)


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-scenes", required=True, help="directory written by `blip2 demo-scene --count`")
    p.add_argument("--eval-scenes", required=True, help="held-out scenes (different seeds)")
    p.add_argument("--work", required=True, help="checkpoints, logs and evaluation results")
    p.add_argument("--out", required=True, help="save_pretrained directory of the f16 model + processor")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-images", type=int, default=32)
    p.add_argument("--qa-per-image", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--init-std", type=float, default=0.05)
    p.add_argument("--min-lr-frac", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the per-patch auxiliary loss (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vision-hidden", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--vision-heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--qformer-hidden", type=int, default=128)
    p.add_argument("--qformer-layers", type=int, default=2)
    p.add_argument("--qformer-heads", type=int, default=4)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--lm-hidden", type=int, default=128)
    p.add_argument("--lm-layers", type=int, default=3)
    p.add_argument("--lm-heads", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--monitor-every", type=int, default=500, help="greedy check on 100 held-out scenes")
    p.add_argument("--eval-limit", type=int, default=None, help="held-out scenes in the final evaluation")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--no-resume", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    records, pil_images = load_scenes(args.train_scenes)
    eval_records, eval_images = load_scenes(args.eval_scenes, args.eval_limit)
    train_seeds = {r["seed"] for r in records}
    assert not train_seeds & {r["seed"] for r in eval_records}, "training and evaluation seeds overlap"
    print(f"{len(records)} training scenes (seeds {min(train_seeds)}..{max(train_seeds)}), {len(eval_records)} held-out", flush=True)

    tokenizer = build_tokenizer(records)
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        num_query_tokens=args.queries,
    )
    model = build_model(args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {len(tokenizer)} tokens; model: {n_params} parameters", flush=True)

    images_u8 = images_to_array(pil_images)
    pixel_values = pixel_values_uint8(
        images_u8, processor.image_processor.image_mean, processor.image_processor.image_std
    )
    batches = Batches(records, tokenizer, args.queries, model.config.image_token_index)
    check_inputs(processor, batches, records, pil_images, pixel_values)

    # Our shared-image forward must equal the model's own forward on the same sequences.
    with torch.no_grad():
        ids, att, lab, per = batches.make([0, 1], np.random.default_rng(0), args.qa_per_image)
        mine, _ = lm_logits(model, pixel_values[:2], ids, att, per)
        ref = model(pixel_values=pixel_values[:2].repeat_interleave(per, 0), input_ids=ids, attention_mask=att).logits
        assert torch.allclose(mine, ref, atol=1e-5), (mine - ref).abs().max()

    aux = AuxHead(args.vision_hidden)
    targets = patch_targets(images_u8, records, args.patch)
    decay, no_decay = [], []
    for name, param in list(model.named_parameters()) + list(aux.named_parameters(prefix="aux")):
        (no_decay if param.ndim < 2 or "embed" in name or "query_tokens" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    ckpt_path = work / "checkpoint.pt"
    step = 0
    if ckpt_path.exists() and not args.no_resume:
        state = torch.load(ckpt_path, weights_only=True)
        if "aux" not in state:
            sys.exit(f"{ckpt_path} predates the auxiliary heads; delete it (or pass --no-resume) to train from scratch")
        model.load_state_dict(state["model"])
        aux.load_state_dict(state["aux"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        print(f"resumed from step {step}", flush=True)

    model.train()
    t_loop, steps_run, running, aux_running = time.time(), 0, None, None
    while step < args.steps:
        rng = np.random.default_rng([args.seed, step])  # per-step stream: a resumed run sees the same batches
        idx = rng.choice(len(records), size=args.batch_images, replace=False)
        ids, att, lab, per = batches.make(idx, rng, args.qa_per_image)
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, args)
        logits, patches = lm_logits(model, pixel_values[idx], ids, att, per)
        loss = shifted_loss(logits, lab)
        aux_loss = aux.loss(patches, {k: v[idx] for k, v in targets.items()})
        optimizer.zero_grad(set_to_none=True)
        (loss + args.aux_weight * aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(aux.parameters()), 1.0)
        optimizer.step()
        step += 1
        steps_run += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        aux_running = aux_loss.item() if aux_running is None else 0.98 * aux_running + 0.02 * aux_loss.item()
        if step % 50 == 0:
            rate = steps_run / (time.time() - t_loop)
            print(
                f"step {step}/{args.steps} loss {running:.4f} aux {aux_running:.4f} "
                f"lr {lr_at(step, args):.2e} {rate:.2f} steps/s",
                flush=True,
            )
        if step % args.checkpoint_every == 0 or step == args.steps:
            save_checkpoint(ckpt_path, model, aux, optimizer, step)
        if args.monitor_every and step % args.monitor_every == 0 and step < args.steps:
            res = evaluate(model, processor, eval_records[:100], eval_images[:100], args.max_new_tokens)
            print(f"[monitor step {step}]\n{format_summary(res['summary'])}", flush=True)
            model.train()
    train_seconds = time.time() - t_loop

    # Export: float16 weights, processor (tokenizer + image settings + num_query_tokens).
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.generation_config.max_new_tokens = args.max_new_tokens
    model.to(torch.float16).save_pretrained(out)
    processor.save_pretrained(out)
    print(f"saved {out} ({(out / 'model.safetensors').stat().st_size} bytes of weights)", flush=True)

    # Evaluate what was saved: reload the f16 checkpoint upcast to f32.
    reloaded = Blip2ForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    reproc = Blip2Processor.from_pretrained(out)
    res = evaluate(reloaded, reproc, eval_records, eval_images, args.max_new_tokens)
    res["summary"].update(
        {
            "parameters": n_params,
            "train_steps_this_run": steps_run,
            "train_seconds_this_run": round(train_seconds, 1),
            "total_seconds": round(time.time() - t_start, 1),
            "eval_seeds": [eval_records[0]["seed"], eval_records[-1]["seed"]],
            "train_seeds": [min(train_seeds), max(train_seeds)],
            "args": vars(args),
        }
    )
    (work / "eval_transformers.json").write_text(json.dumps(res, indent=1) + "\n")
    print(format_summary(res["summary"]), flush=True)
    print(json.dumps({k: v for k, v in res["summary"].items() if k != "args"}), flush=True)


if __name__ == "__main__":
    main()
