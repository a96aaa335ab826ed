"""
What a training run is told: TrainConfig (every field a train.py flag, beside ModelConfig's),
one help line per flag, the presets, and the rules a config must obey (check_config), so that
a bad command line fails before anything is built.
"""

import math
from dataclasses import asdict, dataclass, fields

from cli import UserError, add_config_flags, field_type
from corpus import DATA_DEFAULT
from diffusion import LOSS_WEIGHTS, T_DISTS
from distill import DISTILL_METHODS, DISTILL_ORDERS, DIVERGENCES
from model import ModelConfig
from objectives import OBJECTIVES


@dataclass
class TrainConfig:
    data: str = DATA_DEFAULT
    out_dir: str = "out"
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
    patience: int = 0
    save_interval: float = 60.0
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
    distill_method: str = "sdtt"
    distill_rounds: int = 3
    distill_round_steps: int = 1000
    distill_start_passes: int = 64
    divergence: str = "kl"
    distill_order: str = "random"
    distill_ema: bool = False
    dmmd_aux_lr_mult: float = 4.0
    progress: bool = True


# one line of --help per flag (nanochat style)
HELP = {
    "vocab_size": None,  # set from the data, not a flag
    "block_size": "context length in characters",
    "n_layer": "transformer blocks", "n_head": "attention heads", "n_embd": "width",
    "dropout": "dropout on the output of every attention and MLP branch",
    "attn_dropout": "dropout on the attention probabilities",
    "embd_dropout": "dropout on the input embedding",
    "logit_softcap": "if > 0, logits = C * tanh(logits / C)",
    "block_len": "L': block length of --objective block (1 .. --block_size, dividing it)",
    "noise_dim": "--distill_method dmmd: the student's noise input, N(0, 1) this wide at every masked position, "
                 "projected into its input (starting small: rms 0.3 against the embedding's 1) so that one step "
                 "can commit correlated characters; 0: none",
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
    "eval_interval": "steps between validation runs (each saves last.pt too)",
    "patience": "early stopping: end the run after N evaluations in a row without a new best val "
                "(best.pt keeps the best; 0: train to --max_steps / --time_budget)",
    "save_interval": "seconds between saves of last.pt beside the evaluations', so a crash or kill -9 loses "
                     "at most this much of the run (0: at evaluations only)",
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
    "distill_from": "distill this diffusion checkpoint into fewer sampling passes by --distill_method (student "
                    "and teacher start as its copies, its model config is kept; --max_steps = rounds x round steps)",
    "distill_method": "with --distill_from: sdtt (self-distillation through time: the student learns the "
                      "teacher's two steps in one, per position) or dmmd (discrete moment matching, Hoogeboom et al. "
                      "2026: an auxiliary model learns where the student's own step leads and the student is moved "
                      "until the teacher agrees with it there; dmmd.py)",
    "distill_rounds": "rounds: after each the student saves student<passes>.pt and the step doubles (SDTT: the "
                      "student becomes the teacher; D-MMD: the teacher stays the checkpoint)",
    "distill_round_steps": "optimizer steps per round (N)",
    "distill_start_passes": "the first teacher's sampling passes (dt = 1/this): its students learn 32 -> 16 -> 8 "
                            "over 3 rounds from 64 (D-MMD: the same student counts)",
    "divergence": "SDTT loss on the masked positions: kl = KL(student || teacher) (the paper's), fkl = KL(teacher "
                  "|| student), tvd, mse (of log-probabilities)",
    "distill_order": "which masked positions a sampler step commits (SDTT: the teacher's two steps; D-MMD: the "
                     "student's step): random (MDLM's ancestral order, the papers') or spread (the sampler's "
                     "default order; no remasking)",
    "distill_ema": "with --ema: at each round's end the EMA copy becomes the teacher and the student, and the "
                   "average restarts (SDTT's use_ema_on_growth); else the raw student becomes the teacher",
    "dmmd_aux_lr_mult": "--distill_method dmmd: the auxiliary model's learning rates (same optimizer and "
                        "schedule as the student's) are the student's times this: it must keep up with the "
                        "student's step (at 1 the tiny model's student overshot and drifted back)",
    "progress": "a progress line with an ETA on stderr while an evaluation runs, when stderr is a terminal "
                "(never in logs); --no-progress: none",
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
    """--preset and one flag per field of ModelConfig and TrainConfig, each numeric one's help
    ending with its range (RANGES); --data's default is said in words (not this machine's path)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a set of defaults (flags still override)")
    for cls in (ModelConfig, TrainConfig):
        helps = {f.name: HELP.get(f.name, "") for f in fields(cls)}
        helps.update({name: f"{helps[name]}; {range_text(*RANGES[name])}" for name in helps
                      if name in RANGES and helps[name] is not None})
        add_config_flags(parser, cls, helps, defaults={"data": None})


def range_text(low, high, low_ok):
    """'in [1, 64]', 'in (0, 10]', 'in [0, 2**63-1]'."""
    def bound(v):
        if v == 2 ** 63 - 1:
            return "2**63-1"
        if isinstance(v, int) and v >= 10 ** 6 and str(v).rstrip("0") == "1":
            return f"10**{len(str(v)) - 1}"
        return f"{v}" if isinstance(v, int) else f"{v:g}"
    return f"in {'[' if low_ok else '('}{bound(low)}, {bound(high)}]"


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
# A context of one character has nothing to condition on: no prefix to keep, no next character.
RANGES = {
    "block_size": (2, 8192, True), "n_layer": (1, 64, True), "n_head": (1, 64, True), "n_embd": (2, 8192, True),
    "dropout": (0, 0.99, True), "attn_dropout": (0, 0.99, True), "embd_dropout": (0, 0.99, True),
    "logit_softcap": (0, 1e4, True),
    "batch_size": (1, 65536, True), "max_steps": (1, 10 ** 9, True), "time_budget": (0, 10 ** 6, True),
    "lr": (0, 10, False), "muon_lr": (0, 10, False), "min_lr_ratio": (0, 1, True), "cooldown": (0, 1, True),
    "warmup_steps": (0, 10 ** 9, True), "weight_decay": (0, 10, True), "beta2": (0, 0.9999, True),
    "grad_clip": (0, 1e6, False), "ema": (0, 0.99999, True), "prefix_prob": (0, 1, True),
    "block_prob": (0, 1, True), "eval_interval": (1, 10 ** 9, True), "patience": (0, 10 ** 6, True), "save_interval": (0, 10 ** 6, True), "eval_mc": (1, 1024, True),
    "eval_seed": (0, 2 ** 63 - 1, True), "eval_context": (0, 8191, True), "log_interval": (1, 10 ** 9, True),
    "seed": (0, 2 ** 63 - 1, True), "distill_rounds": (1, 10, True), "distill_round_steps": (1, 10 ** 9, True),
    "distill_start_passes": (2, 4096, True), "t_min": (0, 1, True), "t_max": (0, 1, True),
    "ar_fraction": (0, 0.99, False), "block_t_min": (0, 1, True), "block_t_max": (0, 1, True),
    "block_len": (0, 8192, True), "noise_dim": (0, 4096, True), "dmmd_aux_lr_mult": (0, 100, False),
}
CHOICES = {"distill_method": DISTILL_METHODS,
           "objective": tuple(OBJECTIVES), "t_dist": T_DISTS, "loss_weights": LOSS_WEIGHTS, "optimizer": ("adamw", "muon"), "schedule": ("cosine", "wsd"),
           "compile": ("auto", "on", "off"), "precision": ("auto", "bf16", "fp32")}
MAX_TOKENS_PER_STEP = 2 ** 24  # batch x context: beyond this one step needs more memory than a GPU has


def range_problem(name, value, low, high, low_ok):
    """A one-line complaint about a field outside its range, or None."""
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        return f"--{name} must be a finite number, got {value}"
    if value < low or (value == low and not low_ok) or value > high:
        return f"--{name} must be in {'[' if low_ok else '('}{low}, {high}], got {value}"
    return None


def value_problems(values):
    """The RANGES and CHOICES complaints about {field: value} (fields with neither pass)."""
    problems = [range_problem(name, value, *RANGES[name]) for name, value in values.items() if name in RANGES]
    problems += [f"--{name} must be one of {', '.join(CHOICES[name])}, got {value!r}"
                 for name, value in values.items() if name in CHOICES and value not in CHOICES[name]]
    return [p for p in problems if p]


def model_rules(mc):
    """The rules between a ModelConfig's fields (each in range), beside its objective's."""
    if mc.n_embd % mc.n_head or (mc.n_embd // mc.n_head) % 2:
        return ["--n_embd / --n_head must be an even integer (rotary embeddings)"]
    return []


def model_problems(cfg):
    """What is wrong with a model config read from a checkpoint ({field: value}), spelled as
    the flags: each field's type (the flags' parser sees to it on the command line), then the
    flags' own RANGES and CHOICES, then the rules between the fields; [] if train.py could
    have made it. The vocabulary size is the checkpoint's vocabulary's, checked there."""
    kinds = {f.name: field_type(f) for f in fields(ModelConfig)}
    problems = [type_problem(name, value, kinds[name]) for name, value in cfg.items() if name in kinds]
    problems = [p for p in problems if p] or value_problems(cfg)
    if problems:
        return problems
    mc = ModelConfig(**cfg)
    return model_rules(mc) + objective_problems(mc, TrainConfig())


def train_config_problems(tc):
    """The type and range complaints about a TrainConfig read back from a run's last.pt (--resume),
    by the flags' table; the rules between fields were checked when the run started."""
    kinds = {f.name: field_type(f) for f in fields(TrainConfig)}
    problems = [type_problem(name, getattr(tc, name), kind) for name, kind in kinds.items()]
    return [p for p in problems if p] or value_problems(asdict(tc))


def type_problem(name, value, kind):
    """A complaint about a value that is not of its field's type (an int field takes no float
    or bool; a float field takes an int), or None."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and not (is_number and isinstance(value, int)):
        return f"--{name} must be an integer, got {value!r}"
    if kind is float and not is_number:
        return f"--{name} must be a number, got {value!r}"
    if kind is str and not isinstance(value, str):
        return f"--{name} must be a string, got {value!r}"
    if kind is bool and not isinstance(value, bool):
        return f"--{name} must be true or false, got {value!r}"
    return None


def check_config(mc, tc, given=()):
    """Every field's range, then the flags in `given` (the names on the command line) that the run
    would ignore, then the rules between fields; the problems of the first stage that has any,
    in one UserError. (--n_embd 128 with --distill_from is a flag the run drops, not a width
    judged against the default --n_head.)"""
    problems = value_problems({**asdict(mc), **asdict(tc)})
    if not problems:  # the rules between fields, once every field is in range
        flags_without_effect(mc, tc, given)
        problems += model_rules(mc)
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
        problems += distill_problems(mc, tc)
        if not (tc.distill_from and mc.objective != "diffusion"):  # else the objective is refused already
            problems += objective_problems(mc, tc)
    if problems:
        raise UserError("; ".join(problems))


# Flags that do nothing in some runs: given there, they are refused, not ignored.
NO_EFFECT = [
    ("ar_fraction", lambda mc, tc: mc.objective != "mixed", "applies to --objective mixed only"),
    ("muon_lr", lambda mc, tc: tc.optimizer != "muon", "applies to --optimizer muon only"),
    ("cooldown", lambda mc, tc: tc.schedule != "wsd", "applies to --schedule wsd only"),
    ("overwrite", lambda mc, tc: tc.resume, "and --resume contradict each other: continue the run or replace it"),
] + [(name, lambda mc, tc: bool(tc.distill_from), "does not apply with --distill_from: the student takes "
      "the teacher's shape") for name in ("n_layer", "n_head", "n_embd", "block_size", "block_len")] + [
    ("distill_method", lambda mc, tc: not tc.distill_from, "applies with --distill_from only")] + [
    (name, lambda mc, tc: not (tc.distill_from and tc.distill_method == "dmmd"),
     "applies to --distill_from with --distill_method dmmd only") for name in ("dmmd_aux_lr_mult", "noise_dim")] + [
    (name, lambda mc, tc: tc.distill_from and tc.distill_method == "dmmd", "applies to --distill_method sdtt only")
    for name in ("divergence", "distill_ema")]


def flags_without_effect(mc, tc, given):
    """A UserError naming every flag in `given` (the names on the command line) that this run
    would ignore."""
    problems = [f"--{name} {why}" for name, unused, why in NO_EFFECT if name in given and unused(mc, tc)]
    if problems:
        raise UserError("; ".join(problems))


def distill_problems(mc, tc):
    """The distillation flags' rules (none apply without --distill_from)."""
    if not tc.distill_from:
        return []
    problems = []
    if mc.objective != "diffusion":
        problems.append(f"--distill_from distils a diffusion model (the student takes its objective): "
                        f"drop --objective {mc.objective}")
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


def objective_problems(mc, tc):
    """The rules of the objective's own options (OBJECTIVES[...].problems), and --objective
    block's options given to another objective."""
    problems = OBJECTIVES[mc.objective].problems(mc, tc)
    if mc.objective != "block" and (mc.block_len or (tc.block_t_min, tc.block_t_max) != (0.0, 1.0)):
        problems.append("--block_len, --block_t_min and --block_t_max need --objective block")
    return problems
