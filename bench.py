"""
Speed, measured the same way every time.

Training: the fast path (bf16 autocast, torch.compile, fused AdamW, TF32) against the plain
path (fp32, eager) of the full model, in one run; the step timed is Trainer.train_step, the
one train.py runs. Prints tokens/s, MFU (model FLOPs over 989 TFLOP/s, an H100's dense bf16
peak) and each path's speed against the last. Any train.py flag (e.g. --optimizer muon) also
works here.

    python bench.py                                   # full config, 30 timed steps per path
    python bench.py --steps 3 --batch_size 8          # quick look on a CPU
    torchrun --nproc_per_node 2 bench.py --paths fast # DDP: global batch split over 2 GPUs

Sampling (--sample): 256 new characters from the shipped weights with sample.py's sampler
flags, at each batch size: --warmup untimed runs (compilation, CUDA-graph capture), then the
median of --runs timed runs; and, for scale, the same number of full forward passes of the
model alone, on the same engine. --settings times several diffusion settings in one run (each
over the flags; a setting the engine refuses runs on the best engine it accepts and says
so); a setting may name other weights first, "ckpt=PATH,steps=64,cache=exact" (a block model
beside the full-window one, say), timed on the same canvases. Beside them the autoregressive baseline (--ar,
default weights/ar_baseline.pt; none skips it): the same number of new characters, one per
pass, with its static key/value cache and the same --compile / --cuda-graph, after a newline
when there is no prompt. --jsonl writes every timing as a JSON record; --plot draws them.

    python bench.py --sample                          # the default sampler, batch 1 and 64
    python bench.py --sample --device cpu --precision fp32 --batch-sizes 1,4 --settings default cache=sparse
    python bench.py --sample --compile --compile-mode reduce-overhead
    python bench.py --sample --compile --cuda-graph --batch-sizes 1,4,16,64,256 --jsonl speed.jsonl
    python bench.py --sample --settings default fast32 sparse2   # named settings (sampler.NAMED_SETTINGS)
    python bench.py --sample --settings default ckpt=weights/model.pt ckpt=out/b16/best.pt,cache=exact
    python bench.py --plot speed.jsonl --out assets/speed.png   # chars/s against batch, log-log
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace

import torch

from ar_sampler import generate_ar, masked_columns
from checkpoint import DEFAULT_AR, load_model_of_kind
from cli import ArgumentParser, UserError, parse_fields, read_jsonl, run_entry_point, shown
from corpus import mask_id_of
from devices import autocast, capture_graph, sampling_precision
from sampler import (ENGINE_FIELDS, NAMED_SETTINGS, THRESHOLD_BRINGS, SamplerConfig, add_sampling_flags,
                     check_for_model, expand_setting, generate, load_for_sampling, make_canvas, sampling_seed)
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


def parse_batch_sizes(text):
    try:
        batch_sizes = [int(b) for b in text.split(",")]
    except ValueError:
        raise UserError(f"--batch-sizes must be a comma list of integers, got {text!r}") from None
    if not (1 <= min(batch_sizes) and max(batch_sizes) <= MAX_BATCH):
        raise UserError(f"every batch size in 1..{MAX_BATCH}, got {text!r}")
    return batch_sizes


def setting_overrides(text):
    """'cache=sparse,refresh=4' -> {field: value}, checked against SamplerConfig's fields
    ('default': none; a name of sampler.NAMED_SETTINGS: its fields); a threshold brings
    confidence order and no remasking, as from_options does."""
    given = parse_fields(expand_setting(text), SamplerConfig, ENGINE_FIELDS)
    if given.get("threshold") is not None:
        given = {**THRESHOLD_BRINGS, **given}
    return given


def engine_name(config):
    parts = ([f"compile {config.compile}"] if config.compile else []) + (["cuda-graph"] if config.cuda_graph else [])
    return " + ".join(parts) or "eager"


def config_for_setting(base, text):
    """(config, note) for one --settings entry on the command line's engine; where that engine
    refuses the setting, the best engine it accepts and a note saying why; (None, reason) where
    none does. A setting that is wrong whatever the engine is a UserError."""
    given = setting_overrides(text)
    try:
        replace(base, **{**given, "cuda_graph": False, "compile": None})
    except ValueError as e:
        raise UserError(f"setting {text!r}: {e}") from None
    refused = None
    for drop in ({}, {"compile": None}, {"cuda_graph": False}, {"cuda_graph": False, "compile": None}):
        try:
            config = replace(base, **{**given, **drop})
        except ValueError as e:
            refused = refused or str(e)
            continue
        return config, (f"ran with {engine_name(config)}, not {engine_name(base)}: {refused}" if refused else None)
    return None, refused


def split_ckpt(text):
    """(path or None, the rest) of a --settings entry: 'ckpt=out/b16/best.pt,cache=exact' ->
    ('out/b16/best.pt', 'cache=exact'); the rest is 'default' when nothing follows the path."""
    first, _, rest = text.partition(",")
    if not first.startswith("ckpt="):
        return None, text
    if not first[len("ckpt="):]:
        raise UserError(f"setting {text!r}: ckpt= needs a path")
    return first[len("ckpt="):], rest or "default"


def settings_with_models(args, model, chars, config):
    """[(label, path, model, config, note)] for every --settings entry: the flags' weights, or
    the weights it names (loaded once each, with their own stored setting under the flags);
    every rule that depends on the checkpoint (--cache exact needs a block model, ...) checked
    before anything is timed."""
    loaded = {os.path.realpath(args.ckpt): (model, config)}  # one load per file, however it is spelled
    settings = []
    for text in args.settings:
        path, rest = split_ckpt(text)
        path = path or args.ckpt
        if os.path.realpath(path) not in loaded:
            _, other, other_chars, other_config = load_for_sampling(argparse.Namespace(**{**vars(args), "ckpt": path}))
            if other_chars != chars:
                raise UserError(f"setting {text!r}: {shown(path)} has another vocabulary than {shown(args.ckpt)}")
            loaded[os.path.realpath(path)] = (other, other_config)
        weights, base = loaded[os.path.realpath(path)]
        setting, note = config_for_setting(base, rest)
        try:
            if setting is not None:
                check_for_model(weights, setting)
        except ValueError as e:
            raise UserError(f"setting {text!r}: {e}") from None
        settings.append((rest, path, weights, setting, note))
    return settings


def median_time(fn, runs, warmup, device):
    """Median seconds of `runs` calls of fn after `warmup` untimed ones (compilation, capture)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


FORWARDS = {}  # (model, compile mode) -> its forward


def bare_passes(model, canvas, config, nfe, mask_id):
    """The reference: nfe full forward passes of the model alone on the canvas's first window,
    with the config's engine (compiled, and captured as one CUDA graph, if it is)."""
    device = canvas.device
    precision = sampling_precision(config.precision, device)
    key = (id(model), config.compile)
    if key not in FORWARDS:
        FORWARDS[key] = torch.compile(model, mode=config.compile) if config.compile else model
    forward = FORWARDS[key]
    full = canvas.masked_fill(canvas == mask_id, 0)[:, :model.config.block_size]

    def passes():
        with torch.inference_mode(), autocast(device, precision):
            for _ in range(nfe):
                forward(full).clone()
    return captured(passes) if config.cuda_graph else passes


def sample_parser():
    p = ArgumentParser(prog="bench.py --sample", description="sampling speed (see bench.py's docstring)")
    add_sampling_flags(p)
    p.add_argument("--sample", action="store_true", help="time sampling (this mode)")
    p.add_argument("--batch-sizes", default="1,64", help=f"comma list, each in 1..{MAX_BATCH} (default %(default)s)")
    p.add_argument("--settings", nargs="+", default=["default"],
                   help="diffusion sampler settings timed in turn, each 'default' or field=value[,field=value] "
                        "over the flags above (e.g. --settings default cache=sparse), or a name, "
                        f"{', '.join(NAMED_SETTINGS)} (sampler.NAMED_SETTINGS), fields may follow; one the engine "
                        "(--compile, --cuda-graph) refuses runs on the best engine it accepts, and says so; "
                        "'ckpt=PATH,...' times other weights (e.g. a block model with cache=exact)")
    p.add_argument("--runs", type=int, default=5, help="timed runs, 1..1000; the median is reported (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first, 0..1000 (default %(default)s)")
    p.add_argument("--ar", default=DEFAULT_AR, help="autoregressive baseline timed beside the diffusion model, "
                                                    "with its static key/value cache and the same --compile / "
                                                    "--cuda-graph (default weights/ar_baseline.pt; none: skip)")
    p.add_argument("--jsonl", default=None, help="also write one JSON record per timing to this file "
                                                 "(device, torch version, batch, sampler, chars/s, ms, passes)")
    return p


def sample_benchmark(argv):
    args = sample_parser().parse_args(argv)
    try:
        batch_sizes = parse_batch_sizes(args.batch_sizes)
        if not (1 <= args.runs <= 1000 and 0 <= args.warmup <= 1000):
            raise UserError("--runs must be in 1..1000 and --warmup in 0..1000")
        args.seed = 0 if args.seed is None else args.seed
        seed = sampling_seed(args)
        device, model, chars, config = load_for_sampling(args)
        settings = settings_with_models(args, model, chars, config)
        ar = None if args.ar == "none" else load_model_of_kind(args.ar, device, causal=True)[0]
        canvases = {batch: make_canvas(args.prompt, args.length, chars, batch, device) for batch in batch_sizes}
        log = open_log(args.jsonl)
    except UserError as e:
        sys.exit(f"bench.py: error: {e}")
    described = " ".join(f"{k}={v}" for k, v in vars(config).items() if v not in (None, "none", 0.0, False))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"sampling {described} | device {device} ({name}) | torch {torch.__version__} | median of {args.runs} runs "
          f"after {args.warmup} warm-up", flush=True)
    common = {"device": str(device), "device_name": name, "torch": torch.__version__, "runs": args.runs,
              "warmup": args.warmup, "precision": sampling_precision(config.precision, device), "seed": seed}
    timing = dict(runs=args.runs, warmup=args.warmup, device=device)
    for batch in batch_sizes:
        canvas = canvases[batch]
        n_new = int((canvas[0] == mask_id_of(chars)).sum())
        best = None
        for text, path, weights, setting, note in settings:
            record = time_diffusion(weights, canvas, setting, seed, timing) if setting else {"skipped": note}
            record.update(common, batch=batch, n_new=n_new, sampler=f"diffusion {text}", ckpt=shown(path),
                          engine=engine_name(setting) if setting else None, note=note if setting else None)
            print_record(record)
            write_record(log, record)
            if setting and (best is None or record["seconds"] < best["seconds"]):
                best = record
        if ar is not None:
            record = time_ar(ar, ar_canvas_for(canvas, chars), config, seed, timing)
            record.update(common, batch=batch, n_new=n_new, sampler="autoregressive", ckpt=shown(args.ar),
                          engine=engine_name(config), note=None)
            print_record(record, best)
            write_record(log, record)
    if log:
        log.close()


def time_diffusion(model, canvas, config, seed, timing):
    nfe = generate(model, canvas, config, seed)[1]
    seconds = median_time(lambda: generate(model, canvas, config, seed), **timing)
    reference = median_time(bare_passes(model, canvas, config, nfe, model.config.mask_id), **timing)
    return {"seconds": seconds, "nfe": nfe, "passes_seconds": reference}


def time_ar(ar, canvas, config, seed, timing):
    """The autoregressive baseline with its best engine: static cache, and config's compile /
    cuda_graph (the diffusion sampler's --steps, --cache, ... do not apply to it)."""
    config = replace(config, cache="none", threshold=None, steps=None)
    seconds = median_time(lambda: generate_ar(ar, canvas, config, seed), **timing)
    return {"seconds": seconds, "nfe": len(masked_columns(ar, canvas)), "passes_seconds": None}


def sampler_label(record):
    """A record's sampler with its weights' file name, 'diffusion default (student16)' (records
    written before the ckpt field timed weights/model.pt); the AR baseline's as it is."""
    if record["sampler"] == "autoregressive":
        return record["sampler"]
    return f"{record['sampler']} ({os.path.splitext(os.path.basename(record.get('ckpt', 'weights/model.pt')))[0]})"


def print_record(r, diffusion=None):
    head = f"batch {r['batch']:>4} | {sampler_label(r):<38}"
    if "skipped" in r:
        print(f"{head} skipped: {r['skipped']}", flush=True)
        return
    chars_s, ms = r["n_new"] * r["batch"] / r["seconds"], r["seconds"] * 1e3
    r.update(chars_per_s=chars_s, ms=ms, passes_ms=r["passes_seconds"] and r["passes_seconds"] * 1e3)
    line = f"{head} {chars_s:>12,.0f} chars/s | {ms:9.1f} ms"
    if r["passes_seconds"] is not None:
        line += (f" for {r['n_new']} new chars x {r['batch']}, NFE {r['nfe']} | {r['nfe']} full forward passes "
                 f"alone: {r['passes_ms']:9.1f} ms ({r['seconds'] / r['passes_seconds']:.2f}x)")
    else:
        line += f", NFE {r['nfe']}"
    if diffusion is not None:
        line += f" | {sampler_label(diffusion)} {r['seconds'] / diffusion['seconds']:.2f}x as fast"
    print(f"{line} | {r['engine']}" + (f" ({r['note']})" if r.get("note") else ""), flush=True)


def open_log(path):
    if path is None:
        return None
    try:
        return open(path, "w")
    except OSError as e:
        raise UserError(f"--jsonl {path}: {e.strerror}") from None


def write_record(log, record):
    if log:
        log.write(json.dumps({k: v for k, v in record.items() if k != "seconds" and k != "passes_seconds"}) + "\n")
        log.flush()


def plot_results(argv):
    """chars/s against batch size, log-log, one line per sampler and engine, from --jsonl files."""
    p = ArgumentParser(prog="bench.py --plot", description="plot bench.py --sample --jsonl results")
    p.add_argument("--plot", nargs="+", required=True, help="JSONL files written by bench.py --sample --jsonl")
    p.add_argument("--out", default="assets/speed.png", help="PNG to write (default %(default)s)")
    args = p.parse_args(argv)
    try:
        lines = read_results(args.plot)
        if not args.out.endswith(".png") or not os.path.isdir(os.path.dirname(args.out) or "."):
            raise UserError(f"--out must be a .png in an existing folder, got {args.out!r}")
    except UserError as e:
        sys.exit(f"bench.py: error: {e}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, points in sorted(lines.items()):
        batches, speeds = zip(*sorted(points))
        ax.plot(batches, speeds, marker="o", label=label, linestyle="--" if label.endswith("threads") else "-")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="new characters / s")
    ax.set_title("sampling speed, 256 new characters\n" + "; ".join(sorted({k.split(" | ")[-1] for k in lines})),
                 fontsize=10)
    batches = sorted({b for points in lines.values() for b, _ in points})
    ax.set_xticks(batches, [str(b) for b in batches])  # the batch sizes timed, not 2 x 10^0
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # over a few decades they overlap
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside: no line hidden
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")


def read_results(paths):
    """{'sampler [engine] | device': [(batch, chars/s)]} from JSONL files; skipped rows left out.
    A line timed at one batch size in several files (the AR baseline beside each diffusion
    model's sweep, say) keeps the last file's point, and says so on stderr."""
    lines = {}
    for path in paths:
        for r in read_jsonl(path, "--plot"):
            if "chars_per_s" in r:
                sampler = sampler_label(r)
                points = lines.setdefault(f"{sampler} [{r['engine']}] | {r['device_name']}", {})
                if r["batch"] in points:
                    print(f"bench.py --plot: {sampler} on {r['device_name']} at batch {r['batch']} again in {path}: "
                          "its point replaces the earlier one", file=sys.stderr)
                points[r["batch"]] = r["chars_per_s"]
    if not lines:
        raise UserError("--plot: no timed records in " + ", ".join(paths))
    return {label: sorted(points.items()) for label, points in lines.items()}


def ar_canvas_for(canvas, chars):
    """The diffusion benchmark's canvas for the autoregressive model, which cannot write the
    first character: a newline before it when it starts with a mask (as the data's lines do)."""
    if canvas[0, 0] != mask_id_of(chars):
        return canvas
    return torch.cat([canvas.new_full((canvas.size(0), 1), chars.index("\n")), canvas], dim=1)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--plot" in argv:
        return plot_results(argv)
    if "--sample" in argv:
        return sample_benchmark(argv)
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Other flags go to train.py's parser (python train.py --help); "
                              "python bench.py --sample --help lists the sampling flags, "
                              "python bench.py --plot --help the plot's.")
    p.add_argument("--steps", type=int, default=30, help="timed steps per path, >= 1 (default %(default)s)")
    p.add_argument("--paths", default="fast,plain", help="a comma list of distinct paths: fast, plain or both")
    args, rest = p.parse_known_args(argv)
    train_parser = ArgumentParser(prog="bench.py (train.py's flags)")
    add_train_flags(train_parser)
    paths = args.paths.split(",")
    rank = int(os.environ.get("RANK", 0))
    try:
        if args.steps < 1 or not paths or set(paths) - set(PATHS) or len(set(paths)) < len(paths):
            raise UserError("--steps must be >= 1 and --paths a comma list of distinct paths among fast, plain")
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
    if not torch.cuda.is_available() and {"fast", "plain"} <= set(paths):
        print("(no CUDA: the 'fast' path falls back to fp32 eager here, so the two rows time the same code)")
    last = rows[-1]
    for name, tok_s, mfu in rows:
        print(f"{name:<36} {tok_s:>12,.0f} tokens/s" + (f"   MFU {mfu:6.1%}" if mfu is not None else "")
              + (f"   {tok_s / last[1]:.2f}x {last[0].split(':')[0]}" if len(rows) > 1 else ""))


if __name__ == "__main__":
    run_entry_point(main)
