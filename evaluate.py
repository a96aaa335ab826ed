"""
Score checkpoints on the held-out split (the last 10% of the data), every character once.

    python evaluate.py                                           # weights/model.pt, isolated windows
    python evaluate.py --context 128                             # each block given 128 chars before it
    python evaluate.py --ckpt weights/model.pt --paired weights/ar_baseline.pt --context 128
    python evaluate.py --order l2r --paired weights/ar_baseline.pt   # the diffusion network read left to right

A diffusion model reports its negative ELBO (an upper bound on its NLL), an autoregressive
model its exact NLL, both in nats/char, on the same blocks: the first window whole, then
blocks of T - C characters each given the C characters before it (C = --context; 0 is
isolated windows). The diffusion estimate averages --mc mask draws per block (k ~ U{1..L}
masked positions, stratified, a fixed --seed: the same masks on any device). The standard
error is over blocks; with --paired each further model is scored on the same blocks and each
paired difference (--ckpt's minus that model's) gets its own standard error (several: --paired
AR.pt BASE.pt, a lever's run against the AR model and against its base recipe in one call).

--order l2r reads a diffusion model in one order instead: each character predicted from the
clean characters before it in the window, with MASK at it and after it. That is an exact NLL
(one forward pass per character, no mask draws), directly comparable with the AR model's; the
NELBO (--order any) is the mean of such exact NLLs over all orders. An AR model's NLL is exact
in its own order already: --order does not change it. --as-ar reads the --ckpt diffusion
network as an AR model instead (causal attention, next-character head): for models trained
with train.py --objective mixed, whose AR half is scored that way for the record.

A block-diffusion model (train.py --objective block) scores each block as the sum of its
L'-blocks' NELBOs, each given every clean character before it in the window.
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import sys
import time
from dataclasses import replace

from checkpoint import DEFAULT_CKPT, load_model
from cli import ArgumentParser, Progress, UserError, add_progress_flag, shown, run_entry_point
from corpus import DATA_DEFAULT, encode_splits, load_text
from devices import pick_device
from diffusion import EVAL_ORDERS, Shard, block_scores, format_eval, summarize


MAX_MC = 4096  # mask draws per block: 4,096 x 436 blocks is already hours on a GPU


def check_args(args):
    if not 1 <= args.mc <= MAX_MC:
        raise UserError(f"--mc must be in 1..{MAX_MC}, got {args.mc}")
    if not 0 <= args.seed < 2 ** 63:
        raise UserError(f"--seed must be in 0..2**63-1, got {args.seed}")
    if not args.context >= 0:
        raise UserError(f"--context must be >= 0, got {args.context}")
    if args.order not in EVAL_ORDERS:
        raise UserError(f"--order must be one of {', '.join(EVAL_ORDERS)}, got {args.order!r}")


def load_for_evaluation(path, device, context, as_ar=False, order="any"):
    """The model and its vocabulary, with the context checked against its length; as_ar: its
    network read causally, as an AR model (the forward pass follows its objective's attention)."""
    model, chars, _ = load_model(path, device)
    if model.config.objective == "block" and (as_ar or order == "l2r"):
        raise UserError(f"{shown(path)} is a block model, scored by its NELBO: "
                        f"{'--as-ar' if as_ar else '--order l2r'} reads a plain diffusion or mixed model")
    if as_ar:
        model.config = replace(model.config, objective="ar")
    T = model.config.block_size
    if context >= T:
        raise UserError(f"--context must be in 0..{T - 1} for {shown(path)} (its context is {T})")
    return model, chars


def describe_estimator(causal, args):
    if causal:
        return "exact" + ("; an AR model has one order, --order l2r does not apply" if args.order == "l2r" else "")
    if args.order == "l2r":
        return "exact, read left to right, one pass per character"
    return f"{args.mc} mask draws per block, seed {args.seed}"


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="checkpoint to score (default: weights/model.pt)")
    p.add_argument("--paired", nargs="+", default=[], metavar="CKPT",
                   help="also score these checkpoints on the same blocks and report each paired difference")
    p.add_argument("--context", type=int, default=0, metavar="C",
                   help="characters of clean context before every block after the first, 0 .. the model's context - 1 "
                        "(default %(default)s)")
    p.add_argument("--mc", type=int, default=4, help="mask draws per block, diffusion models, 1..4096 (default %(default)s)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the mask draws, 0..2**63-1 (default %(default)s)")
    p.add_argument("--order", default="any", choices=EVAL_ORDERS,
                   help="diffusion models: any = the NELBO (every order); l2r = the exact left-to-right NLL "
                        "(one pass per character); an AR model's NLL is exact already (default %(default)s)")
    p.add_argument("--as-ar", dest="as_ar", action="store_true",
                   help="score --ckpt's network as an AR model (causal attention; for --objective mixed models)")
    p.add_argument("--data", default=DATA_DEFAULT, help="the text (default: data/tiny_shakespeare.txt)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    add_progress_flag(p)
    args = p.parse_args(argv)
    try:
        check_args(args)
        device = pick_device(args.device)
        text = load_text(args.data)
        paths = [args.ckpt] + args.paired
        models = [load_for_evaluation(path, device, args.context, args.as_ar and i == 0, args.order)
                  for i, path in enumerate(paths)]  # all checked first
        if len({m.config.block_size for m, _ in models}) > 1:
            raise UserError(f"--paired needs the same context length ({' vs '.join(str(m.config.block_size) for m, _ in models)})")
        results = []
        for path, (model, chars) in zip(paths, models):
            T = model.config.block_size
            _, val = encode_splits(text, chars, device, T + 1)
            t0 = time.time()
            progress = Progress(f"scoring {shown(path)}: batch", enabled=args.progress)
            per_block, lengths = block_scores(model, val, args.context, args.mc, args.seed, Shard(progress=progress),
                                              args.order)
            progress.clear()
            mean, se = summarize(per_block, lengths)
            how = describe_estimator(model.config.causal, args)
            if args.as_ar and model is models[0][0]:
                how += "; its network read as an AR model (--as-ar)"
            if model.config.objective == "block":  # block diffusion: the sum of its L'-blocks' conditional NELBOs
                how += f"; block model, L' = {model.config.block_len}"
            print(f"{shown(path)}: {format_eval(mean, se, model.config.causal, args.order)} on {len(val):,} held-out chars "
                  f"[context {args.context}: {len(lengths)} blocks; {how}; {device}, {time.time() - t0:.1f}s]",
                  flush=True)
            results.append((per_block, lengths))
        (xa, la) = results[0]
        for other, (xb, _) in zip(args.paired, results[1:]):
            diff, se = summarize(xa - xb, la)  # the same blocks, so the difference is paired
            print(f"paired difference {shown(args.ckpt)} - {shown(other)}: {diff:+.4f} ± {se:.4f} nats/char "
                  f"over {len(la)} blocks")
    except UserError as e:
        sys.exit(f"evaluate.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run_entry_point(main)
