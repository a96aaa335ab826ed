"""
Speed, measured the same way every time.

Training: the fast path (bf16 autocast, torch.compile, fused AdamW, TF32) against the plain
path (fp32, eager) of the full model, in one run; the step timed is Trainer.train_step, the
one train.py runs. Prints tokens/s, MFU (model FLOPs over 989 TFLOP/s, an H100's dense bf16
peak) and the speed-up. Any train.py flag (e.g. --optimizer muon) also works here.

    python bench.py                                   # full config, 30 timed steps per path
    python bench.py --steps 3 --batch_size 8          # quick look on a CPU
    torchrun --nproc_per_node 2 bench.py --paths fast # DDP: global batch split over 2 GPUs

Sampling (--sample): 256 new characters from the shipped weights with sample.py's sampler
flags, at each batch size: --warmup untimed runs (compilation, CUDA-graph capture), then the
median of --runs timed runs; and, for scale, the same number of full forward passes of the
model alone. Prints chars/s and the device; and beside them the autoregressive baseline's
(--ar, default weights/ar_baseline.pt; --ar none skips it): the same number of new characters,
one per pass with its key/value cache, eager, after a newline when there is no prompt.

    python bench.py --sample                          # the default sampler, batch 1 and 64
    python bench.py --sample --device cpu --precision fp32 --batch-sizes 1
    python bench.py --sample --compile --compile-mode reduce-overhead
    python bench.py --sample --compile --cuda-graph    # the whole generation as one CUDA graph
"""

import argparse
import json
import os
import sys
import time
from dataclasses import fields

import torch

from ar_sampler import generate_ar
from checkpoint import DEFAULT_AR, load_model_of_kind
from cli import ArgumentParser, UserError
from corpus import mask_id_of
from devices import autocast, capture_graph, sampling_precision
from sampler import SamplerConfig, add_sampling_flags, generate, load_for_sampling, make_canvas, sampling_config
from train_config import add_train_flags, check_config, configs_from_args
from trainer import Trainer, shutdown_distributed

MAX_BATCH = 4096  # samples at once: a larger batch needs more memory than a GPU has
PATHS = {"fast": ("fast: bf16 + compile + fused AdamW", ["--precision", "auto", "--compile", "auto"]),
         "plain": ("plain: fp32 eager", ["--precision", "fp32", "--compile", "off"])}


def time_training(trainer, steps, warmup=3):
    """(tokens/s, MFU per GPU or None off CUDA) over `steps` train_step calls after a warm-up."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        trainer.train_step(1.0)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(1.0)
    sync()
    tok_s = steps * trainer.tokens_per_step / (time.perf_counter() - t0)
    mc = trainer.mc
    # 6 N per token for the matmuls plus 12 L T d for attention (PaLM appendix B)
    flops_per_token = 6 * trainer.model.num_params() + 12 * mc.n_layer * mc.block_size * mc.n_embd
    mfu = tok_s * flops_per_token / (989e12 * trainer.world) if trainer.device.type == "cuda" else None
    return tok_s, mfu


def captured(fn):
    """fn as one CUDA graph (after a warm-up run): the reference for --cuda-graph, so both
    sides of the ratio launch one graph."""
    return capture_graph(fn)[0].replay


def sample_benchmark(argv):
    import statistics

    p = ArgumentParser(prog="bench.py --sample", description="sampling speed (see bench.py's docstring)")
    add_sampling_flags(p)
    p.add_argument("--sample", action="store_true", help="time sampling (this mode)")
    p.add_argument("--batch-sizes", default="1,64", help="comma list (default %(default)s)")
    p.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default %(default)s)")
    p.add_argument("--ar", default=DEFAULT_AR, help="autoregressive baseline timed beside the diffusion model, "
                                                    "with its key/value cache (default weights/ar_baseline.pt; none: skip)")
    p.add_argument("--jsonl", default=None, metavar="PATH", help="also append one JSON row per measurement to PATH")
    args = p.parse_args(argv)
    try:
        check_appendable(args.jsonl)
        try:
            batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        except ValueError:
            raise UserError(f"--batch-sizes must be a comma list of integers, got {args.batch_sizes!r}") from None
        if not (1 <= args.runs <= 1000 and 0 <= args.warmup <= 1000 and 1 <= min(batch_sizes)
                and max(batch_sizes) <= MAX_BATCH):
            raise UserError(f"--runs must be in 1..1000, --warmup in 0..1000 and every batch size in 1..{MAX_BATCH}")
        args.seed = 0 if args.seed is None else args.seed
        config, seed = sampling_config(args)
        device, model, chars, config = load_for_sampling(args, config)
        ar = None if args.ar == "none" else load_model_of_kind(args.ar, device, causal=True)[0]
        canvases = {batch: make_canvas(args.prompt, args.length, chars, batch, device) for batch in batch_sizes}
    except UserError as e:
        sys.exit(f"bench.py: error: {e}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def median_time(fn):
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.runs):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    shown = " ".join(f"{k}={v}" for k, v in vars(config).items() if v not in (None, "none", 0.0, False))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"sampling {shown} | device {device} ({name}) | median of {args.runs} runs after {args.warmup} warm-up")
    mask_id = mask_id_of(chars)
    precision = sampling_precision(config.precision, device)
    forward = torch.compile(model, mode=config.compile) if config.compile else model  # for the reference
    for batch in batch_sizes:
        canvas = canvases[batch]
        n_new = int((canvas[0] == mask_id).sum())
        nfe = generate(model, canvas, config, seed)[1]
        seconds = median_time(lambda: generate(model, canvas, config, seed))
        full = canvas.masked_fill(canvas == mask_id, 0)[:, :model.config.block_size]

        def passes():
            with torch.inference_mode(), autocast(device, precision):
                for _ in range(nfe):
                    forward(full).clone()
        reference = median_time(captured(passes) if config.cuda_graph else passes)
        print(f"batch {batch:>4}: {n_new * batch / seconds:>12,.0f} chars/s | {seconds * 1e3:9.1f} ms for {n_new} "
              f"new chars x {batch}, NFE {nfe} | {nfe} full forward passes alone: {reference * 1e3:9.1f} ms "
              f"({seconds / reference:.2f}x)", flush=True)
        row = dict(device=name, torch=torch.__version__, batch=batch, new_chars=n_new, precision=precision)
        record(args.jsonl, row, sampler="diffusion " + changed_fields(config), seconds=seconds, nfe=nfe,
               chars_per_s=n_new * batch / seconds, full_passes_seconds=reference)
        if ar is not None:
            ar_canvas = ar_canvas_for(canvas, chars)
            ar_seconds = median_time(lambda: generate_ar(ar, ar_canvas, config, seed))
            print(f"  autoregressive, static cache{engine(config)}: {n_new * batch / ar_seconds:>12,.0f} chars/s | "
                  f"{ar_seconds * 1e3:9.1f} ms, NFE {n_new} | diffusion {ar_seconds / seconds:.2f}x as fast", flush=True)
            record(args.jsonl, row, sampler="autoregressive" + engine(config), seconds=ar_seconds, nfe=n_new,
                   chars_per_s=n_new * batch / ar_seconds)


def changed_fields(config):
    """The sampler's settings that differ from SamplerConfig's defaults ('default' if none)."""
    base = SamplerConfig()
    changed = [f"{f.name}={getattr(config, f.name)}" for f in fields(config)
               if getattr(config, f.name) != getattr(base, f.name)]
    return ",".join(changed) or "default"


def engine(config):
    """How a sampler ran, for the AR line: ', compile, CUDA graph' and the like."""
    parts = ([f"compile {config.compile}"] if config.compile else []) + (["CUDA graph"] if config.cuda_graph else [])
    return "".join(", " + p for p in parts)


def check_appendable(path):
    if path:
        try:
            open(path, "a").close()
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}") from None


def record(path, row, **fields):
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({**row, **fields}) + "\n")


def plot_speed(argv):
    """bench.py --plot FILE.jsonl ... --out PNG: chars/s against batch size, log-log, one line
    per sampler and device."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = ArgumentParser(prog="bench.py --plot", description="chars/s against batch size from --jsonl rows")
    p.add_argument("--plot", nargs="+", required=True, metavar="JSONL", help="rows written by --sample --jsonl")
    p.add_argument("--out", default="speed.png", help="image to write (default %(default)s)")
    p.add_argument("--title", default="Sampling speed, 256 new characters")
    args = p.parse_args(argv)
    lines = {}
    try:
        for path in args.plot:
            for n, text in enumerate(open(path), start=1):
                try:
                    r = json.loads(text)
                    lines.setdefault(f"{r['sampler']} ({r['device']})", []).append((r["batch"], r["chars_per_s"]))
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"{path} line {n} is not a bench.py --jsonl row") from None
        if not lines:
            raise UserError("no rows to plot")
        fig, ax = plt.subplots(figsize=(8, 5))
        for label, points in sorted(lines.items()):
            ax.plot(*zip(*sorted(points)), "o-", label=label)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="new characters / s", title=args.title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
    except OSError as e:
        raise SystemExit(f"bench.py: error: cannot read or write: {e.strerror}: {e.filename}")
    except UserError as e:
        raise SystemExit(f"bench.py: error: {e}")
    print(f"wrote {args.out}")


def ar_canvas_for(canvas, chars):
    """The diffusion benchmark's canvas for the autoregressive model, which cannot write the
    first character: a newline before it when it starts with a mask (as the data's lines do)."""
    if canvas[0, 0] != mask_id_of(chars):
        return canvas
    return torch.cat([canvas.new_full((canvas.size(0), 1), chars.index("\n")), canvas], dim=1)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--sample" in argv:
        return sample_benchmark(argv)
    if "--plot" in argv:
        return plot_speed(argv)
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Other flags go to train.py's parser (python train.py --help); "
                              "python bench.py --sample --help lists the sampling flags.")
    p.add_argument("--steps", type=int, default=30, help="timed steps per path (default %(default)s)")
    p.add_argument("--paths", default="fast,plain", help="which paths to time: fast, plain or both")
    args, rest = p.parse_known_args(argv)
    train_parser = ArgumentParser(prog="bench.py (train.py's flags)")
    add_train_flags(train_parser)
    paths = args.paths.split(",")
    rank = int(os.environ.get("RANK", 0))
    try:
        if args.steps < 1 or not paths or set(paths) - set(PATHS):
            raise UserError("--steps must be >= 1 and --paths a comma list of fast, plain")
        rows = []
        for path in paths:
            name, flags = PATHS[path]
            mc, tc, explicit = configs_from_args(train_parser.parse_args(["--preset", "gpu"] + rest + flags))
            check_config(mc, tc)
            if rank == 0:
                print(f"timing {name} ...", flush=True)
            trainer = Trainer(mc, tc, explicit)
            rows.append((name, *time_training(trainer, args.steps)))
            del trainer
            torch._dynamo.reset()
        shutdown_distributed()
    except UserError as e:
        sys.exit(f"bench.py: error: {e}")
    if rank:
        return
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", 1))
    print(f"\n{args.steps} steps of global batch {tc.batch_size} x {mc.block_size}, {world} process(es), device {device}")
    if not torch.cuda.is_available() and len(rows) == 2:
        print("(no CUDA: the 'fast' path falls back to fp32 eager here, so the two rows time the same code)")
    for name, tok_s, mfu in rows:
        print(f"{name:<36} {tok_s:>12,.0f} tokens/s" + (f"   MFU {mfu:6.1%}" if mfu is not None else ""))
    if len(rows) == 2:
        print(f"speed-up of the fast path: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
