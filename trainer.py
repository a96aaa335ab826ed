"""
Training as a library: TrainConfig (every field a train.py flag), the presets, and the
Trainer: one optimisation step (what bench.py times), evaluation with checkpointing, progress
lines, and the loop that ties them together, on CPU, CUDA (bf16, torch.compile, DDP) or MPS.
"""

import copy
import gc
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, asdict, fields, replace

import torch
import torch.distributed as dist

from checkpoint import read_checkpoint, save_checkpoint
from cli import UserError, add_config_flags
from corpus import DATA_DEFAULT, ROOT, encode_splits, load_text
from devices import autocast, pick_device
from diffusion import (LOSS_WEIGHTS, T_DISTS, MaskRate, autoregressive_loss, block_diffusion_loss, diffusion_loss, evaluate, format_eval,
                       mixed_loss)
from distill import DISTILL_ORDERS, DIVERGENCES, distill_loss, teacher_passes
from model import ModelConfig, Transformer
from optim import EMA, lr_factor, make_optimizers


@dataclass
class TrainConfig:
    data: str = DATA_DEFAULT
    out_dir: str = "out"
    objective: str = "diffusion"
    batch_size: int = 64
    max_steps: int = 5000
    time_budget: float = 0.0
    optimizer: str = "adamw"
    lr: float = 1e-3
    muon_lr: float = 0.02
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    cooldown: float = 0.3
    warmup_steps: int = 200
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema: float = 0.0
    prefix_prob: float = 0.2
    block_prob: float = 0.0
    t_dist: str = "uniform"
    t_min: float = 0.0
    t_max: float = 1.0
    loss_weights: str = "elbo"
    ar_fraction: float = 0.25
    block_t_min: float = 0.0
    block_t_max: float = 1.0
    eval_interval: int = 500
    eval_mc: int = 4
    eval_seed: int = 1234
    eval_context: int = 0
    log_interval: int = 50
    seed: int = 1337
    device: str = "auto"
    compile: str = "auto"
    precision: str = "auto"
    resume: bool = False
    overwrite: bool = False
    distill_from: str = ""
    distill_rounds: int = 3
    distill_round_steps: int = 1000
    distill_start_passes: int = 64
    divergence: str = "kl"
    distill_order: str = "random"
    distill_ema: bool = False


# one line of --help per flag (nanochat style)
HELP = {
    "vocab_size": None, "causal": None,  # set from the data and --objective, not flags
    "block_size": "context length in characters",
    "n_layer": "transformer blocks", "n_head": "attention heads", "n_embd": "width",
    "dropout": "dropout on the output of every attention and MLP branch",
    "attn_dropout": "dropout on the attention probabilities",
    "embd_dropout": "dropout on the input embedding",
    "logit_softcap": "if > 0, logits = C * tanh(logits / C)",
    "block_len": "L': block length of --objective block (1 .. --block_size, dividing it)",
    "data": "training text (default: data/tiny_shakespeare.txt)",
    "out_dir": "where best.pt (best by val), last.pt (for --resume) and log.jsonl go",
    "objective": "diffusion (masked diffusion, NELBO), ar (causal baseline, NLL), mixed (a diffusion model "
                 "that also trains --ar_fraction of each batch AR-style with causal attention) or block (block "
                 "diffusion, BD3-LM: blocks of --block_len left to right, each by masked diffusion; NELBO)",
    "batch_size": "sequences per optimizer step, over all processes",
    "max_steps": "optimizer steps (the schedule's length unless --time_budget ends it first)",
    "time_budget": "minutes; if > 0 the schedule runs on wall time and training ends at whichever comes first",
    "optimizer": "adamw, or muon (Muon for the blocks' matrices, AdamW for embedding and head)",
    "lr": "peak AdamW learning rate",
    "muon_lr": "peak Muon learning rate (with --optimizer muon)",
    "schedule": "cosine (decay all along) or wsd (constant, then linear decay over the last --cooldown)",
    "min_lr_ratio": "the schedule ends at this fraction of the peak",
    "cooldown": "fraction of the run spent decaying under --schedule wsd",
    "warmup_steps": "linear warm-up steps",
    "weight_decay": "decoupled weight decay on matrices (not the embedding)",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the gradient norm to this",
    "ema": "if > 0, keep an exponential moving average of the weights with this decay; "
           "it is what gets evaluated and saved as best.pt",
    "prefix_prob": "fraction of training sequences that keep a clean prefix (teaches prompting)",
    "block_prob": "fraction of training sequences masked as block-wise decoding sees them "
                  "(clean prefix, a partly masked block, all masks after; teaches sample.py --block)",
    "t_dist": "mask rate t in training (evaluation is always the uniform NELBO): uniform, bell (Beta(2, 2)) or "
              "clipped (U[--t_min, --t_max])",
    "t_min": "lowest mask rate with --t_dist clipped",
    "t_max": "highest mask rate with --t_dist clipped",
    "loss_weights": "elbo: weights that keep the training loss an unbiased NELBO under --t_dist; none: the plain "
                    "mean cross-entropy over all masked characters of the batch",
    "ar_fraction": "with --objective mixed: the share of each batch trained AR-style (causal attention)",
    "block_t_min": "--objective block: each block's mask rate is drawn from U[MIN, --block_t_max] in training "
                   "(BD3's clipped rate; evaluation always uses the full NELBO)",
    "block_t_max": "--objective block: the upper end of the training mask rate, in (--block_t_min, 1]",
    "eval_interval": "steps between validation runs",
    "eval_mc": "mask draws per validation block (diffusion)",
    "eval_seed": "seed of the validation masks (the same masks at every evaluation)",
    "eval_context": "C: score each block of block_size - C characters given the C before it "
                    "(0 = isolated windows)",
    "log_interval": "steps between progress lines",
    "seed": "seed for initialisation, batches and masks",
    "device": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
    "compile": "torch.compile: auto (on for CUDA), on or off",
    "precision": "auto (bf16 autocast on CUDA), bf16 or fp32",
    "resume": "continue the run in --out_dir from its last.pt",
    "overwrite": "start afresh in an --out_dir that holds a run, removing its checkpoints and log",
    "distill_from": "SDTT: distill this diffusion checkpoint into fewer sampling passes (student and teacher start "
                    "as its copies, its model config is kept; --max_steps = rounds x round steps)",
    "distill_rounds": "SDTT rounds: after each the student becomes the teacher and the step doubles",
    "distill_round_steps": "optimizer steps per SDTT round (N)",
    "distill_start_passes": "the first teacher's sampling passes (dt = 1/this): 64 -> 32 -> 16 -> 8 over 3 rounds",
    "divergence": "SDTT loss on the masked positions: kl = KL(student || teacher) (the paper's), fkl = KL(teacher "
                  "|| student), tvd, mse (of log-probabilities)",
    "distill_order": "which masked positions the teacher's two steps commit: random (MDLM's ancestral order, the "
                     "paper's) or spread (the sampler's default order; no remasking)",
    "distill_ema": "with --ema: at each round's end the EMA copy becomes the teacher and the student, and the "
                   "average restarts (SDTT's use_ema_on_growth); else the raw student becomes the teacher",
}

PRESETS = {
    # at most 9.5 minutes on a laptop CPU (README: what it reaches)
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0, logit_softcap=15.0,
                optimizer="muon", muon_lr=0.01, schedule="wsd", ema=0.99, batch_size=32, max_steps=2200,
                time_budget=9.5, lr=4e-3, warmup_steps=100, eval_interval=500, eval_mc=1, log_interval=25,
                out_dir="out/cpu"),
    # block diffusion (BD3-LM, L' = 16) at the cpu preset's size and recipe: the laptop ablation; a step costs
    # ~3 of the cpu preset's (2T positions), so ~800 steps fit its 9.5 minutes
    "cpu-block": dict(objective="block", block_len=16, n_layer=4, n_head=4, n_embd=128, block_size=128,
                      dropout=0.0, logit_softcap=15.0, optimizer="muon", muon_lr=0.01, schedule="wsd", ema=0.99,
                      batch_size=32, max_steps=800, time_budget=9.5, lr=4e-3, warmup_steps=100,
                      eval_interval=200, eval_mc=1, log_interval=25, out_dir="out/cpu-block"),
    # the full 10.7M model: the shipped weights' recipe, 15 minutes on one H100 (README: runs)
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.3, attn_dropout=0.1, embd_dropout=0.1,
                logit_softcap=15.0,
                batch_size=256, max_steps=60000, time_budget=15.0, lr=2e-3, warmup_steps=500, schedule="wsd",
                cooldown=0.3, ema=0.999, eval_interval=2000, eval_mc=4, log_interval=100, out_dir="out/gpu"),
    # the autoregressive baseline of the same size: nanoGPT's recipe plus an EMA and the soft-cap
    "gpu-ar": dict(objective="ar", n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, logit_softcap=15.0,
                   attn_dropout=0.2, embd_dropout=0.2, batch_size=64, max_steps=3000, lr=1e-3, ema=0.999,
                   warmup_steps=100, eval_interval=250, log_interval=100, out_dir="out/ar"),
}


# -----------------------------------------------------------------------------
# Command line

def add_train_flags(parser):
    """--preset and one flag per field of ModelConfig and TrainConfig."""
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a set of defaults (flags still override)")
    for cls in (ModelConfig, TrainConfig):
        add_config_flags(parser, cls, {f.name: HELP.get(f.name, "") for f in fields(cls)})


def configs_from_args(args):
    """(ModelConfig, TrainConfig, names of the flags given): the preset's defaults (if any)
    changed by the flags given."""
    chosen = {k: v for k, v in vars(args).items() if v is not None and k != "preset"}
    preset = PRESETS.get(args.preset, {})
    model_cfg = ModelConfig(**{f.name: chosen.get(f.name, preset.get(f.name, f.default))
                               for f in fields(ModelConfig)})
    train_cfg = TrainConfig(**{f.name: chosen.get(f.name, preset.get(f.name, f.default))
                               for f in fields(TrainConfig)})
    return model_cfg, train_cfg, set(chosen)


# The range of every numeric field: (low, high, whether low itself is allowed). NaN and inf
# are never allowed; the upper bounds are sanity limits (what a laptop or one GPU can hold).
RANGES = {
    "block_size": (1, 8192, True), "n_layer": (1, 64, True), "n_head": (1, 64, True), "n_embd": (2, 8192, True),
    "dropout": (0, 0.99, True), "attn_dropout": (0, 0.99, True), "embd_dropout": (0, 0.99, True),
    "logit_softcap": (0, 1e4, True),
    "batch_size": (1, 65536, True), "max_steps": (1, 10 ** 9, True), "time_budget": (0, 10 ** 6, True),
    "lr": (0, 10, False), "muon_lr": (0, 10, False), "min_lr_ratio": (0, 1, True), "cooldown": (0, 1, True),
    "warmup_steps": (0, 10 ** 9, True), "weight_decay": (0, 10, True), "beta2": (0, 0.9999, True),
    "grad_clip": (0, 1e6, False), "ema": (0, 0.99999, True), "prefix_prob": (0, 1, True),
    "block_prob": (0, 1, True), "eval_interval": (1, 10 ** 9, True), "eval_mc": (1, 1024, True),
    "eval_seed": (0, 2 ** 63 - 1, True), "eval_context": (0, 8191, True), "log_interval": (1, 10 ** 9, True),
    "seed": (0, 2 ** 63 - 1, True), "distill_rounds": (1, 10, True), "distill_round_steps": (1, 10 ** 9, True),
    "distill_start_passes": (2, 4096, True), "t_min": (0, 1, True), "t_max": (0, 1, True),
    "ar_fraction": (0, 0.99, False), "block_t_min": (0, 1, True), "block_t_max": (0, 1, True),
    "block_len": (0, 8192, True),
}
CHOICES = {"objective": ("diffusion", "ar", "mixed", "block"), "t_dist": T_DISTS, "loss_weights": LOSS_WEIGHTS, "optimizer": ("adamw", "muon"), "schedule": ("cosine", "wsd"),
           "compile": ("auto", "on", "off"), "precision": ("auto", "bf16", "fp32")}
MAX_TOKENS_PER_STEP = 2 ** 24  # batch x context: beyond this one step needs more memory than a GPU has


def range_problem(name, value, low, high, low_ok):
    """A one-line complaint about a field outside its range, or None."""
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        return f"--{name} must be a finite number, got {value}"
    if value < low or (value == low and not low_ok) or value > high:
        return f"--{name} must be in {'[' if low_ok else '('}{low}, {high}], got {value}"
    return None


def check_config(mc, tc):
    """Every field's range and the rules between fields; all problems in one UserError."""
    problems = [range_problem(name, getattr(tc, name, getattr(mc, name, None)), *limits)
                for name, limits in RANGES.items()]
    problems += [f"--{name} must be one of {', '.join(allowed)}, got {getattr(tc, name)!r}"
                 for name, allowed in CHOICES.items() if getattr(tc, name) not in allowed]
    problems = [p for p in problems if p]
    if not problems:  # the rules between fields, once every field is in range
        if mc.n_embd % mc.n_head or (mc.n_embd // mc.n_head) % 2:
            problems.append("--n_embd / --n_head must be an even integer (rotary embeddings)")
        if tc.prefix_prob + tc.block_prob > 1:
            problems.append("--prefix_prob + --block_prob must be <= 1")
        if tc.eval_context >= mc.block_size:
            problems.append(f"--eval_context must be in 0..{mc.block_size - 1} (less than --block_size)")
        if tc.batch_size * mc.block_size > MAX_TOKENS_PER_STEP:
            problems.append(f"--batch_size x --block_size = {tc.batch_size * mc.block_size:,} tokens per step, "
                            f"more than {MAX_TOKENS_PER_STEP:,}")
        if not tc.t_min < tc.t_max:
            problems.append(f"--t_min must be below --t_max, got {tc.t_min} and {tc.t_max}")
        if (tc.t_min, tc.t_max) != (0.0, 1.0) and tc.t_dist != "clipped":
            problems.append("--t_min and --t_max apply to --t_dist clipped only")
        problems += distill_problems(tc)
        problems += check_block_options(mc, tc)
    if problems:
        raise UserError("; ".join(problems))


def distill_problems(tc):
    """The distillation flags' rules (none apply without --distill_from)."""
    if not tc.distill_from:
        return []
    problems = []
    if tc.objective != "diffusion":
        problems.append("--distill_from distils a diffusion model: drop --objective ar")
    if tc.distill_rounds < 1 or tc.distill_round_steps < 1:
        problems.append("--distill_rounds and --distill_round_steps must be >= 1")
    elif not (tc.distill_start_passes >= 2 ** tc.distill_rounds and tc.distill_start_passes % 2 ** tc.distill_rounds == 0):
        problems.append(f"--distill_start_passes must be a multiple of 2 ** --distill_rounds "
                        f"({2 ** tc.distill_rounds}): every round halves it")
    if tc.divergence not in DIVERGENCES:
        problems.append(f"--divergence must be one of {', '.join(DIVERGENCES)}, got {tc.divergence!r}")
    if tc.distill_order not in DISTILL_ORDERS:
        problems.append(f"--distill_order must be one of {', '.join(DISTILL_ORDERS)}, got {tc.distill_order!r}")
    if tc.distill_ema and not tc.ema:
        problems.append("--distill_ema needs --ema > 0")
    if tc.time_budget:
        problems.append("--time_budget does not work with --distill_from (rounds are counted in steps)")
    return problems


def check_block_options(mc, tc):
    """The rules of --objective block's options (a list of problems)."""
    if tc.objective != "block":
        changed = mc.block_len or (tc.block_t_min, tc.block_t_max) != (0.0, 1.0)
        return ["--block_len, --block_t_min and --block_t_max need --objective block"] if changed else []
    problems = []
    if not 1 <= mc.block_len <= mc.block_size or mc.block_size % mc.block_len:
        problems.append(f"--block_len must divide --block_size {mc.block_size} (1 .. {mc.block_size}), "
                        f"got {mc.block_len}")
    if not 0 <= tc.block_t_min < tc.block_t_max <= 1:
        problems.append("--block_t_min and --block_t_max must satisfy 0 <= MIN < MAX <= 1")
    if tc.block_prob:
        problems.append("--block_prob is for --objective diffusion (a block model is trained on blocks already)")
    return problems


# -----------------------------------------------------------------------------
# Data

def get_batch(data, batch_size, length, generator):
    """Random windows of `length` characters (contiguous, so .view works on any device)."""
    starts = torch.randint(len(data) - length + 1, (batch_size,), generator=generator, device=data.device)
    return data[starts[:, None] + torch.arange(length, device=data.device)]


def run_evaluation(model, val, tc, rank=0, world=1):
    """(val NLL or NELBO in nats/char, standard error) under tc's evaluation settings."""
    return evaluate(model, val, tc.eval_context, tc.eval_mc, tc.eval_seed, rank, world)


# -----------------------------------------------------------------------------
# The run

def setup_distributed(tc):
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: NCCL on CUDA, gloo on CPU."""
    if "RANK" not in os.environ:
        return 0, 1, pick_device(tc.device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if tc.device in ("auto", "cuda") and torch.cuda.is_available():
        n_gpus = torch.cuda.device_count()
        if local >= n_gpus:  # else an opaque CUDA error from one rank only
            raise UserError(f"torchrun process {local} of this host has no GPU: it has {n_gpus} CUDA GPU(s), "
                            f"so use --nproc_per_node {n_gpus} or fewer")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = pick_device("cpu" if tc.device == "auto" else tc.device)
        dist.init_process_group("gloo")
    if tc.batch_size % world:
        raise UserError(f"--batch_size {tc.batch_size} is not divisible by {world} processes")
    return rank, world, device


def shutdown_distributed():
    """Called after train() has returned, so its DDP wrapper is freed first: a process group that
    DDP still holds outlives destroy_process_group() until interpreter exit, where gloo's worker
    threads can abort the process (seen as a rare SIGABRT of one rank on CPU)."""
    if dist.is_initialized():
        gc.collect()  # module reference cycles
        dist.barrier()  # rank 0 may still be writing a checkpoint
        dist.destroy_process_group()


def format_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def load_resume_state(mc, tc, explicit_flags):
    """(checkpoint, TrainConfig) of the run in tc.out_dir: its own settings, except the training
    flags this command line sets (e.g. a longer --max_steps)."""
    path = os.path.join(tc.out_dir, "last.pt")
    ckpt = read_checkpoint(path)
    missing = [k for k in ("optimizer", "step", "train_config", "rng") if k not in ckpt]
    if missing:
        raise UserError(f"{path} has no training state ({', '.join(missing)} missing): it is a weights-only "
                        f"checkpoint; --resume continues a run from the last.pt that train.py writes")
    changed = sorted(f.name for f in fields(ModelConfig)
                     if f.name in explicit_flags and getattr(mc, f.name) != ckpt["config"].get(f.name))
    if changed:
        raise UserError(f"--resume keeps the run's model: {', '.join('--' + f for f in changed)} differ from "
                        f"the saved run's; drop them")
    given = {k: getattr(tc, k) for k in explicit_flags if k in {f.name for f in fields(TrainConfig)}}
    if "optimizer" in given and given["optimizer"] != ckpt["train_config"].get("optimizer"):
        raise UserError(f"--resume keeps the run's optimizer ({ckpt['train_config'].get('optimizer')}); "
                        f"drop --optimizer")
    given.update(resume=True, out_dir=tc.out_dir, data=tc.data, device=tc.device)
    known = {f.name for f in fields(TrainConfig)}
    saved = {k: v for k, v in ckpt["train_config"].items() if k in known}
    return ckpt, replace(TrainConfig(**saved), **given)


def distill_source(path, mc, explicit_flags):
    """(checkpoint, ModelConfig) of the model to distil: its config, with the dropout flags
    this command line gives (the student may train with other dropout than its teacher did)."""
    source = read_checkpoint(path)
    if source["config"].get("causal"):
        raise UserError(f"--distill_from {path} is an autoregressive baseline; distillation needs a diffusion model")
    dropouts = {k: getattr(mc, k) for k in ("dropout", "attn_dropout", "embd_dropout") if k in explicit_flags}
    return source, replace(ModelConfig(**source["config"]), **dropouts)


class Trainer:
    """The run's state and its pieces: one optimisation step (also what bench.py times),
    evaluation with checkpointing, progress lines, and the loop that ties them together."""

    def __init__(self, mc, tc, explicit_flags=frozenset()):
        self.rank, self.world, self.device = setup_distributed(tc)
        self.master = self.rank == 0
        torch.manual_seed(tc.seed + self.rank)
        self.bf16 = tc.precision == "bf16" or (tc.precision == "auto" and self.device.type == "cuda")
        torch.backends.cuda.matmul.allow_tf32 = self.bf16  # the plain fp32 path stays plain
        torch.backends.cudnn.allow_tf32 = self.bf16

        text = load_text(tc.data)
        ckpt = source = None
        if tc.resume:
            ckpt, tc = load_resume_state(mc, tc, explicit_flags)
            chars, mc = ckpt["chars"], ModelConfig(**ckpt["config"])
        elif tc.distill_from:
            source, mc = distill_source(tc.distill_from, mc, explicit_flags)
            chars = source["chars"]
        else:
            chars = sorted(set(text))
            mc = replace(mc, vocab_size=len(chars) + 1, causal=tc.objective == "ar")
        if tc.distill_from:  # the run's length is its rounds
            tc = replace(tc, max_steps=tc.distill_rounds * tc.distill_round_steps)
        self.mc, self.tc, self.chars = mc, tc, chars
        self.train_ids, self.val_ids = encode_splits(text, chars, self.device, mc.block_size + 2)

        self.model = Transformer(mc).to(self.device)
        if source:
            self.model.load_state_dict(source["model"])
        self.teacher, self.teacher_round = None, 0
        if tc.distill_from:  # frozen; restored from last.pt on --resume
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizers = make_optimizers(self.model, tc, fused=self.bf16 and self.device.type == "cuda")
        self.ema = EMA(self.model, tc.ema) if tc.ema else None
        self.step, self.best_val, self.elapsed_before = 0, float("inf"), 0.0
        self.saved_once = bool(ckpt)  # is there a last.pt to fall back on
        self.gen = torch.Generator(device=self.device).manual_seed(tc.seed + 1000 * self.rank)  # batches, masks
        if ckpt:
            self.restore(ckpt)
        self.use_compile = tc.compile == "on" or (tc.compile == "auto" and self.device.type == "cuda")
        self.fwd_model = torch.compile(self.model) if self.use_compile else self.model
        if self.teacher is not None:
            self.fwd_teacher = torch.compile(self.teacher) if self.use_compile else self.teacher
        if self.world > 1:
            self.fwd_model = torch.nn.parallel.DistributedDataParallel(
                self.fwd_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if tc.objective == "mixed" and self.world > 1:  # DDP's gradient hooks allow one forward per backward
            raise UserError("--objective mixed runs in one process (two forward passes per step)")
        self.seq_len = mc.block_size + (1 if tc.objective in ("ar", "mixed") else 0)
        self.local_batch = tc.batch_size // self.world
        self.tokens_per_step = tc.batch_size * mc.block_size

    @property
    def eval_model(self):
        """What is evaluated and saved as best.pt: the EMA copy if there is one."""
        return self.ema.model if self.ema else self.model

    def log(self, *args, **kwargs):
        if self.master:
            print(*args, **kwargs, flush=True)

    # --- state -----------------------------------------------------------------
    def restore(self, ckpt):
        self.model.load_state_dict(ckpt["model"])
        for opt, state in zip(self.optimizers, ckpt["optimizer"]):
            opt.load_state_dict(state)
        if self.ema:  # a run resumed with --ema for the first time starts its average here
            self.ema.model.load_state_dict(ckpt.get("ema", ckpt["model"]))
        self.step, self.best_val = ckpt["step"], ckpt["best_val"]
        if self.teacher is not None:
            self.teacher.load_state_dict(ckpt["teacher"])
            self.teacher_round = ckpt["teacher_round"]
        self.elapsed_before = ckpt.get("elapsed", 0.0)
        if self.world == 1 and ckpt["world"] == 1:  # bit-exact continuation
            self.gen.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["rng"]["cpu"])
            if self.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        else:
            self.gen.manual_seed(self.tc.seed + 1000 * self.rank + self.step)

    def save(self, name, **extra):
        """best.pt holds the weights that were evaluated (the EMA copy if there is one)."""
        if not self.master:
            return
        model = self.model if name == "last.pt" else self.eval_model
        save_checkpoint(os.path.join(self.tc.out_dir, name), model, self.chars, step=self.step,
                        best_val=self.best_val, train_config=portable(asdict(self.tc)), world=self.world,
                        **extra)

    def save_last(self):
        self.saved_once = True
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        extra = {"ema": {k: v.detach().cpu() for k, v in self.ema.model.state_dict().items()}} if self.ema else {}
        if self.teacher is not None:
            extra.update(teacher={k: v.detach().cpu() for k, v in self.teacher.state_dict().items()},
                         teacher_round=self.teacher_round)
        self.save("last.pt", optimizer=[opt.state_dict() for opt in self.optimizers], generator=self.gen.get_state(),
                  rng=rng, elapsed=self.elapsed(), **extra)

    def elapsed(self):
        return self.elapsed_before + time.time() - self.t_start

    def progress(self):
        """Fraction of the run done: steps, or wall time under --time_budget, whichever is
        further. The wall time is read after every step with one process; with several, at each
        progress line and evaluation (the ranks must agree, which takes a broadcast)."""
        return max(self.step / self.tc.max_steps, self.time_progress)

    def refresh_time_progress(self):
        if self.tc.time_budget:
            p = self.elapsed() / (60 * self.tc.time_budget)
            if self.world > 1:  # every rank stops at the same step
                p = torch.tensor([p], device=self.device)
                dist.broadcast(p, 0)
                p = p.item()
            self.time_progress = p

    # --- one step --------------------------------------------------------------
    def loss(self, x):
        if self.teacher is not None:
            passes = teacher_passes(self.tc.distill_start_passes, self.teacher_round)
            return distill_loss(self.fwd_model, self.fwd_teacher, x, self.mc.mask_id, passes, self.tc, self.gen)
        if self.mc.causal:
            return autoregressive_loss(self.fwd_model, x)
        if self.mc.block_len:
            return block_diffusion_loss(self.fwd_model, x, self.mc.mask_id, self.mc.block_len, self.tc.block_t_min,
                                        self.tc.block_t_max, self.gen)
        if self.tc.objective == "mixed":
            ar_rows = min(max(1, round(self.tc.ar_fraction * len(x))), len(x) - 1)
            return mixed_loss(self.fwd_model, x, ar_rows, self.diffusion_loss)
        return self.diffusion_loss(self.fwd_model, x)

    def diffusion_loss(self, model, x):
        tc = self.tc
        return diffusion_loss(model, x, self.mc.mask_id, tc.prefix_prob, self.gen, tc.block_prob,
                              MaskRate(tc.t_dist, tc.t_min, tc.t_max), tc.loss_weights)

    def train_step(self, lr_mult):
        """One optimiser step on a fresh batch. Returns the loss as a device tensor (no sync)."""
        if self.teacher is not None:
            self.next_round()
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * lr_mult
        x = get_batch(self.train_ids, self.local_batch, self.seq_len, self.gen)
        with autocast(self.device, "bf16" if self.bf16 else "fp32"):
            loss = self.loss(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema:
            self.ema.update(self.model, self.step)
        return loss.detach()

    # --- distillation rounds ------------------------------------------------------
    def student_passes(self):
        """The passes the student is learning to sample with: half its teacher's."""
        return teacher_passes(self.tc.distill_start_passes, self.teacher_round) // 2

    def next_round(self):
        """At each round's end (every distill_round_steps steps, and when the run ends): save
        the student as student<passes>.pt, with the step count it was distilled for as its
        sampler default, and make it the teacher. Keyed on the teacher's round, not the step,
        so a resumed run never repeats a round's end."""
        while self.teacher_round < self.step // self.tc.distill_round_steps:
            name = f"student{self.student_passes()}.pt"
            self.save(name, sampler={"steps": self.student_passes()})
            if self.tc.distill_ema:  # the average becomes student and teacher, and restarts
                self.model.load_state_dict(self.ema.model.state_dict())
                self.ema = EMA(self.model, self.tc.ema)
            self.teacher.load_state_dict(self.model.state_dict())
            self.teacher_round += 1
            self.log(f"round {self.teacher_round} done at step {self.step}: saved {self.tc.out_dir}/{name}; "
                     f"the teacher now takes {2 * self.student_passes()} passes")

    # --- evaluation and checkpoints ----------------------------------------------
    def evaluate_and_save(self, log_file):
        t0 = time.time()
        row = {"step": self.step}
        if self.ema:  # the raw weights too, so the EMA's effect is measured in every run
            row["val_raw"], row["val_raw_se"] = run_evaluation(self.model, self.val_ids, self.tc, self.rank, self.world)
        val, se = run_evaluation(self.eval_model, self.val_ids, self.tc, self.rank, self.world)
        if not math.isfinite(val):
            raise DivergedError(f"the validation loss is {val} at step {self.step}")
        improved = val < self.best_val
        self.best_val = min(self.best_val, val)
        if self.teacher is not None:  # distillation: the latest student (its NELBO may rise; quality.py judges)
            self.save("best.pt", val=val, val_se=se, sampler={"steps": self.student_passes()})
        elif improved:
            self.save("best.pt", val=val, val_se=se)
        self.save_last()
        raw = f" (raw weights {row['val_raw']:.4f})" if self.ema else ""
        self.log(f"eval  {self.step:>6} | {format_eval(val, se, self.mc.causal)}{raw}"
                 f"{' | new best, saved' if improved else ''} | {time.time() - t0:.1f}s")
        if log_file:
            row.update(val=val, val_se=se, time=self.elapsed())
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()

    def progress_line(self, loss, lr_mult, steps, seconds):
        """Progress, with the run's length and ETA from whichever limit ends it."""
        by_steps = self.step / self.tc.max_steps
        if self.time_progress > by_steps:  # the time budget ends the run: ~ its step count
            total = f"~{round(self.step / self.time_progress)}"
            eta = 60 * self.tc.time_budget - self.elapsed()
        else:
            total, eta = f"{self.tc.max_steps}", (self.tc.max_steps - self.step) * seconds / steps
        tok_s = steps * self.tokens_per_step / seconds
        rounds = ""
        if self.teacher is not None:
            rounds = (f"round {self.teacher_round + 1}/{self.tc.distill_rounds}, passes "
                      f"{2 * self.student_passes()} -> {self.student_passes()} | ")
        return (f"step {self.step:>6}/{total} | {rounds}loss {loss:.4f} | lr {self.tc.lr * lr_mult:.2e} | "
                f"{tok_s / 1e3:,.1f}k tok/s | ETA {format_time(max(eta, 0))}")

    # --- the loop ----------------------------------------------------------------
    def run(self):
        tc, mc = self.tc, self.mc
        self.t_start = time.time()
        self.time_progress = 0.0
        self.refresh_time_progress()  # a resumed run continues its schedule where it was
        if self.progress() >= 1:
            self.log(f"{tc.out_dir}/last.pt: this run already finished at step {self.step} "
                     f"(raise --max_steps or --time_budget to train on)")
            return
        log_file = self.open_log()
        self.log(f"{tc.objective} model: {self.model.num_params() / 1e6:.2f}M parameters, {mc.n_layer} layers, "
                 f"width {mc.n_embd}, context {mc.block_size} | device {self.device} x{self.world}, compile "
                 f"{self.use_compile}, {'bf16' if self.bf16 else 'fp32'}, {tc.optimizer}"
                 f"{f', EMA {tc.ema}' if tc.ema else ''} | batch {tc.batch_size} x {mc.block_size} = "
                 f"{self.tokens_per_step:,} tokens/step | train {len(self.train_ids):,} chars, "
                 f"val {len(self.val_ids):,} chars" + (f" | resuming at step {self.step}" if tc.resume else ""))
        t_last, step_last = time.time(), self.step
        loss_sum = torch.zeros((), device=self.device)
        self.model.train()
        # Ctrl-C and schedulers' SIGTERM stop the run at the end of the step in progress, so the
        # saved state is that of a whole step wherever the signal lands (a second signal stops at
        # once and saves nothing). Set for SIGINT too: a process started in the background
        # inherits SIGINT ignored, and Python then installs no handler of its own.
        stop = StopRequest()
        previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.progress() < 1 and not stop.requested:
                lr_mult = lr_factor(self.step, self.progress(), tc)
                loss_sum += self.train_step(lr_mult)
                # the clock: after every step with one process (no sync), so the budget is kept to
                # the step; at progress lines with several (the ranks agree through a broadcast)
                if self.world == 1 or self.step % tc.log_interval == 0:
                    self.refresh_time_progress()
                if self.step % tc.log_interval == 0:
                    if self.world > 1:
                        dist.all_reduce(loss_sum)
                    loss = loss_sum.item() / ((self.step - step_last) * self.world)  # the one host sync
                    if not math.isfinite(loss):
                        raise DivergedError(f"the training loss became {loss} between steps {step_last + 1} "
                                            f"and {self.step}")
                    now = time.time()
                    self.log(self.progress_line(loss, lr_mult, self.step - step_last, now - t_last))
                    if log_file:
                        log_file.write(json.dumps({"step": self.step, "train_loss": loss, "lr": tc.lr * lr_mult,
                                                   "time": self.elapsed()}) + "\n")
                    loss_sum.zero_()
                    t_last, step_last = now, self.step
                if self.step % tc.eval_interval == 0 or self.progress() >= 1:
                    self.evaluate_and_save(log_file)
                    self.refresh_time_progress()  # a slow evaluation may use up the budget
                    t_last = time.time()  # keep evaluation out of tokens/s
            if stop.requested:
                self.save_last()  # a whole step: resuming continues bit for bit
                self.log(f"\ninterrupted at step {self.step}: saved {tc.out_dir}/last.pt "
                         f"(continue with --resume --out_dir {tc.out_dir})")
                sys.exit(130)
        except KeyboardInterrupt:  # the second signal: the step in progress is lost, last.pt is the last saved
            self.log(f"\nstopped during step {self.step + 1}; {tc.out_dir}/last.pt is the last saved state")
            sys.exit(130)
        except DivergedError as e:
            saved = f"{tc.out_dir}/last.pt holds the last evaluated step" if self.saved_once else "nothing was saved"
            raise UserError(f"{e}: the run diverged ({saved}); lower --lr or --muon_lr, or check --grad_clip") from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if log_file:
                log_file.close()
        if self.teacher is not None:
            self.next_round()  # the last round's student
        name = "NLL" if mc.causal else "NELBO"
        self.log(f"done: {self.step} steps in {format_time(self.elapsed())}; best val {name} "
                 f"{self.best_val:.4f} nats/char -> {tc.out_dir}/best.pt")

    def open_log(self):
        """log.jsonl of this run, appended to when resuming. A fresh run refuses a folder that
        holds another run's files, unless --overwrite, which removes them first."""
        tc = self.tc
        run_files = [os.path.join(tc.out_dir, name) for name in ("last.pt", "best.pt", "log.jsonl")]
        found = [path for path in run_files if os.path.exists(path)]
        if found and not tc.resume:
            if not tc.overwrite:
                raise UserError(f"{tc.out_dir} holds a run ({', '.join(os.path.basename(f) for f in found)}): "
                                f"continue it with --resume, replace it with --overwrite, or choose another --out_dir")
            for path in found if self.master else []:
                os.remove(path)
        if not self.master:
            return None
        try:
            os.makedirs(tc.out_dir, exist_ok=True)
            return open(os.path.join(tc.out_dir, "log.jsonl"), "a")
        except OSError as e:
            raise UserError(f"cannot write to --out_dir {tc.out_dir}: {e.strerror}") from None


class StopRequest:
    """The first SIGINT/SIGTERM asks the loop to stop after the step in progress; the second
    raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False

    def handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class DivergedError(Exception):
    """A loss that is NaN or infinite: the run stops, keeping the last good checkpoint."""


def portable(train_config):
    """The stored training config without this machine's absolute paths: paths inside the repo
    become relative to it, others keep only their file name."""
    root = ROOT
    out = dict(train_config)
    for key in ("data", "out_dir", "distill_from"):
        path = out.get(key)
        if path and os.path.isabs(path):
            rel = os.path.relpath(path, root)
            out[key] = rel if not rel.startswith("..") else os.path.basename(path)
    return out
