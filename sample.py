"""
Generate text with a trained tiny-diffusion checkpoint (default: the shipped weights/model.pt).

    python sample.py                                   # 256 new characters
    python sample.py --prompt "ROMEO:" --length 500 --num-samples 3 --seed 1
    python sample.py --prompt "ROMEO:\\nBut soft, what light through yonder ______ breaks?"
    python sample.py --threshold 0.9 --stats           # adaptive number of forward passes
    python sample.py --steps 64 --remask 1.0           # redraw the least likely characters
    python sample.py --compile --cuda-graph --num-samples 640   # CUDA: one graph per generation

Every sampler option is a field of sampler.SamplerConfig, whose defaults are the ones here;
from Python, generate(model, canvas, SamplerConfig(), seed) writes what this script writes.

stdout carries only the text: each sample in full, prompt included; several samples are
separated by a blank line and a line holding `---`. --stats reports to stderr.
In --prompt, `_` marks a character to generate (infilling) and `\\n` is a newline.
"""

if __name__ == "__main__":  # Ctrl-C while torch is imported: exit 130, not a traceback
    import cli
    cli.exit_on_ctrl_c()

import argparse
import os
import sys
import time

import torch
from cli import ArgumentParser, UserError
from corpus import decode, mask_id_of
from sampler import add_sampling_flags, generate, load_for_sampling, make_canvas, sampling_config

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
    args = p.parse_args(argv)
    try:
        config, seed = sampling_config(args)
        if not 1 <= args.num_samples <= MAX_SAMPLES:
            raise UserError(f"--num-samples must be in 1..{MAX_SAMPLES}, got {args.num_samples}")
        if not 0 <= args.warmup <= 1000:
            raise UserError(f"--warmup must be in 0..1000, got {args.warmup}")
        device, model, chars, config = load_for_sampling(args, config)
        canvas = make_canvas(args.prompt, args.length, chars, min(args.num_samples, BATCH), device)
        n_new = int((canvas[0] == mask_id_of(chars)).sum())
        for _ in range(args.warmup):
            generate(model, canvas, config, seed)
        seconds, nfe = 0.0, 0
        for first in range(0, args.num_samples, BATCH):
            n = min(BATCH, args.num_samples - first)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
            out, nfe = generate(model, canvas[:n], config, seed + first)
            texts = [decode(row, chars) for row in out.tolist()]  # .tolist() waits for the device
            seconds += time.time() - t0
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
        print(f"[stats] {nfe} forward passes (NFE) for {n_new} new chars x {args.num_samples} samples "
              f"in {seconds:.3f}s = {total / seconds:,.0f} chars/s | device {device} | seed {seed}",
              file=sys.stderr)


if __name__ == "__main__":
    cli.run_entry_point(main)
