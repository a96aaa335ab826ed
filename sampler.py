"""
The masked-diffusion sampler, its host side: every step runs one forward pass, draws a character
for every masked position and commits some of them (confidence-ordered parallel unmasking, or
another order), with prompts, infilling, remasking, block-wise decoding with a key/value cache
(or a sparse one without blocks), windowed generation of texts longer than the context, one
step that torch.compile can capture whole, and on CUDA the whole generation as one CUDA graph.

This file holds what the host decides: the options, and the plan made before the first step
(the blocks, every step's counts as device tensors: `plan_generation`), then `generate` and the
sampling scripts' command line. The steps themselves, which only queue device work, are
denoise.py's; the autoregressive baseline's sampler is ar_sampler.py's.

Every option lives in SamplerConfig: its field defaults are `python sample.py --ckpt weights/model.pt`'s
(chosen with quality.py), its checks the sampler's rules; the CLIs build their flags from its fields. In Python:

    from sampler import SamplerConfig, generate
    canvas, nfe = generate(model, canvas, seed=0)     # what sample.py writes with this model
    generate(model, canvas, SamplerConfig.from_options(threshold=0.9), seed=0)

A model from checkpoint.load_model carries its checkpoint's sampler setting (a distilled student's,
model.sampler_defaults): it replaces the defaults where the flags (from_options's arguments) are
silent; its steps, per 256 characters, replace PASSES_PER_256 when the config has no step count.
"""

import math
import random
import weakref
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional

import torch

from checkpoint import DEFAULT_SAMPLER_CKPT, load_model_of_kind
from cli import UserError, add_config_flags, config_values, shown
from copula import (COPULA_HELP, COPULAS, check_copula_model, check_copula_options, check_copula_vocabulary,
                    make_copula)
from corpus import MASK_GLYPH, encode, mask_id_of
from denoise import CACHES, char_prior, compiled_step, denoise_canvas, denoise_step, sparse_run_sizes
from devices import capture_graph, pick_device, sampling_precision

ORDERS = ("confidence", "random", "noisy", "spread", "l2r")
PLANNED_ORDERS = ("random", "spread", "l2r")  # they choose positions without the pass: the sparse cache works
REMASK_BY = ("prob", "ratio", "pmi")
SCHEDULES = ("linear", "cosine")
PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


# -----------------------------------------------------------------------------
# The options

@dataclass(frozen=True)
class SamplerConfig:
    """Every option of the diffusion sampler. The defaults are sample.py's for a checkpoint that
    stores no setting (the teacher), chosen with quality.py on 64 validation prompts (RESULTS.md).
    A threshold replaces the step count and needs confidences: `from_options` applies that rule."""
    steps: Optional[int] = None  # None: PASSES_PER_256 (or the checkpoint's) per 256 characters (`default_steps`)
    threshold: Optional[float] = None
    temperature: float = 0.95
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    schedule: str = "cosine"
    order: str = "spread"
    remask: float = 0.5
    remask_by: str = "pmi"
    block: Optional[int] = None
    cache: str = "none"
    refresh: int = 8
    halo: int = 0
    context_keep: Optional[int] = None
    precision: str = "auto"
    compile: Optional[str] = None
    cuda_graph: bool = False
    copula: str = "none"
    copula_ckpt: Optional[str] = None

    @classmethod
    def from_options(cls, checkpoint_defaults=None, **given):
        """The defaults, then a checkpoint's setting (model.sampler_defaults; its steps are per 256
        characters, read by `default_steps`), then `given` (None: not given). A threshold replaces
        the step count and, unless given, brings confidence order and no remasking."""
        base = {k: v for k, v in (checkpoint_defaults or {}).items() if k != "steps"}
        given = {k: v for k, v in given.items() if v is not None}
        if "threshold" in given:
            base.update(THRESHOLD_BRINGS)
        return cls(**{**base, **given})

    @classmethod
    def check_stored(cls, setting):
        """A checkpoint's stored setting by the sampler's rules, steps included (ValueError)."""
        cls.from_options(setting, steps=setting.get("steps"))

    def __post_init__(self):
        check_options(self)


# one help line per option: the CLIs' flags are made from these and the fields above
SAMPLER_HELP = {
    "steps": "forward passes to unmask everything, >= 1 (at most one per character, at least one per block); "
             "default: 64 per 256 characters to write, at least 64 (fewer passes per character cost quality)",
    "threshold": "instead of --steps: each pass commits every character with confidence >= this, in (0, 1], "
                 "at least one (order confidence and no remasking unless given)",
    "temperature": "0 = greedy; >= 0",
    "top_k": "draw only from the k most likely characters; >= 1",
    "top_p": "draw only from the most likely characters whose probabilities sum to p (nucleus); in (0, 1]",
    "schedule": "characters committed per step with --steps: linear, or cosine (few first, many last)",
    "order": "which masked characters to commit each step: spread, bit-reversed positions, those written "
             "together far apart; random (MDLM's ancestral order); confidence, the most confident (spells "
             "best, repeats most); noisy, confidence plus annealed Gumbel noise (MaskGIT); l2r, the leftmost "
             "(with --steps = the masked count and --remask 0: one character per pass, as the AR model)",
    "remask": "with --steps: each step also re-opens REMASK x its count of written characters, the least likely "
              "(--remask-by), and writes as many more; same number of passes (ReMDM); >= 0",
    "remask_by": "which written characters count as least likely: prob, the probability each was drawn with; "
                 "ratio, that over the best character's there; pmi, that over the model's prior for the "
                 "character (spares rare characters: capitals, colons)",
    "block": "semi-autoregressive: write left to right in blocks of BLOCK characters, each unmasked in parallel "
             "over its share of the steps; >= 1 (default: the whole window; blocks cost quality with the shipped "
             "model). A block model (train.py --objective block) always writes its own blocks",
    "cache": "reuse keys/values across steps. With --block, those outside the block for all its steps "
             "(prefix: the left side; dual: both sides, each step runs on the block alone). sparse (order "
             "random, spread or l2r): each step runs only on the positions it writes and those changed since "
             "the last full pass; delayed: as sparse, each pass storing the keys/values it computed, so a changed "
             "position runs once, in the next step (dKV-Cache). exact (block models only, causal across blocks): "
             "the clean blocks' keys/values, computed once each; each step runs on the block alone",
    "refresh": "with --cache sparse or delayed: a full pass every REFRESH steps; >= 1",
    "halo": "with --cache sparse or delayed: each pass also runs the HALO positions each side of a changed one; >= 0",
    "context_keep": "characters of context kept before a block as the window slides, 0 .. the model's context - 1 "
                    "(default: the context minus the block, or half the context without blocks)",
    "precision": "auto = bf16 where it is native (CUDA; CPUs with AVX-512 BF16 or AMX), fp32 elsewhere",
    "compile": "torch.compile each step, forward pass and sampling together (pays off on CUDA after a "
               "warm-up; a cached pass compiles once per shape); a bare --compile is mode default, reduce-overhead uses CUDA graphs",
    "cuda_graph": "CUDA: capture the whole generation as one CUDA graph and replay it (needs --steps; any "
                  "--cache; pays off from the second generation of a shape)",
    **COPULA_HELP,
}
SAMPLER_CHOICES = {"schedule": SCHEDULES, "order": ORDERS, "remask_by": REMASK_BY, "cache": tuple(CACHES),
                   "precision": PRECISIONS, "compile": COMPILE_MODES, "copula": COPULAS}
THRESHOLD_BRINGS = {"order": "confidence", "remask": 0.0, "steps": None}  # unless given: from_options
ENGINE_FIELDS = ("compile", "cuda_graph")  # how a setting runs, not what it writes: no --settings field
# --settings names (bench.py, quality.py), more fields may follow ("fast32,cache=sparse"): fast32, 32
# passes in the quality band (RESULTS 2026-12-03, the frontier); sparse2, the sparse cache nearest the band
NAMED_SETTINGS = {"fast32": "steps=32,schedule=linear,temperature=0.9,order=spread,remask=0.5,remask_by=pmi",
                  "sparse2": "cache=sparse,refresh=2,temperature=0.9,order=spread,remask=0.5,remask_by=pmi"}


def expand_setting(text):
    """A --settings entry with its names replaced by their fields (a later field wins)."""
    return ",".join(NAMED_SETTINGS.get(part, part) for part in text.split(","))


def check_options(c):
    """Every rule of the sampler's options, in one place. Raises ValueError with a message that
    names the option as the CLIs spell it."""
    finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)
    if c.steps is not None and c.threshold is not None:
        raise ValueError("give --steps or --threshold, not both")
    if c.steps is not None and not (integer(c.steps) and c.steps >= 1):
        raise ValueError(f"--steps must be an integer >= 1, got {c.steps!r}")
    if c.threshold is not None and not (finite(c.threshold) and 0 < c.threshold <= 1):
        raise ValueError(f"--threshold must be in (0, 1], got {c.threshold}")
    if c.order not in ORDERS:
        raise ValueError(f"--order must be one of {', '.join(ORDERS)}, got {c.order!r}")
    if c.order != "confidence" and c.threshold is not None:
        raise ValueError("--threshold needs confidences: use it with --order confidence")
    if not (finite(c.remask) and c.remask >= 0):
        raise ValueError(f"--remask must be >= 0, got {c.remask}")
    if c.remask and c.threshold is not None:
        raise ValueError("--remask needs --steps, not --threshold")
    if not (finite(c.temperature) and c.temperature >= 0):
        raise ValueError(f"--temperature must be >= 0, got {c.temperature}")
    if c.top_k is not None and not (integer(c.top_k) and c.top_k >= 1):
        raise ValueError(f"--top-k must be an integer >= 1, got {c.top_k!r}")
    if c.top_p is not None and not (finite(c.top_p) and 0 < c.top_p <= 1):
        raise ValueError(f"--top-p must be in (0, 1], got {c.top_p}")
    if c.block is not None and not (integer(c.block) and c.block >= 1):
        raise ValueError(f"--block must be an integer >= 1, got {c.block!r}")
    if c.context_keep is not None and not (integer(c.context_keep) and c.context_keep >= 0):
        raise ValueError(f"--context-keep must be an integer >= 0, got {c.context_keep!r}")
    if c.cache not in CACHES:
        raise ValueError(f"--cache must be one of {', '.join(CACHES)}, got {c.cache!r}")
    if c.cache in ("prefix", "dual") and c.block is None:
        raise ValueError(f"--cache {c.cache} needs --block (the cache is rebuilt once per block)")
    if c.cache in ("sparse", "delayed") and (c.order not in PLANNED_ORDERS or c.threshold is not None):
        raise ValueError(f"--cache {c.cache} needs a step schedule (not --threshold) and --order random, spread or l2r "
                         "(it picks the positions to write before the pass)")
    if not (integer(c.refresh) and c.refresh >= 1):
        raise ValueError(f"--refresh must be an integer >= 1, got {c.refresh!r}")
    if not (integer(c.halo) and c.halo >= 0) or (c.halo and c.cache not in ("sparse", "delayed")):
        raise ValueError(f"--halo must be an integer >= 0, with --cache sparse or delayed; got {c.halo!r}, --cache {c.cache}")
    if c.schedule not in SCHEDULES:
        raise ValueError(f"--schedule must be linear or cosine, got {c.schedule!r}")
    if c.remask_by not in REMASK_BY:
        raise ValueError(f"--remask-by must be one of {', '.join(REMASK_BY)}, got {c.remask_by!r}")
    if c.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {c.precision!r}")
    if c.compile is not None and c.compile not in COMPILE_MODES:
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {c.compile!r}")
    if c.cuda_graph and c.threshold is not None:
        raise ValueError("--cuda-graph needs a step schedule, not --threshold (the number of passes must be fixed)")
    if c.cuda_graph and c.compile not in (None, "default"):
        raise ValueError("--cuda-graph captures its own CUDA graph: use it with --compile default or without "
                         "--compile")
    check_copula_options(c)


# -----------------------------------------------------------------------------
# The step schedule

def commit_schedule(n, steps, schedule="linear"):
    """How many of n masked positions to commit at each of `steps` steps (each >= 1, sum n).

    linear: the same number every step. cosine: the fraction still masked after step i is
    cos(pi/2 * i/steps) (MaskGIT), so few characters are committed while little is known
    and more at the end."""
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be in 1..{n}, got {steps}")
    done = []
    for i in range(1, steps + 1):
        if schedule == "linear":
            d = (n * i) // steps
        elif schedule == "cosine":
            d = n - math.ceil(n * math.cos(math.pi / 2 * i / steps) - 1e-9)
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
        prev = done[-1] if done else 0
        done.append(min(max(d, prev + 1), n - (steps - i)))  # >= 1 per step, room for the rest
    return [b - a for a, b in zip([0] + done[:-1], done)]


# -----------------------------------------------------------------------------
# The host's plan: blocks, and per block the counts of every step, decided before any step

class Block(NamedTuple):
    """A stretch of masked columns decoded together, and the window the model sees for it."""
    start: int      # the window: canvas columns [start, end)
    end: int
    first: int      # the block: canvas columns [first, block_end), every mask in it is written
    block_end: int
    n_masked: int


class StepCounts(NamedTuple):
    """One step's numbers as device tensors (0-dim; (steps,) for a whole block): characters
    to commit (re-opened ones included), characters to re-open, the Gumbel noise scale."""
    commit: torch.Tensor
    reopen: torch.Tensor
    noise_scale: torch.Tensor

    @property
    def n_steps(self):
        return self.commit.size(0)

    def at(self, step):
        """The counts of one step (0-dim tensors) from a block's."""
        return StepCounts(*(c[step] for c in self))


@dataclass
class BlockPlan:
    """What the host decides for one block before it starts (`step_plan`)."""
    block: Block
    counts: Optional[list]    # net characters written per step (None: threshold)
    steps: StepCounts         # on the device, one entry per step
    run_size: Optional[list]  # sparse cache: positions each pass runs on (denoise.sparse_pass_size's buckets)
    run_distinct: Optional[list] = None  # of which distinct (the rest repeat one)


@dataclass
class GenerationPlan:
    """Everything the host decides before the first step (`plan_generation`)."""
    blocks: list
    config: SamplerConfig
    seed: object        # an int, or a 0-dim long tensor (a CUDA graph's input)
    precision: str      # "bf16" or "fp32"
    step_fn: object     # denoise_step, or its compiled version
    prior: Optional[torch.Tensor]
    copula: object = None  # copula.Copula: draws each step's committed characters jointly


def plan_blocks(masked_cols, N, T, block, keep, aligned=False):
    """Split the masked columns (sorted) into blocks, decoded left to right, each filled before
    the next. A block is the next `block` columns from the first masked one (None: the rest of
    the window), cut at the window's end; its window of T columns keeps `keep` columns before
    it where it can. Past the context the window slides with the blocks: one mechanism for any
    length. aligned (a block model, block = its L'): blocks and window starts lie on the grid of
    L' columns from column 0, so every block is one of the model's blocks (its clean characters,
    a prompt's tail say, stay as they are) and the window slides by whole blocks."""
    plan, i = [], 0
    while i < len(masked_cols):
        first = masked_cols[i]
        start = max(0, min(first - keep, N - T))
        if aligned:  # T is a multiple of the block: the block fits the window
            first -= first % block
            start = max(0, first + block - T, (first - keep) // block * block)
        end = min(start + T, N)
        block_end = end if block is None else min(first + block, end)
        j = i
        while j < len(masked_cols) and masked_cols[j] < block_end:
            j += 1
        plan.append(Block(start, end, first, block_end, j - i))
        i = j
    return plan


def split_steps(steps, sizes):
    """Forward passes per block: in proportion to the square root of its masked count, at least
    1 and at most the count each. They sum to `steps` exactly when len(sizes) <= steps <=
    sum(sizes); with more blocks than steps every block still takes one pass.
    Why the root: a pass that writes c of a block's n masks writes about c^2 / n neighbouring
    pairs, drawn independently of each other. Over k passes that is n / k such pairs, and
    k_i ~ sqrt(n_i) minimises their sum. Proportional shares gave a 6-character tail after a
    full window (a prompt plus 256 characters) one or two passes, and it came out garbled."""
    total = min(max(steps, len(sizes)), sum(sizes))
    roots = [math.sqrt(s) for s in sizes]
    share = [total * r / sum(roots) for r in roots]
    alloc = [min(max(1, math.floor(x)), s) for x, s in zip(share, sizes)]
    while sum(alloc) < total:
        i = max((i for i in range(len(sizes)) if alloc[i] < sizes[i]), key=lambda i: share[i] - alloc[i])
        alloc[i] += 1
    while sum(alloc) > total:
        i = max((i for i in range(len(sizes)) if alloc[i] > 1), key=lambda i: alloc[i] - share[i])
        alloc[i] -= 1
    return alloc


def plan_generation(model, canvas, config, seed):
    """The host's part of generation, done before any step: the blocks and their step counts
    (on the device), the prior. After it, the steps only queue device work, which is what
    lets `generate` capture them whole as a CUDA graph."""
    remask_by = config.remask_by if config.remask else "prob"  # nothing re-opened: no ranking (nor prior pass)
    prior = char_prior(model, config.precision) if remask_by == "pmi" else None
    if canvas.dim() != 2 or canvas.is_floating_point():
        raise ValueError(f"the canvas must be (batch, length) character ids, got a {canvas.dim()}-d "
                         f"{str(canvas.dtype).removeprefix('torch.')} tensor (one text: canvas[None])")
    T = model.config.block_size
    block = check_for_model(model, config)
    keep = config.context_keep
    if keep is None:
        keep = T - block if block is not None and block < T else T // 2
    is_masked = canvas == model.config.mask_id
    if not torch.equal(is_masked, is_masked[:1].expand_as(is_masked)):
        raise ValueError("every row of the canvas must have the same masked positions")
    blocks = plan_blocks(is_masked[0].nonzero().flatten().tolist(), canvas.size(1), T, block, keep,
                         aligned=bool(model.config.block_len))  # host sync
    sizes = [b.n_masked for b in blocks]
    if config.threshold is None:
        steps = split_steps(config.steps or default_steps(sum(sizes), model), sizes)
    else:
        steps = [None] * len(blocks)
    plans = [step_plan(b, n, config, canvas.device) for b, n in zip(blocks, steps)]
    if config.remask_by != remask_by:
        config = replace(config, remask_by=remask_by)
    return GenerationPlan(plans, config, seed, sampling_precision(config.precision, canvas.device),
                          compiled_step(config.compile) if config.compile else denoise_step, prior,
                          make_copula(model, config))


PASSES_PER_256 = 64  # the default's passes per 256 characters written (quality.py chose 64 for 256)


def default_steps(n_masked, model=None):
    """Forward passes when --steps is not given: P per 256 characters to write and never fewer
    than P, so a long text gets as many passes per character as a window does (a fixed count
    would leave a long text a fraction of a pass per character). P: the step count the model's
    checkpoint stores (a distilled student's, what it learned for a window), else PASSES_PER_256."""
    per_256 = getattr(model, "sampler_defaults", {}).get("steps", PASSES_PER_256)
    return max(per_256, math.ceil(per_256 * n_masked / 256))


def block_model_block(model, config):
    """The block length the sampler writes: config.block, or for a block model its own L' (the
    only one it was trained for), whose cache is exact or none."""
    L = model.config.block_len
    if not L:
        if config.cache == "exact":
            raise ValueError("--cache exact needs a block model (train.py --objective block)")
        return config.block
    if config.block not in (None, L):
        raise ValueError(f"--block: this block model writes blocks of its block_len {L} (leave --block out)")
    if config.cache not in ("none", "exact"):
        raise ValueError(f"--cache {config.cache}: a block model's cache is exact (--cache exact) or none")
    return L


def check_for_model(model, config):
    """The rules that depend on the checkpoint (ValueError): a block model's own blocks and
    caches, and a context kept before a block that leaves the block a column of the window.
    Returns the block length the sampler writes (block_model_block's)."""
    block = block_model_block(model, config)
    check_copula_model(model, config)
    T = model.config.block_size
    if config.context_keep is not None and config.context_keep >= T:
        raise ValueError(f"--context-keep must be below this model's context of {T} characters (the block needs "
                         f"room in the window), got {config.context_keep}")
    return block


def step_plan(block, n_steps, config, device):
    """What the host decides for one block before it starts: per step the commit count, the
    re-open count and the noise scale, and for the sparse cache how many positions each pass
    runs on."""
    remask, refresh = config.remask, config.refresh
    counts = commit_schedule(block.n_masked, n_steps, config.schedule) if n_steps is not None else None
    n_steps = len(counts) if counts is not None else block.block_end - block.first  # threshold: <= one pass per mask
    commit, reopen = [0] * n_steps, [0] * n_steps  # threshold: counts unused
    if counts is not None:
        done = [sum(counts[:i]) for i in range(n_steps)]
        reopen = [min(round(remask * c), d, sum(counts) - d - c) if remask else 0 for c, d in zip(counts, done)]
        commit = [c + r for c, r in zip(counts, reopen)]
    noise_scale = 1.0 - torch.arange(n_steps, dtype=torch.float) / n_steps
    steps = torch.stack([torch.tensor(commit, dtype=torch.float), torch.tensor(reopen, dtype=torch.float),
                         noise_scale]).to(device)  # one copy to the device
    distinct = run_size = None
    if config.cache in ("sparse", "delayed"):
        distinct, run_size = sparse_run_sizes(counts, reopen, refresh, block.block_end - block.first,
                                              config.cache == "delayed", config.halo)
    return BlockPlan(block, counts, StepCounts(*steps), run_size, distinct)


# -----------------------------------------------------------------------------
# Generation

@torch.inference_mode()
def generate_steps(model, canvas, config=None, seed=0):
    """Denoise `canvas` and yield after every forward pass.

    canvas: (B, N) ids; positions equal to the mask id are generated, all others are kept
    verbatim (prompt, known text for infilling). Every row must have the same masked
    positions; row i draws the numbers a batch of one would with seed + i. Generation goes
    left to right in blocks (`plan_blocks`): config.block=B takes the next B columns from the
    first masked one (semi-autoregressive, as LLaDA and Fast-dLLM); None takes the whole
    window. The model sees a window of block_size columns around the block, keeping
    config.context_keep columns before it, so texts longer than the context need nothing else.

    Each step predicts every masked position of the block, draws a character for each
    (temperature 0 = argmax; top_k / top_p narrow the distribution), and commits some:
      - steps=S: a schedule (`commit_schedule`) per block; S is spread over the blocks by
        the square root of their masked counts (`split_steps`), so exactly S forward passes
        unmask the whole text (or one per block, if there are more blocks than S)
      - threshold=tau: all with confidence >= tau, and at least one per row.
    order: which to commit: "confidence", the most confident; "random" (MDLM's ancestral
    order); "noisy": log-confidence plus Gumbel noise whose scale falls from 1 to 0 (MaskGIT);
    "spread": a fixed order that keeps the positions of one step far apart (`spread_priority`);
    "l2r": the leftmost masked positions (steps = the masked count: one per pass, as the AR model).
    remask=rho (with steps): each step also re-opens round(rho * that step's count) of the
    block's written characters, the least likely, and commits as many more: the passes and
    the net progress stay as scheduled (ReMDM's confidence remasking). remask_by: what "least
    likely" means: "prob", the probability the character was drawn with; "ratio", that over
    the most likely character's there (a position with many good options, a speaker's name
    say, is not re-opened for it); "pmi", that over the model's prior for the character
    (`char_prior`), so a rare character (a capital, a colon) is not re-opened for being rare.
    cache (with block): "prefix" computes the keys/values left of the block once per block and
    runs each later step on the block and what follows it; "dual" caches the right side too and
    runs each step on the block alone (Fast-dLLM). Both rebuild the cache at each block start.
    "sparse" (order random, spread or l2r) needs no blocks: which positions a step writes does not
    depend on its predictions, so it chooses them first and runs the network only on them and
    on the positions changed since the last full pass, against cached keys/values for the
    rest; a full pass rebuilds the cache every `refresh` steps.
    precision: "bf16" or "fp32" for the forward passes; "auto" is bf16 where it is native.
    compile: a torch.compile mode for the whole step, forward pass and sampling together.
    Yields a denoise.StepRecord after every pass: canvas (B, N) after the step, committed (B, N)
    bool (written this step), reopened (B, N) bool (masked again this step), nfe, window (start,
    end), block (first, end). No config: sample.py's for this model (its checkpoint's setting).
    """
    config = config or SamplerConfig.from_options(getattr(model, "sampler_defaults", {}))
    return denoise_canvas(model, canvas, plan_generation(model, canvas, config, seed))


def generate(model, canvas, config=None, seed=0):
    """Run the sampler to the end. Returns (canvas, nfe): the written (B, N) ids and the forward
    passes it took. With config.cuda_graph (CUDA, with steps), the whole generation is one CUDA
    graph (`generate_graphed`). No config: sample.py's for this model (its checkpoint's setting)."""
    config = config or SamplerConfig.from_options(getattr(model, "sampler_defaults", {}))
    if config.cuda_graph:
        return generate_graphed(model, canvas, config, seed)
    last = last_step(generate_steps(model, canvas, config, seed))
    return (canvas, 0) if last is None else (last.canvas, last.nfe)


def last_step(steps):
    """The last StepRecord of a generation's steps (None if it has none)."""
    last = None
    for last in steps:
        pass
    return last


class CapturedGeneration(NamedTuple):
    """A generation captured as one CUDA graph: copy a canvas and a seed into its inputs, replay."""
    graph: object               # torch.cuda.CUDAGraph
    canvas_in: torch.Tensor
    seed_in: torch.Tensor
    plan: GenerationPlan        # its tensors live outside the graph's memory pool: they must outlive it
    canvas_out: torch.Tensor
    nfe: int


# model -> {(canvas shape, masked columns, config): CapturedGeneration}; a model's graphs go with it
GRAPHS = weakref.WeakKeyDictionary()


@torch.inference_mode()
def generate_graphed(model, canvas, config, seed=0):
    """The whole generation, every step of every block, captured once as one CUDA graph and
    replayed with this canvas and seed copied into its inputs, so the host launches one graph
    instead of a few dozen kernels per step (at batch 1 those launches take as long as the
    GPU's work). A graph is kept per model, canvas shape, masked columns and config; the first
    call for one also runs two warm-up generations (compilation with compile="default") and
    the capture."""
    if canvas.device.type != "cuda":
        raise ValueError(f"--cuda-graph needs a CUDA device, not {canvas.device.type}")
    masked_cols = tuple((canvas[0] == model.config.mask_id).nonzero().flatten().tolist())
    graphs = GRAPHS.setdefault(model, {})
    key = (tuple(canvas.shape), masked_cols, config)
    if key not in graphs:
        canvas_in, seed_in = canvas.clone(), torch.tensor(seed, device=canvas.device)
        plan = plan_generation(model, canvas_in, config, seed_in)  # the host's work, done before the capture
        graph, last = capture_graph(lambda: last_step(denoise_canvas(model, canvas_in, plan)), warmups=2)
        graphs[key] = CapturedGeneration(graph, canvas_in, seed_in, plan, last.canvas, last.nfe)
    captured = graphs[key]
    captured.canvas_in.copy_(canvas)
    captured.seed_in.fill_(seed)
    captured.graph.replay()
    return captured.canvas_out.clone(), captured.nfe


# -----------------------------------------------------------------------------
# The command line of the sampling scripts (sample.py, diffusion_process.py, bench.py --sample)

MAX_LENGTH = 100_000
SEED_RANGE = 2 ** 31  # seeds 0 .. 2**31 - 1: sample i of a batch uses seed + i, hashed as 32 bits


def add_sampling_flags(parser, cuda_graph=True):
    """The flags the sampling scripts share: what to sample from and what to write, and one flag
    per SamplerConfig field (the animation, which shows every step, goes without --cuda-graph)."""
    parser.add_argument("--ckpt", default=DEFAULT_SAMPLER_CKPT, help="checkpoint (default: weights/student16.pt, the "
                        "16-pass D-MMD student of weights/model.pt); its stored setting replaces the defaults below")
    parser.add_argument("--prompt", default="", help="text to start from; `_` marks characters to fill in, "
                                                     "`\\n` is a newline")
    parser.add_argument("--length", type=int, default=None,
                        help=f"total characters, prompt included, 1..{MAX_LENGTH} (default: 256 after the prompt, or the "
                             "prompt's length when it contains `_`); beyond the context the text is "
                             "written window by window")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"same seed, same text; 0..{SEED_RANGE - 1} (default: random)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    helps = SAMPLER_HELP if cuda_graph else {**SAMPLER_HELP, "cuda_graph": None}
    add_config_flags(parser, SamplerConfig, helps, SAMPLER_CHOICES, bare={"compile": "default"})


def sampling_seed(args):
    """The seed, after the sampling flags are checked by their own rules (before any checkpoint
    loads; load_for_sampling builds the config): every problem is one UserError."""
    if args.length is not None and not 1 <= args.length <= MAX_LENGTH:
        raise UserError(f"--length must be in 1..{MAX_LENGTH}, got {args.length}")
    seed = random.randrange(SEED_RANGE) if args.seed is None else args.seed
    if not 0 <= seed < SEED_RANGE:
        raise UserError(f"--seed must be in 0..{SEED_RANGE - 1}, got {seed}")
    try:
        SamplerConfig.from_options(**config_values(SamplerConfig, args))
    except ValueError as e:
        raise UserError(str(e)) from None
    return seed


def make_canvas(prompt, length, chars, num_samples, device):
    """The starting state: prompt characters, `_` and the continuation as masks. length: total
    characters (None: 256 after the prompt, or the prompt's own length if it has a `_`)."""
    prompt = prompt.replace("\\n", "\n")
    ids = encode(prompt, chars, allow_mask=True)
    if length is None:
        length = len(ids) if MASK_GLYPH in prompt else len(ids) + 256
    if length > MAX_LENGTH:
        raise UserError(f"the text would have {length:,} characters, more than {MAX_LENGTH:,} (--length, --prompt)")
    if length < len(ids):
        raise UserError(f"--length {length} is shorter than the prompt ({len(ids)} characters)")
    mask_id = mask_id_of(chars)
    ids = ids + [mask_id] * (length - len(ids))
    if mask_id not in ids:
        raise UserError("nothing to generate: the prompt has no `_` and --length adds no characters")
    return torch.tensor([ids] * num_samples, dtype=torch.long, device=device)


def load_for_sampling(args):
    """(device, diffusion model, vocabulary, config) for the sampling CLIs; the config: the defaults,
    then the checkpoint's setting (model.sampler_defaults: a student's measured one), then the flags."""
    device = pick_device(args.device)
    if getattr(args, "cuda_graph", None) and device.type != "cuda":  # the animation has no --cuda-graph
        raise UserError(f"--cuda-graph needs a CUDA device; this run is on {device.type}")
    model, chars, _ = load_model_of_kind(args.ckpt, device, causal=False)
    try:
        config = SamplerConfig.from_options(model.sampler_defaults, **config_values(SamplerConfig, args))
        check_for_model(model, config)
    except ValueError as e:
        raise UserError(f"{shown(args.ckpt)}: {e}") from None
    check_copula_vocabulary(model, config, chars)  # what generate cannot: it has no vocabulary
    return device, model, chars, config

