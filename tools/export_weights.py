"""
Strip a training checkpoint down to what sampling needs, with bf16 weights (half the size).

    python tools/export_weights.py out/gpu/best.pt weights/model.pt
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from checkpoint import read_checkpoint, write_checkpoint  # noqa: E402
from cli import ArgumentParser, UserError  # noqa: E402


def main():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="training checkpoint (best.pt or last.pt)")
    p.add_argument("dst", help="where to write the sampling checkpoint")
    args = p.parse_args()
    try:
        ckpt = read_checkpoint(args.src)
        for training_only in ("optimizer", "generator", "elapsed", "rng", "ema", "teacher", "teacher_round"):
            ckpt.pop(training_only, None)
        ckpt["model"] = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
        write_checkpoint(ckpt, args.dst)  # a UserError too when dst cannot be written
    except UserError as e:
        sys.exit(f"export_weights.py: error: {e}")
    print(f"{args.src} -> {args.dst}: step {ckpt.get('step')}, val {ckpt.get('val')}")


if __name__ == "__main__":
    main()
