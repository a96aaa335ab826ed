"""
Train tiny-diffusion on Tiny Shakespeare, or evaluate a checkpoint.

    python train.py --preset cpu                    # small model, ~10 minutes on a laptop CPU
    python train.py --preset gpu                    # the full 10.7M model (CUDA: bf16 + compile)
    torchrun --nproc_per_node 2 train.py --preset gpu   # DDP on 2 GPUs (gloo on CPU)
    python train.py --preset cpu --resume           # continue from <out-dir>/last.pt
    python train.py --eval-only --ckpt weights/model.pt   # val NELBO of a checkpoint
    python train.py --preset gpu --objective ar     # the autoregressive baseline

Data: first 90% of the file for training, last 10% held out for validation.
Objective "diffusion": masked diffusion, loss = negative ELBO in nats/char (see model.py).
Objective "ar": same backbone with causal attention and next-character loss.
Every field of ModelConfig and TrainConfig can be set on the command line (--n_layer 4 or
--n-layer 4); a preset only changes the defaults.
"""

import argparse
import gc
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, asdict, fields, replace

import torch
import torch.distributed as dist

from model import (ArgumentParser, ModelConfig, Transformer, UserError, autocast, autoregressive_loss, diffusion_loss,
                   draw_masks, load_model, masked_nll_per_sequence, pick_device, read_checkpoint,
                   save_checkpoint)

DATA_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny_shakespeare.txt")
TRAIN_FRACTION = 0.9


@dataclass
class TrainConfig:
    data: str = DATA_DEFAULT
    out_dir: str = "out"          # best.pt (best by val), last.pt (for --resume), log.jsonl
    objective: str = "diffusion"  # diffusion | ar
    batch_size: int = 64          # sequences per optimizer step, over all processes
    max_steps: int = 5000
    time_budget: float = 0.0      # minutes; if set, training ends at whichever comes first
    lr: float = 1e-3
    min_lr_ratio: float = 0.1     # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 200
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    prefix_prob: float = 0.2      # fraction of sequences that keep a clean prefix (prompting)
    eval_interval: int = 500
    eval_mc: int = 4              # Monte-Carlo mask draws per validation window
    eval_seed: int = 1234         # fixed, so every evaluation sees the same masks
    log_interval: int = 50
    seed: int = 1337
    device: str = "auto"
    compile: str = "auto"         # auto | on | off; auto = on for CUDA
    precision: str = "auto"       # auto | bf16 | fp32; auto = bf16 autocast on CUDA
    resume: bool = False
    eval_only: bool = False
    ckpt: str = ""                # checkpoint for --eval-only


PRESETS = {
    # at most 9.5 minutes (2,200 steps if the machine is fast enough); see README
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0,
                batch_size=32, max_steps=2200, time_budget=9.5, lr=4e-3, warmup_steps=100, eval_interval=500,
                eval_mc=1, log_interval=25, out_dir="out/cpu"),
    # the full 10.7M model; ~6.5 minutes on one H200 (README: what we tried)
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2,
                batch_size=256, max_steps=21000, lr=2e-3, warmup_steps=500, eval_interval=1000,
                eval_mc=4, log_interval=100, out_dir="out/gpu"),
}


# -----------------------------------------------------------------------------
# Command line

def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a set of defaults (flags still override)")
    p.add_argument("--bench", type=int, default=0, metavar="STEPS",
                   help="time STEPS training steps after a warm-up, print tokens/s, and exit")
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            if f.type in (bool, "bool"):
                p.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
            else:
                typ = {"int": int, "float": float, "str": str}.get(f.type, f.type)
                p.add_argument(*names, dest=f.name, type=typ, default=None, metavar=f.name.upper())
    args = p.parse_args(argv)
    chosen = {k: v for k, v in vars(args).items() if v is not None}
    preset = PRESETS.get(args.preset, {})
    model_cfg = ModelConfig(**{f.name: chosen.get(f.name, preset.get(f.name, f.default))
                               for f in fields(ModelConfig)})
    train_cfg = TrainConfig(**{f.name: chosen.get(f.name, preset.get(f.name, f.default))
                               for f in fields(TrainConfig)})
    explicit = {k for k in chosen if k in {f.name for f in fields(TrainConfig)}}
    return model_cfg, train_cfg, args.bench, explicit


def check_config(mc, tc):
    problems = []
    if tc.objective not in ("diffusion", "ar"):
        problems.append(f"--objective must be diffusion or ar, got {tc.objective!r}")
    if mc.n_embd % mc.n_head or (mc.n_embd // mc.n_head) % 2:
        problems.append("--n_embd / --n_head must be an even integer (rotary embeddings)")
    for name in ("batch_size", "max_steps", "block_size", "n_layer", "n_head", "eval_interval",
                 "eval_mc", "log_interval"):
        value = getattr(tc, name, getattr(mc, name, None))
        if value < 1:
            problems.append(f"--{name} must be >= 1, got {value}")
    if not 0 <= mc.dropout < 1 or not 0 <= tc.prefix_prob <= 1:
        problems.append("--dropout must be in [0, 1) and --prefix_prob in [0, 1]")
    if tc.compile not in ("auto", "on", "off") or tc.precision not in ("auto", "bf16", "fp32"):
        problems.append("--compile must be auto, on or off and --precision auto, bf16 or fp32")
    if tc.lr <= 0:
        problems.append(f"--lr must be > 0, got {tc.lr}")
    if problems:
        raise UserError("; ".join(problems))


# -----------------------------------------------------------------------------
# Data

def load_text(path):
    if not os.path.isfile(path):
        raise UserError(f"data file not found: {path} (run: python data/prepare.py)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if len(text) < 10_000:
        raise UserError(f"{path} has only {len(text)} characters; expected Tiny Shakespeare")
    return text


def split_data(text, chars, device):
    """Train = first 90%, val = last 10%, as int64 tensors of ids on `device`."""
    index = {c: i for i, c in enumerate(chars)}
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise UserError(f"data has characters not in the checkpoint's vocabulary: {unknown[:10]}")
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n = int(TRAIN_FRACTION * len(ids))
    return ids[:n].to(device), ids[n:].to(device)


def get_batch(data, batch_size, length, generator):
    """Random windows of `length` characters (contiguous, so .view works on any device)."""
    starts = torch.randint(len(data) - length + 1, (batch_size,), generator=generator, device=data.device)
    return data[starts[:, None] + torch.arange(length, device=data.device)]


def eval_windows(n, length):
    """Window starts that cover all n characters: every `length`, the last one flush with the end."""
    starts = list(range(0, n - length + 1, length))
    if starts[-1] + length < n:
        starts.append(n - length)
    return starts


# -----------------------------------------------------------------------------
# Evaluation

@torch.no_grad()
def evaluate_diffusion(model, val, block_size, mc=4, seed=1234, batch_size=64, rank=0, world=1):
    """Negative ELBO per character on the whole validation split.

    Every window of block_size characters is scored `mc` times; each draw takes k uniform on
    {1..L} (stratified over all draws) and k positions uniformly at random, and scores the
    mean -log p of the masked characters (model.py explains why this is the NELBO / L).
    Masks come from a CPU generator with a fixed seed: same numbers on any device.
    Returns (mean nats/char, standard error of the mean)."""
    device = val.device
    T = block_size
    starts = torch.tensor(eval_windows(len(val), T)).repeat(mc)
    g = torch.Generator().manual_seed(seed)
    n_draws = len(starts)
    u = ((torch.arange(n_draws) + torch.rand(n_draws, generator=g)) / n_draws)[torch.randperm(n_draws, generator=g)]
    masked, k = draw_masks(n_draws, T, torch.zeros(n_draws, dtype=torch.long), u, generator=g)
    total = torch.zeros(3, dtype=torch.float64, device=device)  # sum, sum of squares, count
    mine = range(rank * batch_size, n_draws, world * batch_size)
    for i in mine:
        sl = slice(i, min(i + batch_size, n_draws))
        x = val[starts[sl].to(device)[:, None] + torch.arange(T, device=device)]
        m, kk = masked[sl].to(device), k[sl].to(device)
        with autocast(device):
            logits = model(x.masked_fill(m, model.config.mask_id))
        nll = masked_nll_per_sequence(logits, x, m, kk).double()
        total += torch.stack([nll.sum(), nll.square().sum(), torch.tensor(float(len(nll)), device=device)])
    if world > 1:
        dist.all_reduce(total)
    s, s2, n = total.tolist()
    mean = s / n
    var = max(s2 / n - mean ** 2, 0.0)
    return mean, math.sqrt(var / max(n - 1, 1))


@torch.no_grad()
def evaluate_ar(model, val, block_size, batch_size=64, rank=0, world=1):
    """Exact NLL per character of an autoregressive model on the validation split: windows
    of block_size + 1 characters, each predicting its last block_size characters."""
    device = val.device
    T = block_size
    starts = eval_windows(len(val) - 1, T)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(rank * batch_size, len(starts), world * batch_size):
        s = torch.tensor(starts[i:i + batch_size], device=device)
        x = val[s[:, None] + torch.arange(T + 1, device=device)]
        with autocast(device):
            loss = autoregressive_loss(model, x)
        total += torch.stack([loss.double() * len(s), torch.tensor(float(len(s)), device=device)])
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item(), 0.0


def evaluate(model, val, tc, rank=0, world=1):
    model.eval()
    if model.config.causal:
        result = evaluate_ar(model, val, model.config.block_size, rank=rank, world=world)
    else:
        result = evaluate_diffusion(model, val, model.config.block_size, tc.eval_mc, tc.eval_seed,
                                    rank=rank, world=world)
    model.train()
    return result


def format_eval(mean, se, causal):
    name = "NLL" if causal else "NELBO"
    err = "" if causal else f" ± {se:.4f}"
    return f"val {name} {mean:.4f}{err} nats/char ({mean / math.log(2):.4f} bits/char)"


def eval_only(tc):
    if not tc.ckpt:
        raise UserError("--eval-only needs --ckpt PATH")
    device = pick_device(tc.device)
    model, chars, _ = load_model(tc.ckpt, device)
    _, val = split_data(load_text(tc.data), chars, device)
    t0 = time.time()
    mean, se = evaluate(model, val, tc)
    what = "exact" if model.config.causal else f"{tc.eval_mc} mask draws per window, seed {tc.eval_seed}"
    print(f"{tc.ckpt}: {format_eval(mean, se, model.config.causal)} "
          f"on {len(val):,} held-out chars [{what}; {device}, {time.time() - t0:.1f}s]")


# -----------------------------------------------------------------------------
# Training

def lr_at(step, progress, tc):
    """Linear warm-up over warmup_steps, then cosine decay over progress in [0, 1]."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, tc, fused):
    # weight decay on the matrices of the blocks and the head, not on the embedding
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("wte")]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("wte"))]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, tc.beta2), fused=fused)


def setup_distributed(tc):
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: NCCL on CUDA, gloo on CPU."""
    if "RANK" not in os.environ:
        return 0, 1, pick_device(tc.device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if tc.device in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = pick_device("cpu" if tc.device == "auto" else tc.device)
        dist.init_process_group("gloo")
    if tc.batch_size % world:
        raise UserError(f"--batch_size {tc.batch_size} is not divisible by {world} processes")
    return rank, world, device


def format_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def train(mc, tc, bench_steps=0, explicit=()):
    """explicit: the TrainConfig fields set on the command line (they override a resumed run's)."""
    rank, world, device = setup_distributed(tc)
    master = rank == 0
    log = print if master else (lambda *a, **k: None)
    torch.manual_seed(tc.seed + rank)
    bf16 = tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda")
    precision = "bf16" if bf16 else "fp32"
    torch.backends.cuda.matmul.allow_tf32 = bf16  # the plain fp32 path stays plain
    torch.backends.cudnn.allow_tf32 = bf16

    text = load_text(tc.data)
    resume_ckpt = None
    if tc.resume:
        resume_path = os.path.join(tc.out_dir, "last.pt")
        resume_ckpt = read_checkpoint(resume_path)
        chars = resume_ckpt["chars"]
        mc = ModelConfig(**resume_ckpt["config"])
        # the run's own settings, except what this command line sets (e.g. a new --max_steps)
        given = {k: getattr(tc, k) for k in explicit}
        given.update(resume=True, out_dir=tc.out_dir, data=tc.data, device=tc.device)
        tc = replace(TrainConfig(**resume_ckpt["train_config"]), **given)
        log(f"resuming {resume_path} at step {resume_ckpt['step']}")
    else:
        chars = sorted(set(text))
        mc = replace(mc, vocab_size=len(chars) + 1, causal=tc.objective == "ar")
    train_ids, val_ids = split_data(text, chars, device)

    model = Transformer(mc).to(device)
    optimizer = make_optimizer(model, tc, fused=bf16 and device.type == "cuda")
    step, best_val = 0, float("inf")
    gen = torch.Generator(device=device).manual_seed(tc.seed + 1000 * rank)  # batches and masks
    if resume_ckpt:
        model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        step, best_val = resume_ckpt["step"], resume_ckpt["best_val"]
        if world == 1 and resume_ckpt["world"] == 1:
            gen.set_state(resume_ckpt["generator"])
        else:
            gen.manual_seed(tc.seed + 1000 * rank + step)
    use_compile = tc.compile == "on" or (tc.compile == "auto" and device.type == "cuda")
    fwd_model = torch.compile(model) if use_compile else model
    if world > 1:
        fwd_model = torch.nn.parallel.DistributedDataParallel(
            fwd_model, device_ids=[device.index] if device.type == "cuda" else None)

    seq_len = mc.block_size + (1 if mc.causal else 0)
    local_batch = tc.batch_size // world
    tokens_per_step = tc.batch_size * mc.block_size
    log(f"{tc.objective} model: {model.num_params() / 1e6:.2f}M parameters, {mc.n_layer} layers, width "
        f"{mc.n_embd}, context {mc.block_size} | device {device} x{world}, compile {use_compile}, "
        f"{precision} | "
        f"batch {tc.batch_size} x {mc.block_size} = {tokens_per_step:,} tokens/step | "
        f"train {len(train_ids):,} chars, val {len(val_ids):,} chars")

    def loss_fn(x):
        if mc.causal:
            return autoregressive_loss(fwd_model, x)
        return diffusion_loss(fwd_model, x, mc.mask_id, tc.prefix_prob, gen)

    def save(path, **extra):
        if master:
            save_checkpoint(path, model, chars, step=step, best_val=best_val, train_config=asdict(tc),
                            world=world, **extra)

    def save_last():
        save(os.path.join(tc.out_dir, "last.pt"), optimizer=optimizer.state_dict(), generator=gen.get_state(),
             elapsed=time.time() - t_start)

    if bench_steps:
        return bench(fwd_model, optimizer, loss_fn, train_ids, local_batch, seq_len, gen, device, precision,
                     tokens_per_step, bench_steps, model.num_params(), mc)

    if master:
        os.makedirs(tc.out_dir, exist_ok=True)
    log_file = open(os.path.join(tc.out_dir, "log.jsonl"), "a") if master else None
    t_start = time.time() - (resume_ckpt.get("elapsed", 0.0) if resume_ckpt else 0.0)
    t_last, step_last = time.time(), step
    time_progress = 0.0  # fraction of --time_budget used, updated at every log line
    loss_sum = torch.zeros((), device=device)
    model.train()
    try:
        while True:
            progress = max(step / tc.max_steps, time_progress)
            if progress >= 1:
                break
            lr = lr_at(step, progress, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = get_batch(train_ids, local_batch, seq_len, gen)
            with autocast(device, precision):
                loss = loss_fn(x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            step += 1

            if step % tc.log_interval == 0 or step == tc.max_steps:
                if world > 1:
                    dist.all_reduce(loss_sum)
                train_loss = loss_sum.item() / ((step - step_last) * world)  # the one host sync
                now = time.time()
                if tc.time_budget:
                    elapsed = torch.tensor([now - t_start])
                    if world > 1:
                        dist.broadcast(elapsed, 0)  # every rank stops at the same step
                    time_progress = elapsed.item() / (60 * tc.time_budget)
                tok_s = (step - step_last) * tokens_per_step / (now - t_last)
                eta = (tc.max_steps - step) * (now - t_last) / (step - step_last)
                if tc.time_budget:
                    eta = min(eta, max(60 * tc.time_budget - (now - t_start), 0))
                log(f"step {step:>6}/{tc.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                    f"{tok_s / 1e3:,.1f}k tok/s | ETA {format_time(eta)}", flush=True)
                if log_file:
                    log_file.write(json.dumps({"step": step, "train_loss": train_loss, "lr": lr,
                                               "time": now - t_start}) + "\n")
                loss_sum.zero_()
                t_last, step_last = now, step

            last_step = step == tc.max_steps or time_progress >= 1
            if step % tc.eval_interval == 0 or last_step:
                t_eval = time.time()
                val, se = evaluate(model, val_ids, tc, rank, world)
                improved = val < best_val
                best_val = min(best_val, val)
                if improved:
                    save(os.path.join(tc.out_dir, "best.pt"), val=val, val_se=se)
                save_last()
                log(f"eval  {step:>6} | {format_eval(val, se, mc.causal)}"
                    f"{' | new best, saved' if improved else ''} | {time.time() - t_eval:.1f}s", flush=True)
                if log_file:
                    log_file.write(json.dumps({"step": step, "val": val, "val_se": se,
                                               "time": time.time() - t_start}) + "\n")
                    log_file.flush()
                t_last = time.time()  # keep evaluation out of tokens/s
    except KeyboardInterrupt:
        save_last()
        if master and not os.path.exists(os.path.join(tc.out_dir, "best.pt")):
            save(os.path.join(tc.out_dir, "best.pt"))
        log(f"\ninterrupted at step {step}: saved {tc.out_dir}/last.pt "
            f"(continue with --resume --out_dir {tc.out_dir})")
        sys.exit(130)
    finally:
        if log_file:
            log_file.close()
    name = "NLL" if mc.causal else "NELBO"
    log(f"done: {step} steps in {format_time(time.time() - t_start)}; best val {name} {best_val:.4f} "
        f"nats/char -> {tc.out_dir}/best.pt")


def shutdown_distributed():
    """Called after train() has returned, so its DDP wrapper is freed first: a process group that
    DDP still holds outlives destroy_process_group() until interpreter exit, where gloo's worker
    threads can abort the process (seen as a rare SIGABRT of one rank on CPU)."""
    if dist.is_initialized():
        gc.collect()  # module reference cycles
        dist.barrier()  # rank 0 may still be writing a checkpoint
        dist.destroy_process_group()


def bench(fwd_model, optimizer, loss_fn, train_ids, batch, seq_len, gen, device, precision, tokens_per_step,
          steps, n_params, mc):
    """Time `steps` optimizer steps after warm-up. Returns (tokens/s, MFU per GPU or None off CUDA)."""
    def one_step():
        x = get_batch(train_ids, batch, seq_len, gen)
        with autocast(device, precision):
            loss = loss_fn(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(fwd_model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        one_step()
    sync()
    t0 = time.time()
    for _ in range(steps):
        one_step()
    sync()
    dt = time.time() - t0
    tok_s = steps * tokens_per_step / dt
    # 6 N per token for the matmuls plus 12 L T d for attention (PaLM appendix B)
    flops_per_token = 6 * n_params + 12 * mc.n_layer * mc.block_size * mc.n_embd
    world = dist.get_world_size() if dist.is_initialized() else 1
    mfu = tok_s * flops_per_token / (989e12 * world) if device.type == "cuda" else None
    return tok_s, mfu


def main(argv=None):
    try:
        mc, tc, bench_steps, explicit = parse_args(argv)
        check_config(mc, tc)
        if tc.eval_only:
            return eval_only(tc)
        result = train(mc, tc, bench_steps, explicit)
        shutdown_distributed()
        if bench_steps and int(os.environ.get("RANK", 0)) == 0:
            tok_s, mfu = result
            mfu_text = f", MFU {mfu:.1%} (per GPU, of 989 TFLOP/s bf16)" if mfu is not None else ""
            print(f"bench: {tok_s:,.0f} tokens/s{mfu_text}")
    except UserError as e:
        sys.exit(f"train.py: error: {e}")


if __name__ == "__main__":
    main()
