"""
Which changes make the shipped recipe's training step faster on a GPU: one variant per process
(dynamo's caches stay apart), timed over --steps steps after a warm-up. A lab script (issue 29,
item 1): the variants that win move into the Trainer.

    for v in shipped graph bf16-residual ...; do python dev/step_variants.py --variant $v; done
"""

import argparse
import contextlib
import fcntl
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cli import ArgumentParser  # noqa: E402
from devices import autocast  # noqa: E402
from train_config import add_train_flags, check_config, configs_from_args  # noqa: E402
from trainer import Trainer, get_batch  # noqa: E402

FLAGS = {"no-dropout": ["--dropout", "0", "--attn_dropout", "0", "--embd_dropout", "0"],
         "no-attn-dropout": ["--attn_dropout", "0"], "batch512": ["--batch_size", "512"]}


def trainer_for(flags):
    p = ArgumentParser(prog="step_variants.py")
    add_train_flags(p)
    mc, tc, explicit = configs_from_args(p.parse_args(["--preset", "gpu", "--out_dir", "/tmp/step_variants"] + flags))
    check_config(mc, tc)
    return Trainer(mc, tc, explicit)


def bf16_residual(trainer):
    """The residual stream in bf16 (nanochat, modded-nanogpt): the embedding's output cast, so every
    residual add and norm reads and writes half the bytes."""
    wte = trainer.model.wte
    wte.forward = lambda idx: F.embedding(idx, wte.weight).to(torch.bfloat16)


def graphed(trainer):
    """The whole step (batch, masks, forward, backward, clip, AdamW, EMA) as one CUDA graph."""
    dev = trainer.device
    for opt in trainer.optimizers:
        for group in opt.param_groups:
            group["lr"] = torch.tensor(float(group["peak_lr"]), device=dev)
            group["capturable"] = True
    params = list(trainer.model.parameters())
    ema = list(trainer.ema.model.parameters())

    def body():
        x = get_batch(trainer.train_ids, trainer.local_batch, trainer.seq_len, trainer.gen)
        with autocast(dev, "bf16"):
            loss = trainer.loss(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, trainer.tc.grad_clip, foreach=True)
        for opt in trainer.optimizers:
            opt.step()
        torch._foreach_lerp_(ema, params, 1 - 0.999)
        return loss.detach()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
            for opt in trainer.optimizers:
                opt.zero_grad(set_to_none=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    if hasattr(graph, "register_generator_state"):
        graph.register_generator_state(trainer.gen)
    else:
        print("no register_generator_state: the batch generator is frozen in the graph", flush=True)
    with torch.cuda.graph(graph):
        loss = body()
    return lambda lr_mult: (graph.replay(), loss)[1]


def sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return lambda: sdpa_kernel([getattr(SDPBackend, backend)])


def bf16_weights(trainer):
    """The weights (and the EMA copy, and so the optimizer's moments) in bf16, as nanochat keeps
    them. No fp32 master copy here: this times the step's traffic, an upper bound on what a
    bf16 model with fp32 master weights (one more elementwise pass over 10.7M numbers) gains."""
    trainer.model.to(torch.bfloat16)
    if trainer.ema:
        trainer.ema.model.to(torch.bfloat16)


PATCHES = {"bf16-residual": bf16_residual, "bf16-weights": bf16_weights}
VARIANTS = {  # name: (extra flags, patches (PATCHES keys; "graph": the step as one CUDA graph;
              # "autotune", "coordinate": inductor options), context)
    "shipped": ([], (), None),
    "no-dropout": (FLAGS["no-dropout"], (), None),
    "no-attn-dropout": (FLAGS["no-attn-dropout"], (), None),
    "batch512": (FLAGS["batch512"], (), None),
    "bf16-residual": ([], ("bf16-residual",), None),
    "bf16-weights": ([], ("bf16-weights",), None),
    "bf16-weights-residual": ([], ("bf16-weights", "bf16-residual"), None),
    "flash": ([], (), sdpa("FLASH_ATTENTION")),
    "cudnn": ([], (), sdpa("CUDNN_ATTENTION")),
    "efficient": ([], (), sdpa("EFFICIENT_ATTENTION")),
    "autotune": ([], ("autotune",), None),
    "coordinate": ([], ("coordinate",), None),
    "graph": ([], ("graph",), None),
    "graph-bf16-residual": ([], ("graph", "bf16-residual"), None),
    # every lever at once (dropout off is a recipe change, not a speed lever): how far these levers
    # can go at all; under 5M tokens/s the target needs a lever outside this list
    "bound": (FLAGS["no-dropout"], ("graph", "bf16-weights", "bf16-residual"), None),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    flags, patches, context = VARIANTS[args.variant]
    import torch._inductor.config as inductor
    inductor.max_autotune = "autotune" in patches
    inductor.coordinate_descent_tuning = "coordinate" in patches
    trainer = trainer_for(flags)
    for name in patches:
        if name in PATCHES:
            PATCHES[name](trainer)
    t0 = time.perf_counter()
    with (context or contextlib.nullcontext)():
        step = graphed(trainer) if "graph" in patches else trainer.train_step
        first = step(1.0).item()  # compiles; processes compile side by side, then time one at a time
        ready = time.perf_counter() - t0
        with open("/tmp/step_variants.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for _ in range(5):
                step(1.0)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = step(1.0)
            torch.cuda.synchronize()
            ms = 1000 * (time.perf_counter() - t0) / args.steps
            fcntl.flock(lock, fcntl.LOCK_UN)
    print(f"{args.variant:<20} {ms:7.2f} ms/step {trainer.tokens_per_step / ms * 1000:>12,.0f} tokens/s | "
          f"loss {first:.3f} -> {loss.item():.3f} in {args.steps + 6} steps | compile {ready:.0f}s | "
          f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)


if __name__ == "__main__":
    main()
