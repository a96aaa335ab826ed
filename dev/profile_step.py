"""
Where the training step's time goes on a GPU: the step train.py runs (Trainer.train_step) for
the shipped recipe, timed with variants that switch one cost off (dropout, EMA), and one torch.profiler trace of the plain step: the GPU-busy fraction (kernel time
over wall time: well under 1 means the host's launches are the bottleneck) and the top kernels.

    python dev/profile_step.py --steps 30
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train_config import add_train_flags, check_config, configs_from_args  # noqa: E402
from trainer import Trainer  # noqa: E402
from cli import ArgumentParser  # noqa: E402

VARIANTS = {"shipped": [], "no dropout": ["--dropout", "0", "--attn_dropout", "0", "--embd_dropout", "0"],
            "no EMA": ["--ema", "0"]}


def trainer_for(flags, rest):
    p = ArgumentParser(prog="profile_step.py (train.py's flags)")
    add_train_flags(p)
    mc, tc, explicit = configs_from_args(p.parse_args(["--preset", "gpu", "--out_dir", "/tmp/profile_step"]
                                                     + rest + flags))
    check_config(mc, tc)
    return Trainer(mc, tc, explicit)


def time_steps(trainer, steps):
    for _ in range(5):
        trainer.train_step(1.0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(1.0)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args, rest = p.parse_known_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    for name in args.variants.split(","):
        trainer = trainer_for(VARIANTS[name], rest)
        ms = 1000 * time_steps(trainer, args.steps)
        print(f"{name:<14} {ms:7.2f} ms/step  {trainer.tokens_per_step / ms * 1000:>12,.0f} tokens/s", flush=True)
        if name == "shipped":
            profile(trainer)
        del trainer
        torch._dynamo.reset()


def profile(trainer, steps=5):
    from torch.profiler import ProfilerActivity, profile as torch_profile
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(1.0)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    print(f"profiled {steps} steps: wall {1000 * wall / steps:.2f} ms/step, GPU kernels "
          f"{kernel_us / 1000 / steps:.2f} ms/step (busy {kernel_us / 1e6 / wall:.0%})")
    print(events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    main()
