"""
Score generated text against real held-out text, for several sampler settings at once.

    python quality.py                                  # the default grid, 32 prompts
    python quality.py --prompts 64 --settings steps=256 steps=64 threshold=0.9,temperature=1.0

Every prompt is the first --prompt-chars characters of a window of the validation split
(never seen in training); the model writes the rest of the window. Each row reports:
  AR NLL     mean -log p of the generated characters under the autoregressive baseline
             (weights/ar_baseline.pt), given the prompt and what precedes them: lower reads
             more like Shakespeare to a second model, but very low often means repetitive
  words      % of generated words that occur in the training text
  distinct   distinct word bigrams / all word bigrams (repetition: lower = more repeats)
  entropy    entropy of the character distribution of the output, bits
  runs       % of samples with a word repeated three or more times in a row ("the the the")
  NFE        forward passes; chars/s for the whole batch on this device
The first row scores the real continuation the same way: good text sits in a band around it
on every column at once, not at the lowest AR NLL. Settings start from sample.py's defaults
("default" is them unchanged) and override any sampler option: steps, threshold, temperature,
top_k, top_p, schedule, order, remask, remask_by, block, cache, precision.
"""

import argparse
import math
import re
import sys
import time
from collections import Counter
from dataclasses import fields

import torch
import torch.nn.functional as F

from checkpoint import DEFAULT_AR, DEFAULT_CKPT, load_model_of_kind
from cli import ArgumentParser, UserError, field_type
from corpus import DATA_DEFAULT, decode, encode, load_text, mask_id_of, split_text
from devices import autocast, pick_device
from sampler import SamplerConfig, generate

DEFAULT_SETTINGS = ["default", "steps=256", "steps=32", "threshold=0.9", "temperature=1.0", "temperature=0.6",
                    "order=noisy", "remask=1.0", "top_p=0.9", "block=32", "block=32,cache=prefix",
                    "block=32,cache=dual", "block=64,cache=dual", "block=16,cache=dual"]
MAX_PROMPTS = 1024  # prompts are one batch: this bounds its memory
# a setting may change any field of SamplerConfig but the CUDA-only ones, with the field's type
TYPES = {f.name: field_type(f) for f in fields(SamplerConfig) if f.name not in ("compile", "cuda_graph")}


def parse_setting(text):
    """'steps=64,temperature=0.8' -> a SamplerConfig: sample.py's defaults with these changed."""
    given = {}
    for part in text.split(","):
        if part == "default":
            continue
        key, _, value = part.partition("=")
        if key not in TYPES:
            raise UserError(f"unknown setting {key!r} in {text!r} (known: default, {', '.join(TYPES)})")
        try:
            given[key] = None if value == "none" else TYPES[key](value)
        except ValueError:
            raise UserError(f"bad value {value!r} for {key} in {text!r}") from None
    try:
        return SamplerConfig.from_options(**given)
    except ValueError as e:
        raise UserError(f"setting {text!r}: {e}") from None


@torch.no_grad()
def ar_nll(ar_model, ids, start):
    """Mean NLL (nats/char) of ids[:, start:] under the autoregressive model."""
    with autocast(ids.device):
        logits = ar_model(ids[:, :-1])
    nll = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
    return nll[:, start - 1:].mean().item()


def text_stats(texts, vocabulary):
    words = [w for t in texts for w in re.findall(r"[A-Za-z']+", t)]
    known = sum(w.lower() in vocabulary for w in words) / max(len(words), 1)
    bigrams = [tuple(ws[i:i + 2]) for t in texts for ws in [re.findall(r"[A-Za-z']+", t)] for i in range(len(ws) - 1)]
    distinct = len(set(bigrams)) / max(len(bigrams), 1)
    counts = Counter("".join(texts))
    total = sum(counts.values())
    entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
    runs = sum(has_run(t) for t in texts) / max(len(texts), 1)
    return known, distinct, entropy, runs


def has_run(text, length=3):
    """True if some word appears `length` or more times in a row (case-insensitive)."""
    words = [w.lower() for w in re.findall(r"[A-Za-z']+", text)]
    return any(len(set(words[i:i + length])) == 1 for i in range(len(words) - length + 1))


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="diffusion model to score (default: weights/model.pt)")
    p.add_argument("--ar", default=DEFAULT_AR, help="autoregressive scorer (default: weights/ar_baseline.pt)")
    p.add_argument("--data", default=DATA_DEFAULT, help="the text; prompts come from its validation split")
    p.add_argument("--prompts", type=int, default=32, help="number of prompts, one batch (default %(default)s)")
    p.add_argument("--prompt-chars", type=int, default=32,
                   help="characters of each prompt; the model writes the rest of the window (default %(default)s)")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                   help="sampler settings to score, each 'default' or field=value[,field=value] over "
                        "SamplerConfig's fields (default: a grid of 14)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed; prompt i uses seed + i (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
        model, chars, _ = load_model_of_kind(args.ckpt, device, causal=False)
        ar_model, ar_chars, _ = load_model_of_kind(args.ar, device, causal=True)
        if ar_chars != chars:
            raise UserError(f"{args.ar} is not an autoregressive model with the same vocabulary")
        settings = [(s, parse_setting(s)) for s in args.settings]
        T = model.config.block_size
        if not 0 < args.prompt_chars < T:
            raise UserError(f"--prompt-chars must be in 1..{T - 1}, got {args.prompt_chars}")
        if not 1 <= args.prompts <= MAX_PROMPTS:
            raise UserError(f"--prompts must be in 1..{MAX_PROMPTS} (one batch), got {args.prompts}")
        train_text, val = split_text(load_text(args.data))
        if len(val) - T < args.prompts:  # every prompt its own window
            raise UserError(f"{args.data}: its validation split has {len(val):,} characters, too few for "
                            f"{args.prompts} windows of {T} (--prompts, --data)")
        encode(val, chars)  # every validation character must be in the model's vocabulary (one error if not)
        vocabulary = {w.lower() for w in re.findall(r"[A-Za-z']+", train_text)}
        stride = (len(val) - T) // args.prompts
        windows = [val[i * stride:i * stride + T] for i in range(args.prompts)]
        real = torch.tensor([encode(w, chars) for w in windows], device=device)  # one error for unknown characters
    except UserError as e:
        sys.exit(f"quality.py: error: {e}")

    P = args.prompt_chars
    print(f"{args.prompts} prompts of {P} chars from the validation split, {T - P} chars generated each; "
          f"device {device}")
    print("| setting | AR NLL (nats/char) | words in train % | distinct bigrams % | char entropy (bits) | runs % "
          "| NFE | chars/s |")
    print("|---|---|---|---|---|---|---|---|")

    def row(name, ids, nfe, seconds):
        texts = [decode(r[P:], chars) for r in ids.tolist()]
        known, distinct, entropy, runs = text_stats(texts, vocabulary)
        speed = f"{args.prompts * (T - P) / seconds:,.0f}" if seconds else "-"
        print(f"| {name} | {ar_nll(ar_model, ids, P):.3f} | {100 * known:.1f} | {100 * distinct:.1f} | "
              f"{entropy:.3f} | {100 * runs:.1f} | {nfe if nfe else '-'} | {speed} |", flush=True)

    row("real validation text", real, 0, 0)
    for name, config in settings:
        canvas = real.clone()
        canvas[:, P:] = mask_id_of(chars)
        generate(model, canvas[:1], config, args.seed)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        out, nfe = generate(model, canvas, config, args.seed)
        if device.type == "cuda":
            torch.cuda.synchronize()
        row(name, out, nfe, time.time() - t0)


if __name__ == "__main__":
    main()
