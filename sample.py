"""
Generate text with a trained tiny-diffusion checkpoint (default: the shipped weights/student16.pt,
a D-MMD student of weights/model.pt that writes in 16 passes, at the setting stored with it).

    python sample.py                                   # 256 new characters, 16 passes
    python sample.py --ckpt weights/model.pt           # the 64-pass teacher, at SamplerConfig's defaults
    python sample.py --prompt "ROMEO:" --length 500 --num-samples 3 --seed 1
    python sample.py --prompt "ROMEO:\\nBut soft, what light through yonder ______ breaks?"
    python sample.py --threshold 0.9 --stats           # adaptive number of forward passes
    python sample.py --steps 64 --remask 1.0           # redraw the least likely characters
    python sample.py --compile --cuda-graph --num-samples 640   # CUDA: one graph per generation
    python sample.py --steps 16 --copula l2r --stats   # each step's characters drawn jointly (copula.py)

Every sampler option is a field of sampler.SamplerConfig; a checkpoint's stored setting replaces
its defaults where a flag is silent. From Python, generate(model, canvas, seed=seed) writes what
this script writes.

stdout carries only the text: each sample in full, prompt included; several samples are
separated by a blank line and a line holding `---`. --stats reports to stderr.
In --prompt, `_` marks a character to generate (infilling) and `\\n` is a newline.
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import os
import sys
import time

import torch
from cli import ArgumentParser, Progress, UserError, add_progress_flag, run_entry_point
from copula import generate_with_cost
from corpus import decode, mask_id_of
from sampler import (add_sampling_flags, generate, generate_steps, load_for_sampling, make_canvas, plan_generation,
                     sampling_seed)

MAX_SAMPLES = 10_000
BATCH = 64  # samples per forward pass: bounds memory, which grows with the batch
SAMPLE_SEPARATOR = "\n---\n"  # printed between samples, after the blank line that ends a sample


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_flags(p)
    p.add_argument("--num-samples", type=int, default=1,
                   help=f"samples (1..{MAX_SAMPLES}), generated in batches of up to {BATCH} and printed "
                        f"as each batch ends; sample i uses seed + i")
    p.add_argument("--stats", action="store_true", help="print forward passes, chars/s and device to stderr")
    p.add_argument("--warmup", type=int, default=0, metavar="N",
                   help="run N untimed generations first (compilation, caches) so --stats times steady state; 0..1000")
    add_progress_flag(p)
    args = p.parse_args(argv)
    try:
        seed = sampling_seed(args)
        if not 1 <= args.num_samples <= MAX_SAMPLES:
            raise UserError(f"--num-samples must be in 1..{MAX_SAMPLES}, got {args.num_samples}")
        if not 0 <= args.warmup <= 1000:
            raise UserError(f"--warmup must be in 0..1000, got {args.warmup}")
        device, model, chars, config = load_for_sampling(args)
        canvas = make_canvas(args.prompt, args.length, chars, min(args.num_samples, BATCH), device)
        n_new = int((canvas[0] == mask_id_of(chars)).sum())
        for _ in range(args.warmup):
            generate(model, canvas, config, seed)
        batches = range(0, args.num_samples, BATCH)
        progress = Progress("sampling: pass", enabled=args.progress)
        passes = planned_passes(model, canvas, config, seed) if progress.enabled else 0
        progress.total = len(batches) * passes
        seconds, nfe = 0.0, 0
        for first in batches:
            n = min(BATCH, args.num_samples - first)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
            out, nfe, cost = generate_with_progress(model, canvas[:n], config, seed + first, progress)  # cost: --copula's
            texts = [decode(row, chars) for row in out.tolist()]  # .tolist() waits for the device
            seconds += time.time() - t0
            progress.update((first // BATCH + 1) * passes - progress.done)  # a threshold run may stop short of its plan
            progress.clear()  # the text goes to the same terminal
            separator = SAMPLE_SEPARATOR if first else ""
            print(separator + SAMPLE_SEPARATOR.join(t + "\n" for t in texts), end="", flush=True)
    except UserError as e:
        sys.exit(f"sample.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # the reader left (`sample.py ... | head`): stop quietly, as `yes | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        sys.exit(141)
    if args.stats:
        total = n_new * args.num_samples
        copula = f" {cost} (copula, last batch)" if cost else ""
        print(f"[stats] {nfe} forward passes (NFE){copula} for {n_new} new chars x {args.num_samples} samples "
              f"in {seconds:.3f}s = {total / seconds:,.0f} chars/s | device {device} | seed {seed}"
              + stored_setting(model), file=sys.stderr)


def stored_setting(model):
    """The --stats line's note of the checkpoint's own sampler setting, where it has one (it
    replaced the defaults wherever the flags were silent)."""
    setting = ",".join(f"{k}={v}" for k, v in model.sampler_defaults.items())
    return f" | the checkpoint's setting: {setting}" if setting else ""


def planned_passes(model, canvas, config, seed):
    """The forward passes one generation of `canvas` is planned to take (a threshold run's most:
    one per character of each block), for the progress line of long texts (5,000 characters
    take a minute on a CPU). Host work only; the prior's pass is made once per model."""
    return sum(p.steps.n_steps for p in plan_generation(model, canvas, config, seed).blocks)


def generate_with_progress(model, canvas, config, seed, progress):
    """copula.generate_with_cost, one progress update per forward pass: (canvas, nfe, the copula's
    cost or None). The CUDA graph runs whole, and a copula's generation keeps its own loop: one
    update at the end. The same text: the steps are generate's."""
    if config.cuda_graph or config.copula != "none" or not progress.enabled:
        out, nfe, cost = generate_with_cost(model, canvas, config, seed)
        progress.update(nfe)
        return out, nfe, cost
    out, nfe = canvas, 0
    for state in generate_steps(model, canvas, config, seed):
        out, nfe = state.canvas, state.nfe
        progress.update()
    return out, nfe, None


if __name__ == "__main__":
    run_entry_point(main)
