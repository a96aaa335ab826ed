"""
The device side of the diffusion sampler: everything that runs once the host has planned a
generation (sampler.plan_generation), and nothing that waits on the host. Its steps only queue
device work, which is what lets sampler.generate capture a whole generation as one CUDA graph
and torch.compile capture one step whole.

Read top to bottom: the random numbers (a counter-based hash, so a row's numbers depend on its
seed alone), drawing characters, choosing which to commit, one step (`denoise_step`, a pure
function of tensors), the key/value caches (one small class per --cache kind, in CACHES), and
the loops over a block's steps and over the blocks (`denoise_canvas`).
"""

import math
import warnings
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from devices import autocast, sampling_precision
from diffusion import block_causal_mask, lowest
from model import KVCache


# -----------------------------------------------------------------------------
# Random numbers

class Noise:
    """The sampler's random numbers: a counter-based generator (a 32-bit integer hash of seed,
    draw and position), so row i of a batch gets the numbers of a batch of one with seed + i,
    CPU and GPU draw the same numbers, and a draw for the whole batch is a few elementwise ops
    (no per-row generator, no host round trip, nothing that stops torch.compile)."""

    def __init__(self, seed, batch, device):
        # seed: an int, or a 0-dim long tensor on `device` (a CUDA graph's input, see sampler.generate)
        self.rows = mix32((torch.arange(batch, device=device, dtype=torch.long) + seed) & 0xFFFFFFFF)
        self.draws = 0

    def keys(self, n):
        """(n, batch) keys for the next n draws; `uniform(keys[i], ...)` turns one into numbers."""
        draws = torch.arange(self.draws + 1, self.draws + n + 1, device=self.rows.device)
        self.draws += n
        return mix32(self.rows[None, :] ^ draws[:, None])

    def uniform(self, n):
        """(batch, n) uniforms in [0, 1) from a new draw."""
        return uniform(self.keys(1)[0], n)


def uniform(keys, n, stream=0):
    """(batch, n) uniforms in [0, 1), 24 bits each, from (batch,) keys; streams 0..255 of one key
    are independent."""
    index = torch.arange(n, device=keys.device, dtype=torch.long) | (stream << 24)
    return (mix32(keys[:, None] ^ index) >> 8).float() / 2 ** 24


def gaussian(keys, n, dim, stream=2):
    """(batch, n, dim) N(0, 1) numbers from (batch,) keys (Box-Muller on streams `stream` and
    `stream` + 1): a D-MMD student's noise input, drawn as the sampler draws everything else."""
    u1, u2 = uniform(keys, n * dim, stream), uniform(keys, n * dim, stream + 1)
    z = (-2 * torch.log(u1.clamp_min(2 ** -25))).sqrt() * torch.cos(2 * math.pi * u2)
    return z.view(-1, n, dim)


def mix32(x):
    """A 32-bit integer hash (Mueller's; every output bit depends on every input bit) on int64
    tensors holding values below 2**32; the constant is below 2**31, so nothing overflows."""
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return x ^ (x >> 16)


# -----------------------------------------------------------------------------
# Drawing characters, and choosing which to commit

def draw_characters(logits, temperature, top_k, top_p, u):
    """Draw one character per position (u: one uniform per position) and return (chars, confidence).

    The confidence is the probability of the drawn character under the distribution it was
    drawn from (at temperature 0: the largest probability of the model's distribution).
    top_k keeps the k most likely characters, top_p the smallest set whose probability
    reaches p (nucleus sampling)."""
    logits = logits.float()
    if temperature == 0:
        probs = logits.softmax(-1)
        conf, chars = probs.max(-1)
        return chars, conf
    logits = logits / max(temperature, 1e-30)  # 1e-300 would be 0 in float32: tend to greedy, not NaN
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        outside[..., 0] = False  # the most likely is always kept (top_p 1e-300 is 0 in float32)
        logits = logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    probs = logits.softmax(-1)
    # inverse CDF: one uniform per position
    cdf = probs.cumsum(-1)
    chars = (cdf <= u[..., None] * cdf[..., -1:]).sum(-1).clamp(max=probs.size(-1) - 1)
    return chars, probs.gather(-1, chars[..., None]).squeeze(-1)


def commit_positions(conf, still_masked, count, threshold):
    """Which still-masked positions to write: the `count` highest `conf`, or (threshold) all with
    conf >= threshold and at least the best one in every row that has a mask left."""
    conf = conf.masked_fill(~still_masked, float("-inf"))  # never re-commit
    if threshold is None:
        commit = lowest(-conf, count)
    else:
        commit = conf >= threshold
        best = F.one_hot(conf.argmax(1), conf.size(1)).bool()
        commit |= best & still_masked.any(1, keepdim=True)
    return commit & still_masked


def choose_commits(prob, still_masked, counts, keys, config, priority):
    """(B, n) bool: the positions a step writes. Orders random, spread and l2r do not look at
    `prob`: the sparse cache chooses before the pass."""
    u = uniform(keys, still_masked.size(1), stream=1)
    rank = rank_for_commit(prob, config.order, counts.noise_scale, u, priority)
    return commit_positions(rank, still_masked, counts.commit, config.threshold)


def rank_for_commit(conf, order, noise_scale, u, priority=None):
    """The score that decides which masked positions are written first (u: uniforms;
    priority: the fixed ranks of order "spread", `spread_priority`)."""
    if order == "random":  # MDLM's ancestral order: which positions to commit is chance
        return u
    if order == "spread":
        return priority
    if order == "l2r":  # the leftmost masked positions first
        return -torch.arange(u.size(1), device=u.device, dtype=u.dtype).expand_as(u)
    if order == "noisy":  # MaskGIT: Gumbel noise on log-confidence, annealed to zero
        return conf.clamp_min(1e-9).log() - noise_scale * torch.log(-torch.log(u.clamp_min(2 ** -25)))
    return conf


def spread_priority(n, offset):
    """(B, n) ranks for order "spread" (dilated scheduling, as DUS): position j of the block ranks
    by the bit-reversal of (j + offset) mod n, so the positions written in one step lie far
    apart (0, n/2, n/4, 3n/4, ...) and the last ones sit between neighbours already written.
    offset: (B,) ints, a rotation per row, fixed for the whole block."""
    bits = max(1, (n - 1).bit_length())
    j = (torch.arange(n, device=offset.device) + offset[:, None]) % n
    reversed_j = torch.zeros_like(j)
    for b in range(bits):
        reversed_j |= ((j >> b) & 1) << (bits - 1 - b)
    return -reversed_j.float()  # commit_positions writes the highest first


def block_priority(order, noise, n):
    """The fixed ranks a block of n positions is written in (order "spread", one rotation per row
    from a draw of its own), None for the other orders."""
    if order != "spread":
        return None
    return spread_priority(n, (noise.uniform(1)[:, 0] * n).long())


def char_prior(model, precision="auto"):
    """(vocab_size - 1,) the model's prior over characters: its prediction with every position
    masked, averaged over a window (its unigram belief, close to the training text's). One
    forward pass, made once per model, device and precision and kept on the model (a plain
    attribute: a model moved to another device, or copied there, computes its own)."""
    device = next(model.parameters()).device
    key = (str(device), sampling_precision(precision, device))
    priors = model.__dict__.setdefault("char_priors", {})
    if key not in priors:
        # a block model's first block, all masks: what it saw in training (it never saw the window)
        x = torch.full((1, model.config.block_len or model.config.block_size), model.config.mask_id, device=device)
        extra = {}
        if getattr(model.config, "noise_dim", 0):  # a D-MMD student: fixed noise (key 0), one prior every run
            key0 = torch.zeros(1, dtype=torch.long, device=device)
            extra["noise"] = gaussian(key0, x.size(1), model.config.noise_dim)
        with torch.inference_mode(), autocast(device, key[1]):
            priors[key] = model(x, **extra).float().softmax(-1).mean(1)[0]
    return priors[key]


# -----------------------------------------------------------------------------
# One step: a forward pass and what it writes

class Pass(NamedTuple):
    """What one forward pass runs on: ids `x` placed at `at` in the window (an int, or (B, n)
    positions for a sparse pass), against `cache`; the block is columns [lo, hi) of its output
    (of the window, for a sparse pass). mask: the attention mask (a block model's uncached pass)."""
    x: torch.Tensor
    cache: Optional[KVCache]
    at: object
    lo: int
    hi: int
    mask: Optional[torch.Tensor] = None


class StepState(NamedTuple):
    """What a step reads about its block, besides the forward pass."""
    region: torch.Tensor       # (B, n) the block's ids now
    generated: torch.Tensor    # (B, n) bool: the block's positions to write (masked at its start)
    commit_prob: torch.Tensor  # (B, n) the written characters' scores, what re-opening ranks by
    keys: torch.Tensor         # (B,) this step's random key (`Noise.keys`)
    counts: object             # this step's sampler.StepCounts (0-dim tensors)
    priority: Optional[torch.Tensor] = None  # order spread: `block_priority`


class StepResult(NamedTuple):
    """What a step returns: the block's new ids, the written and re-opened masks, the scores of
    the written characters, and the block's logits (distill.py's teacher reads them)."""
    region: torch.Tensor
    commit: torch.Tensor
    reopened: torch.Tensor
    commit_prob: torch.Tensor
    logits: torch.Tensor


def denoise_step(model, run, state, config, prior=None):
    """One forward pass and what it writes, a pure function of tensors (torch.compile captures
    it whole, CUDA graphs included). run: a Pass; state: a StepState; prior: `char_prior`
    (remask_by pmi). Returns a StepResult."""
    extra = {} if run.mask is None else {"attn_mask": run.mask}  # a block model's uncached pass
    if getattr(model.config, "noise_dim", 0):  # a D-MMD student's noise input, from this step's key
        extra["noise"] = gaussian(state.keys, run.x.size(1), model.config.noise_dim)
    logits = model(run.x, cache=run.cache, start=run.at, **extra)
    region, mask_id = state.region, model.config.mask_id
    if torch.is_tensor(run.at):  # a sparse pass: back to block columns (the others are not written)
        logits = logits.new_zeros(region.shape + logits.shape[2:]).scatter(
            1, (run.at - run.lo)[..., None].expand_as(logits), logits)
    else:
        logits = logits[:, run.lo:run.hi]
    u = uniform(state.keys, region.size(1), stream=0)
    chars, prob = draw_characters(logits, config.temperature, config.top_k, config.top_p, u)
    still_masked = region == mask_id
    commit = choose_commits(prob, still_masked, state.counts, state.keys, config, state.priority)
    written = state.generated & ~still_masked
    reopened = lowest(state.commit_prob.masked_fill(~written, float("inf")), state.counts.reopen)  # least likely
    new = torch.where(commit, chars, region).masked_fill(reopened, mask_id)
    score = remask_score(logits, chars, prob, config, prior)
    return StepResult(new, commit, reopened, torch.where(commit, score, state.commit_prob), logits)


def remask_score(logits, chars, prob, config, prior):
    """How likely each drawn character counts for re-opening (config.remask_by): prob, the
    probability it was drawn with; pmi, that over the model's prior for it; ratio, that over the
    best character's."""
    if config.remask_by == "pmi":  # p(drawn | context) / p(drawn): how much the context backs it
        return prob / prior[chars]
    if config.remask_by == "ratio" and config.temperature > 0:  # p(drawn) / p(best), unchanged by top-k/top-p
        logits = logits.float()
        return ((logits.gather(-1, chars[..., None]).squeeze(-1) - logits.amax(-1)) / config.temperature).exp()
    return prob


COMPILED_STEPS = {}


def compiled_step(mode):
    """denoise_step under torch.compile (one compiled function per mode, made once). dynamic=False:
    one specialised graph per pass shape. A cached generation has a few (the cache's filling pass;
    the sparse cache's pass sizes, padded to `sparse_pass_size`'s buckets) per batch size and
    setting: a sweep in one process can pass dynamo's default of 8 recompiles, so the limit is
    raised to 64 (named cache_size_limit before PyTorch 2.6), and a step past it says so
    (`loud_at_recompile_limit`)."""
    if mode not in COMPILED_STEPS:
        dynamo = torch._dynamo.config
        limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
        setattr(dynamo, limit, max(getattr(dynamo, limit), 64))
        COMPILED_STEPS[mode] = loud_at_recompile_limit(torch.compile(denoise_step, mode=mode, dynamic=False),
                                                       denoise_step)
    return COMPILED_STEPS[mode]


def loud_at_recompile_limit(compiled, eager):
    """compiled, except that the first call past dynamo's recompile limit warns (RuntimeWarning)
    and runs eager. Left alone, dynamo logs one line and runs every later new shape eager: a
    compiled sweep then times eager steps without a word in its table (2026-12-03). After the
    warning, dynamo's own fallback runs (the timings are no longer compiled figures: said once).
    PyTorch without fail_on_recompile_limit_hit (before 2.5): dynamo's log line only."""
    dynamo = torch._dynamo.config
    flag = next((f for f in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit") if hasattr(dynamo, f)), None)
    hit = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", None)
    if flag is None or hit is None:
        return compiled
    warned = []

    def step(*args, **kwargs):
        if warned:
            return compiled(*args, **kwargs)
        before = getattr(dynamo, flag)
        setattr(dynamo, flag, True)  # for this call only: other compiled functions keep dynamo's rule
        try:
            return compiled(*args, **kwargs)
        except hit:  # raised before the step ran (dynamo checks the limit before compiling a frame)
            limit = getattr(dynamo, "recompile_limit", None) or getattr(dynamo, "cache_size_limit", "?")
            warnings.warn(f"torch.compile reached dynamo's recompile limit ({limit} graphs of "
                          f"{getattr(eager, '__name__', 'the step')}): steps of a new shape now run eager, so "
                          "later timings are not compiled figures (fewer shapes per process, or raise "
                          "torch._dynamo.config.recompile_limit)", RuntimeWarning, stacklevel=2)
            warned.append(True)
            return eager(*args, **kwargs)
        finally:
            setattr(dynamo, flag, before)
    return step


# -----------------------------------------------------------------------------
# The caches: what each pass runs on. One class per --cache kind, made once per generation;
# `begin` at every block, `pass_for` before every step, `passed` after its forward pass.

class NoCache:
    """--cache none: every pass runs on the whole window (a block model's under its block-causal
    mask, so it sees what it saw in training)."""

    def __init__(self, model, plan):
        self.model, self.plan = model, plan

    def begin(self, canvas, block_plan):
        """Before a block's first step (block_plan: sampler.BlockPlan)."""
        self.canvas, self.block_plan = canvas, block_plan
        b, L = block_plan.block, self.model.config.block_len
        self.mask = block_causal_mask(b.end - b.start, L, canvas.device) if L else None

    def window_pass(self, kv=None, mask=None):
        """A pass over the whole window (filling kv, if it is an empty cache)."""
        b = self.block_plan.block
        return Pass(self.canvas[:, b.start:b.end], kv, 0, b.first - b.start, b.block_end - b.start, mask)

    def block_pass(self, kv, run_end):
        """A pass on canvas columns [first, run_end), the block first, against the cached kv."""
        b = self.block_plan.block
        return Pass(self.canvas[:, b.first:run_end], kv, b.first - b.start, 0, b.block_end - b.first)

    def pass_for(self, step, state):
        """The Pass that step number `step` of the block runs (state: its StepState)."""
        return self.window_pass(mask=self.mask)

    def passed(self):
        """After each forward pass."""


class PrefixCache(NoCache):
    """--cache prefix: a block's first pass runs on the whole window and keeps its keys/values;
    the later ones run on the block and what follows it, the left side read from the cache."""

    def begin(self, canvas, block_plan):
        self.canvas, self.block_plan = canvas, block_plan
        self.kv, self.filling = KVCache(), False

    def run_end(self):
        return self.block_plan.block.end

    def pass_for(self, step, state):
        if self.kv:
            return self.block_pass(self.kv, self.run_end())
        self.filling = True
        return self.window_pass(self.kv)

    def passed(self):
        if self.filling:  # the pass's outputs may be overwritten (CUDA graphs): keep copies
            self.kv.own()
            self.filling = False


class DualCache(PrefixCache):
    """--cache dual (Fast-dLLM): as prefix, with the right side cached too: each later pass runs
    on the block alone."""

    def run_end(self):
        return self.block_plan.block.block_end


class SparseCache(PrefixCache):
    """--cache sparse (orders random, spread, l2r): which positions a step writes does not depend
    on its pass, so it chooses them first and runs the network only on them and on those changed
    since the last full pass; a full pass rebuilds the cache every config.refresh steps."""
    keep = False  # the cache holds the last full pass's keys/values until the next

    def pass_for(self, step, state):
        if step % self.plan.config.refresh == 0:
            self.kv, self.seen = KVCache(keep=self.keep), state.region.clone()
        if not self.kv:
            self.filling = True
            return self.window_pass(self.kv)
        region = state.region
        run = choose_commits(None, region == self.model.config.mask_id, state.counts, state.keys,
                             self.plan.config, state.priority)
        run |= self.near(region != self.seen)  # changed since the cache saw them
        if self.keep:
            self.seen = region.clone()
        # those first, then spare positions up to the bound (a fixed size for every row)
        n, size = self.block_plan.run_distinct[step], self.block_plan.run_size[step]
        positions = (~run).float().argsort(dim=1, stable=True)[:, :n]
        if size > n:  # padded to its bucket with the last position again: same id, same keys/values, same result
            positions = torch.cat([positions, positions[:, -1:].expand(-1, size - n)], dim=1)
        lo = self.block_plan.block.first - self.block_plan.block.start
        return Pass(region.gather(1, positions), self.kv, positions + lo, lo, lo + region.size(1))

    def near(self, changed):
        """changed (B, W) widened by config.halo positions each side: a stored key/value goes stale
        first where the text next to it changed (a character model attends mostly nearby)."""
        h = self.plan.config.halo
        return F.max_pool1d(changed.float().unsqueeze(1), 2 * h + 1, 1, h).squeeze(1) > 0 if h else changed


class DelayedCache(SparseCache):
    """--cache delayed (dKV-Cache's delayed caching, Ma et al. 2025): as sparse, but each pass
    writes the keys/values it computed into the cache, so a changed position runs once, in the
    step after it changed, not in every step up to the next full pass."""
    keep = True


def sparse_pass_size(n, width):
    """The size a sparse pass on n positions runs on: n padded to 8, 16 or a multiple of 32, at most
    the block's width. A generation then has a handful of pass shapes, so torch.compile makes a
    handful of graphs (one per shape) where the exact sizes made one almost every step."""
    return min(width, next((b for b in (8, 16) if n <= b), -(-n // 32) * 32))


def sparse_run_sizes(counts, reopen, refresh, width, delayed=False, halo=0):
    """(distinct, padded) per step of a block: at most `distinct` positions change or are written
    before a sparse pass ((written now | changed since the cache saw them: since the refresh, or,
    delayed, in the step before; with a halo, each of those and `halo` each side) is at most this;
    the spare ones up to it get fresh keys/values too, which measured no worse), and the pass runs
    on `sparse_pass_size` of that (the padding repeats a position: nothing changes)."""
    changes = [c + 2 * r for c, r in zip(counts, reopen)]  # written, and re-opened ones twice
    since = [max(i - i % refresh, i - 1) if delayed else i - i % refresh for i in range(len(counts))]
    distinct = [min(width, changes[i] + (2 * halo + 1) * sum(changes[since[i]:i])) for i in range(len(counts))]
    return distinct, [sparse_pass_size(n, width) for n in distinct]


class ExactCache(NoCache):
    """--cache exact (block models): the window's clean columns, each block's keys/values computed
    once, under the block-causal mask, when a later block first needs them. A clean block's
    keys/values depend on it and the blocks before it only, so they never go stale; a new window
    (the text slid on) starts a new cache. Each step runs on the block alone."""

    def __init__(self, model, plan):
        super().__init__(model, plan)
        self.start, self.upto, self.kv = None, None, None

    def begin(self, canvas, block_plan):
        self.canvas, self.block_plan = canvas, block_plan
        b = block_plan.block
        if self.start != b.start:
            self.start, self.upto, self.kv = b.start, b.start, KVCache()
        if self.upto < b.first:  # encode the clean columns [upto, first), appending them to the cache
            a, z = self.upto - b.start, b.first - b.start
            mask = block_causal_mask(z, self.model.config.block_len, canvas.device)[a:]
            self.kv.keep = True
            with autocast(canvas.device, self.plan.precision):
                self.model(canvas[:, self.upto:b.first], cache=self.kv, start=a, attn_mask=mask)
            self.kv.keep = False
            self.upto = b.first

    def pass_for(self, step, state):  # no cache yet at a window's first block: it sees only itself
        return self.block_pass(self.kv or None, self.block_plan.block.block_end)


CACHES = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache, "sparse": SparseCache, "delayed": DelayedCache,
          "exact": ExactCache}


# -----------------------------------------------------------------------------
# The loops: a block's steps, and the blocks

class StepRecord(NamedTuple):
    """What the samplers yield after every forward pass (sampler.generate_steps; the AR baseline's
    ar_sampler.generate_ar_steps too). The tensors are the sampler's own, valid until the next
    step: copy them to keep them."""
    canvas: torch.Tensor     # (B, N) after the step
    committed: torch.Tensor  # (B, N) bool: written this step
    reopened: torch.Tensor   # (B, N) bool: masked again this step
    nfe: int                 # forward passes so far
    window: tuple            # (start, end): the canvas columns the model saw
    block: tuple             # (first, end): the canvas columns being written


@torch.inference_mode()
def denoise_canvas(model, canvas, plan):
    """Denoise a copy of canvas block by block (plan: sampler.plan_generation's) and yield a
    StepRecord after every forward pass."""
    B, N = canvas.shape
    canvas = canvas.clone()
    noise = Noise(plan.seed, B, canvas.device)
    cache = CACHES[plan.config.cache](model, plan)
    nfe = 0
    for block_plan in plan.blocks:
        start, end, first, block_end, _ = block_plan.block
        for commit, reopened in denoise_block(model, canvas, block_plan, plan, noise, cache):
            nfe += 1
            widen = (first, N - block_end)  # block columns -> canvas columns (a copy: see denoise_block)
            yield StepRecord(canvas, F.pad(commit, widen), F.pad(reopened, widen), nfe, (start, end), (first, block_end))


def denoise_block(model, canvas, block_plan, plan, noise, cache):
    """Fill the masks of canvas[:, first:block_end] in place, the model seeing canvas[:, start:end]
    (or, cached, what `cache` says). Yields (written, re-opened) masks over the block after every
    forward pass. The host decided the counts in advance; everything per step runs in
    `plan.step_fn`."""
    b, mask_id = block_plan.block, model.config.mask_id
    cache.begin(canvas, block_plan)
    region = canvas[:, b.first:b.block_end]
    generated = region == mask_id  # the block's positions to write
    commit_prob = torch.zeros(generated.shape, device=canvas.device)  # what re-opening ranks by (remask_by)
    n_steps = block_plan.steps.n_steps
    keys = noise.keys(n_steps)
    priority = block_priority(plan.config.order, noise, b.block_end - b.first)
    for step in range(n_steps):
        if block_plan.counts is None and not (region == mask_id).any():  # threshold: the block is written
            return
        state = StepState(region, generated, commit_prob, keys[step], block_plan.steps.at(step), priority)
        with autocast(canvas.device, plan.precision):
            out = plan.step_fn(model, cache.pass_for(step, state), state, plan.config, plan.prior)
        cache.passed()
        if plan.copula is not None:  # the committed characters drawn jointly instead (copula.py)
            out = plan.copula.redraw(canvas, b, state, out, plan)
        region.copy_(out.region)
        commit_prob = out.commit_prob.clone()  # under CUDA graphs the next replay overwrites outputs
        yield out.commit, out.reopened  # valid until the next step: copy them to keep them
