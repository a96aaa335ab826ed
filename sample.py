"""
Generate text with a trained tiny-diffusion checkpoint (default: the shipped weights/model.pt).

    python sample.py                                   # 256 new characters
    python sample.py --prompt "ROMEO:" --length 500 --num-samples 3 --seed 1
    python sample.py --prompt "ROMEO:\\nBut soft, what light through yonder ______ breaks?"
    python sample.py --threshold 0.9 --stats           # adaptive number of forward passes
    python sample.py --steps 64 --remask 1.0           # redraw the least likely characters
    python sample.py --compile --cuda-graph --num-samples 640   # CUDA: one graph per generation

stdout carries only the text: each sample in full, prompt included; several samples are
separated by a blank line and a line holding `---`. --stats reports to stderr.
In --prompt, `_` marks a character to generate (infilling) and `\\n` is a newline.
"""

import argparse
import os
import random
import signal
import sys
import time

if __name__ == "__main__":  # Ctrl-C while torch loads: exit quietly (main() handles it later);
    # os._exit, not sys.exit: an exception raised inside torch's C++ import code aborts the process
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import torch

from model import (CACHES, MASK_GLYPH, ORDERS, REMASK_BY, ArgumentParser, UserError, check_sampler_options, decode,
                   encode, generate, load_model, mask_id_of, pick_device)

DEFAULT_CKPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "model.pt")
MAX_LENGTH = 100_000
MAX_SAMPLES = 10_000
BATCH = 64  # samples per forward pass: bounds memory (a batch of 4096 took 18 GB)
SAMPLE_SEPARATOR = "\n---\n"  # printed between samples, after the blank line that ends a sample
# the sampler's defaults, chosen with quality.py on 64 validation prompts (README: "Choosing the
# default sampler"). --threshold needs confidences: with it, order and remask default to
# confidence and 0 (THRESHOLD_DEFAULTS).
SAMPLER_DEFAULTS = dict(steps=64, threshold=None, temperature=0.95, top_k=None, top_p=None, schedule="cosine",
                        order="spread", remask=0.5, remask_by="pmi", block=None, cache="none",
                        refresh=8, precision="auto")
THRESHOLD_DEFAULTS = dict(order="confidence", remask=0.0)


def sampler_options(**given):
    """The sampler's options: SAMPLER_DEFAULTS changed by `given` (None = not given). A threshold
    replaces the step count and, unless they are given, takes THRESHOLD_DEFAULTS."""
    given = {k: v for k, v in given.items() if v is not None}
    options = dict(SAMPLER_DEFAULTS)
    if "threshold" in given:
        options.update(steps=None, **THRESHOLD_DEFAULTS)
    options.update(given)
    return options


def add_sampling_args(p, cuda_graph=True):
    """The flags sample.py, bench.py and diffusion_process.py share (the animation, which shows
    every step, goes without --cuda-graph)."""
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="checkpoint (default: weights/model.pt)")
    p.add_argument("--prompt", default="", help="text to start from; `_` marks characters to fill in")
    p.add_argument("--length", type=int, default=None,
                   help="total characters, prompt included (default: 256 after the prompt, or the "
                        "prompt's length when it contains `_`); beyond the context the text is "
                        "written window by window")
    p.add_argument("--steps", type=int, default=None,
                   help=f"forward passes to unmask everything (default {SAMPLER_DEFAULTS['steps']}; at most one per "
                        f"character, at least one per block)")
    p.add_argument("--threshold", type=float, default=None,
                   help="instead of --steps: each pass commits every character with confidence >= "
                        "this (in (0, 1]), at least one")
    p.add_argument("--schedule", choices=["linear", "cosine"],
                   help=f"characters committed per step with --steps (default {SAMPLER_DEFAULTS['schedule']})")
    p.add_argument("--order", choices=ORDERS,
                   help="which masked characters to commit each step: spread: bit-reversed positions, "
                        "those written together far apart; random (MDLM's ancestral order); the most "
                        "confident (spells best, repeats most); noisy: confidence plus annealed Gumbel noise "
                        f"(MaskGIT). Default {SAMPLER_DEFAULTS['order']}, confidence with --threshold")
    p.add_argument("--remask", type=float, metavar="RHO",
                   help="with --steps: each step also re-opens RHO x its count of written characters, "
                        "those drawn with the lowest probability, and writes as many more; same "
                        f"number of passes (ReMDM; default {SAMPLER_DEFAULTS['remask']}, 0 with --threshold)")
    p.add_argument("--remask-by", choices=REMASK_BY,
                   help="which written characters count as least likely: prob, the probability each was "
                        "drawn with; ratio, that over the best character's there (spares positions with "
                        "many good options); pmi, that over the model's prior for the character (spares "
                        f"rare characters: capitals, colons); default {SAMPLER_DEFAULTS['remask_by']}")
    p.add_argument("--temperature", type=float, help=f"0 = greedy (default {SAMPLER_DEFAULTS['temperature']})")
    p.add_argument("--top-k", type=int, help="draw only from the k most likely characters")
    p.add_argument("--top-p", type=float,
                   help="draw only from the most likely characters whose probabilities sum to p (nucleus)")
    p.add_argument("--block", type=int, metavar="B",
                   help="semi-autoregressive: write left to right in blocks of B characters, each "
                        "unmasked in parallel over its share of the steps (default: the whole window; "
                        "blocks cost quality with the shipped model, see README)")
    p.add_argument("--cache", choices=CACHES,
                   help="reuse keys/values across steps. With --block, those outside the block for all "
                        "its steps (prefix: the left side; dual: both sides, each step runs on the block "
                        "alone). sparse (order random or spread, blocks or not): each step runs only on "
                        "the positions it writes and those changed since the last full pass")
    p.add_argument("--refresh", type=int, metavar="R",
                   help=f"with --cache sparse: a full pass every R steps (default {SAMPLER_DEFAULTS['refresh']})")
    p.add_argument("--seed", type=int, default=None, help="same seed, same text (default: random)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="auto = bf16 where it is native (CUDA; CPUs with AVX-512 BF16 or AMX, where "
                        f"it nearly halves the time), fp32 elsewhere (default {SAMPLER_DEFAULTS['precision']})")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each step, forward pass and sampling together (pays off on CUDA "
                        "after a warm-up; not with --cache)")
    p.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode; reduce-overhead uses CUDA graphs (default %(default)s)")
    if cuda_graph:
        p.add_argument("--cuda-graph", action="store_true",
                       help="CUDA: capture the whole generation as one CUDA graph and replay it (needs --steps, "
                            "no --cache; pays off from the second generation of a shape: use --warmup or --num-samples)")


def check_sampling_args(args):
    """The CLI's own limits, the defaults that depend on other flags, then the sampler's rules
    (model.check_sampler_options, the one place they live)."""
    if args.length is not None and not 1 <= args.length <= MAX_LENGTH:
        raise UserError(f"--length must be in 1..{MAX_LENGTH}, got {args.length}")
    if args.seed is None:
        args.seed = random.randrange(2**31)
    vars(args).update(sampler_options(**{k: getattr(args, k) for k in SAMPLER_DEFAULTS}))
    try:
        check_sampler_options(**{k: v for k, v in sampler_kwargs(args).items() if k not in ("seed", "precision")})
    except ValueError as e:
        raise UserError(str(e)) from None


def build_canvas(args, chars, num_samples, device):
    """The starting state: prompt characters, `_` and the continuation as masks."""
    prompt = args.prompt.replace("\\n", "\n")
    ids = encode(prompt, chars, allow_mask=True)
    length = args.length
    if length is None:
        length = len(ids) if MASK_GLYPH in prompt else len(ids) + 256
    if length < len(ids):
        raise UserError(f"--length {length} is shorter than the prompt ({len(ids)} characters)")
    mask_id = mask_id_of(chars)
    ids = ids + [mask_id] * (length - len(ids))
    if mask_id not in ids:
        raise UserError("nothing to generate: the prompt has no `_` and --length adds no characters")
    return torch.tensor([ids] * num_samples, dtype=torch.long, device=device)


def load_for_sampling(args):
    """Device, model and vocabulary for the sampling CLIs."""
    device = pick_device(args.device)
    if getattr(args, "cuda_graph", False) and device.type != "cuda":
        raise UserError(f"--cuda-graph needs a CUDA device; this run is on {device.type}")
    model, chars, _ = load_model(args.ckpt, device)
    if model.config.causal:
        raise UserError(f"{args.ckpt} is an autoregressive baseline, not a diffusion model")
    return device, model, chars


def sampler_kwargs(args):
    return dict(steps=args.steps, threshold=args.threshold, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, schedule=args.schedule, seed=args.seed, order=args.order,
                precision=args.precision, remask=args.remask, remask_by=args.remask_by, block=args.block,
                cache=args.cache, refresh=args.refresh,
                compile=args.compile_mode if args.compile else None,
                **({"cuda_graph": args.cuda_graph} if hasattr(args, "cuda_graph") else {}))


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(p)
    p.add_argument("--num-samples", type=int, default=1,
                   help=f"samples (1..{MAX_SAMPLES}), generated in batches of up to {BATCH} and printed "
                        f"as each batch ends; sample i uses seed + i")
    p.add_argument("--stats", action="store_true", help="print forward passes, chars/s and device to stderr")
    p.add_argument("--warmup", type=int, default=0, metavar="N",
                   help="run N untimed generations first (compilation, caches) so --stats times steady state")
    args = p.parse_args(argv)
    try:
        check_sampling_args(args)
        if not 1 <= args.num_samples <= MAX_SAMPLES:
            raise UserError(f"--num-samples must be in 1..{MAX_SAMPLES}, got {args.num_samples}")
        if args.warmup < 0:
            raise UserError(f"--warmup must be >= 0, got {args.warmup}")
        device, model, chars = load_for_sampling(args)
        canvas = build_canvas(args, chars, min(args.num_samples, BATCH), device)
        n_new = int((canvas[0] == mask_id_of(chars)).sum())
        for _ in range(args.warmup):
            generate(model, canvas, **sampler_kwargs(args))
        seconds, nfe = 0.0, 0
        for first in range(0, args.num_samples, BATCH):
            n = min(BATCH, args.num_samples - first)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
            out, nfe = generate(model, canvas[:n], **{**sampler_kwargs(args), "seed": args.seed + first})
            texts = [decode(row, chars) for row in out.tolist()]  # .tolist() waits for the device
            seconds += time.time() - t0
            separator = SAMPLE_SEPARATOR if first else ""
            print(separator + SAMPLE_SEPARATOR.join(t + "\n" for t in texts), end="", flush=True)
    except UserError as e:
        sys.exit(f"sample.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    if args.stats:
        total = n_new * args.num_samples
        print(f"[stats] {nfe} forward passes (NFE) for {n_new} new chars x {args.num_samples} samples "
              f"in {seconds:.3f}s = {total / seconds:,.0f} chars/s | device {device} | seed {args.seed}",
              file=sys.stderr)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C is KeyboardInterrupt again
    main()
