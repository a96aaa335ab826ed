"""
Train tiny-diffusion on Tiny Shakespeare.

    python train.py --preset cpu                    # small model, ~10 minutes on a laptop CPU
    python train.py --preset gpu                    # the full 10.7M model (CUDA: bf16 + compile)
    torchrun --nproc_per_node 2 train.py --preset gpu   # DDP on 2 GPUs (gloo on CPU)
    python train.py --preset cpu --resume           # continue from <out-dir>/last.pt
    python train.py --preset gpu-ar                 # the autoregressive baseline

Data: first 90% of the file for training, last 10% held out for validation (evaluate.py
scores a finished checkpoint on it, with context and paired with another model).
Objective "diffusion": masked diffusion, loss = negative ELBO in nats/char (diffusion.py).
Objective "ar": same backbone with causal attention and next-character loss.
Objective "mixed": a diffusion model that also trains --ar_fraction of each batch AR-style
(causal attention on the same network; evaluate.py --as-ar scores that half).
Training levers: --t_dist (uniform, bell, clipped), --loss_weights (elbo, none); the
validation number is always the uniform NELBO.
Every field of ModelConfig and TrainConfig can be set on the command line (--n_layer 4 or
--n-layer 4); a preset only changes the defaults. The loop itself is trainer.Trainer.
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import sys

from cli import ArgumentParser, UserError, run_entry_point
from train_config import add_train_flags, check_config, configs_from_args
from trainer import Trainer, shutdown_distributed


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_flags(p)
    args = p.parse_args(argv)
    try:
        mc, tc, explicit = configs_from_args(args)
        check_config(mc, tc, explicit)
        trainer = Trainer(mc, tc, explicit)
        trainer.run()
        del trainer
        shutdown_distributed()
    except UserError as e:
        sys.exit(f"train.py: error: {e}")


if __name__ == "__main__":
    run_entry_point(main)
