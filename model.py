"""
tiny-diffusion: a character-level masked (absorbing-state) diffusion language model.

This file owns everything the other scripts share:
- the network, a nanochat-style transformer:
  - bidirectional attention (causal only for the autoregressive baseline)
  - rotary position embeddings, no learned positions
  - QK-norm (queries and keys RMS-normalised before attention)
  - parameter-free RMSNorm everywhere, no biases anywhere
  - ReLU² MLP
  - untied input embedding and output head
  - no time/noise-level input: the mask ratio is visible in the input (MDLM, Sahoo et al. 2024)
- the forward (masking) process used in training and evaluation
- the one sampler: parallel unmasking (fixed steps or a confidence threshold; the order by
  confidence, at random, in between, or spread out by position), with prompts, infilling,
  remasking, block-wise decoding with a key/value cache (or a sparse one without blocks),
  windowed generation of texts longer than the context, one step that torch.compile can
  capture whole, and on CUDA the whole generation as one CUDA graph
- the vocabulary, the checkpoint format, and device selection
"""

import argparse
import glob
import hashlib
import inspect
import math
import os
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

MASK_GLYPH = "_"  # how a masked position is written in prompts and shown on screen
CHECKPOINT_FORMAT = "tiny-diffusion/1"


class UserError(Exception):
    """A problem with the user's input: the CLIs print it as one line and exit non-zero."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# -----------------------------------------------------------------------------
# The network

@dataclass
class ModelConfig:
    vocab_size: int = 66    # characters of the data + 1 mask symbol (the last id)
    block_size: int = 256   # context length in characters
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0        # on the output of every attention and MLP branch
    attn_dropout: float = 0.0   # on the attention probabilities (nanoGPT has all three)
    embd_dropout: float = 0.0   # on the normalised input embedding
    logit_softcap: float = 0.0  # if > 0, logits = cap * tanh(logits / cap) (nanochat uses 15)
    causal: bool = False        # True only for the autoregressive baseline

    @property
    def mask_id(self):
        return self.vocab_size - 1


def norm(x):
    # parameter-free RMSNorm
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class KVCache:
    """Keys and values of every layer for one window (Fast-dLLM's cache). The first forward pass
    with an empty cache runs on the whole window and stores them; later passes run only on the
    positions [start, start + n) (or a list of positions per row) and attend to their own fresh
    keys/values there and to the stored ones everywhere else. The stored ones go stale as the
    fresh positions change (the attention is bidirectional): rebuild the cache once per block,
    or every few steps (the sparse cache)."""

    def __init__(self):
        self.layers = {}

    def __bool__(self):
        return bool(self.layers)

    def own(self):
        """Copy the stored tensors into memory of our own: under CUDA graphs (torch.compile's
        reduce-overhead mode) a pass's outputs are overwritten by the next replay."""
        self.layers = {i: (k.clone(), v.clone()) for i, (k, v) in self.layers.items()}


class Attention(nn.Module):
    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.causal = config.causal
        self.attn_dropout = config.attn_dropout
        self.c_qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin, cache=None, start=0):
        B, T, C = x.shape
        q, k, v = self.c_qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm keeps attention logits bounded without a softcap
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if cache is not None:
            stored = cache.layers.get(self.layer_idx)
            if stored is None:  # a full pass: remember the window's keys and values
                cache.layers[self.layer_idx] = (k, v)
            elif torch.is_tensor(start):  # scattered positions (B, T): fresh there, stored elsewhere
                at = start[:, None, :, None].expand(-1, k.size(1), -1, k.size(3))
                k, v = (old.scatter(2, at, new) for old, new in zip(stored, (k, v)))
            else:  # fresh keys/values for our positions, the stored ones elsewhere
                k, v = (torch.cat([old[:, :, :start], new, old[:, :, start + T:]], dim=2)
                        for old, new in zip(stored, (k, v)))
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, cache=None, start=0):
        x = x + self.dropout(self.attn(norm(x), cos, sin, cache, start))
        x = x + self.dropout(self.mlp(norm(x)))
        return x


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.embd_dropout = nn.Dropout(config.embd_dropout)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        # the head never predicts the mask symbol: it is not a character
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size - 1, bias=False)
        head_dim = config.n_embd // config.n_head
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(config.block_size).float(), inv_freq)
        # (1, T, 1, D/2) so it broadcasts over batch and heads; not saved in checkpoints
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.init.normal_(self.wte.weight, std=1.0)
        torch.nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_qkv, block.mlp.c_fc):
                bound = math.sqrt(3.0 / lin.in_features)  # uniform with std 1/sqrt(fan_in)
                torch.nn.init.uniform_(lin.weight, -bound, bound)
            # zero output projections: every block starts as the identity
            torch.nn.init.zeros_(block.attn.c_proj.weight)
            torch.nn.init.zeros_(block.mlp.c_proj.weight)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, cache=None, start=0):
        """idx: (B, T) token ids, T <= block_size. Returns logits (B, T, vocab_size - 1).
        cache (a KVCache, sampling only): empty, this pass fills it from the whole window; filled,
        idx holds only the window's positions start .. start + T - 1 (see KVCache), or, if start
        is a (B, T) tensor, the positions it lists (distinct in each row)."""
        T = idx.size(1)
        if torch.is_tensor(start):
            if not cache:
                raise ValueError("positions need a filled KVCache")
            cos, sin = self.cos[0, start], self.sin[0, start]  # (B, T, 1, D/2)
        else:
            if start + T > self.config.block_size:
                raise ValueError(f"positions up to {start + T} exceed block_size {self.config.block_size}")
            if start and not cache:
                raise ValueError("start > 0 needs a filled KVCache")
            cos, sin = self.cos[:, start:start + T], self.sin[:, start:start + T]
        x = self.embd_dropout(norm(self.wte(idx)))
        for block in self.blocks:
            x = block(x, cos, sin, cache, start)
        logits = self.lm_head(norm(x))
        if self.config.logit_softcap > 0:  # bounds the logits: no overconfident characters
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits.float() / cap)
        return logits


# -----------------------------------------------------------------------------
# Forward process: absorbing ("masked") diffusion, linear schedule.
#
# At noise level t every generated position is replaced by MASK with probability t. The
# continuous-time negative ELBO per character equals
#     E_{k ~ Uniform{1..L}} [ mean over k uniformly chosen masked positions of -log p(x_i | x_t) ]
# (integrate t out: k ~ Binomial(L, t) with t ~ U(0,1) is uniform on {0..L}). We train and
# evaluate on exactly this form: it has lower variance than 1/t-weighting at the same
# expectation, and every sequence gets equal weight.

def lowest(score, count):
    """(B, n) bool: the `count` positions of each row with the lowest score (count may be a
    tensor: no data-dependent shapes, so this compiles into one graph)."""
    return score.argsort(dim=1, stable=True).argsort(dim=1) < count


def draw_masks(B, T, num_clean, u, generator=None, device=None, span=None):
    """Masks for B sequences of length T.

    num_clean: (B,) clean prefix length per row (never masked); span: (B,) how many positions
    after the prefix may be masked (default: all the rest); u: (B,) in [0, 1), which sets how
    many of those n positions are masked: k = 1 + floor(u * n).
    Returns (masked (B, T) bool, k (B,) long)."""
    n = T - num_clean if span is None else span
    k = 1 + (u * n).long().clamp(max=n - 1)
    scores = torch.rand(B, T, generator=generator, device=device)
    positions = torch.arange(T, device=device)
    outside = (positions[None, :] < num_clean[:, None]) | (positions[None, :] >= (num_clean + n)[:, None])
    scores = scores.masked_fill(outside, 2.0)  # prefix (and anything past the span) never chosen
    return lowest(scores, k[:, None]), k  # k positions in a random order


def training_block_lengths(T):
    """Block lengths that block-shaped training masks draw from: 8, 16, ... up to T / 2."""
    return [2 ** i for i in range(3, 16) if 2 ** i <= T // 2] or [max(1, T // 2)]


def training_masks(x, prefix_prob, generator=None, block_prob=0.0):
    """Masks for a training batch, stratified in k over the batch. Each row is one of:
    - random (the default): k ~ U{1..T} positions masked anywhere;
    - prefix (prefix_prob): a clean prefix of random length, the rest masked at random, so the
      model learns to continue prompts;
    - block (block_prob): what block-wise decoding (sample.py --block) shows the model: a clean
      prefix, a block of random length with k ~ U{1..block} masks, and everything after it
      masked. Only the block is scored (its conditional NELBO given the prefix).
    Returns (hidden: positions replaced by MASK, scored: positions in the loss, k: scored count)."""
    B, T = x.shape
    dev = x.device
    u = (torch.arange(B, device=dev) + torch.rand(B, generator=generator, device=dev)) / B
    u = u[torch.randperm(B, generator=generator, device=dev)]
    kind = torch.rand(B, generator=generator, device=dev)
    is_block = kind < block_prob
    has_prefix = (kind >= block_prob) & (kind < block_prob + prefix_prob)
    lengths = torch.tensor(training_block_lengths(T), device=dev)
    block_len = lengths[torch.randint(len(lengths), (B,), generator=generator, device=dev)]
    block_start = (torch.rand(B, generator=generator, device=dev) * (T - block_len + 1)).long()
    prefix_len = torch.randint(1, T, (B,), generator=generator, device=dev)
    num_clean = torch.where(is_block, block_start, torch.where(has_prefix, prefix_len, torch.zeros_like(prefix_len)))
    span = torch.where(is_block, block_len, T - num_clean)
    scored, k = draw_masks(B, T, num_clean, u, generator=generator, device=dev, span=span)
    after_block = torch.arange(T, device=dev)[None, :] >= (num_clean + span)[:, None]
    return scored | after_block, scored, k


def masked_nll_per_sequence(logits, x, masked, k):
    """Mean cross-entropy over the masked positions of each sequence: (B,)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view(x.shape)
    return (ce * masked).sum(dim=1) / k


def diffusion_loss(model, x, mask_id, prefix_prob=0.0, generator=None, block_prob=0.0):
    """Negative ELBO in nats/char (the training objective, see the block comment above).
    `model` may be wrapped (compiled, DDP), so the mask id is passed in."""
    hidden, scored, k = training_masks(x, prefix_prob, generator, block_prob)
    return masked_nll_per_sequence(model(x.masked_fill(hidden, mask_id)), x, scored, k).mean()


def autoregressive_loss(model, x):
    """Next-character cross-entropy (the AR baseline): x is (B, T + 1)."""
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())


# -----------------------------------------------------------------------------
# The sampler: confidence-ordered parallel unmasking

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


class Noise:
    """The sampler's random numbers: a counter-based generator (a 32-bit integer hash of seed,
    draw and position), so row i of a batch gets the numbers of a batch of one with seed + i,
    CPU and GPU draw the same numbers, and a draw for the whole batch is a few elementwise ops
    (no per-row generator, no host round trip, nothing that stops torch.compile)."""

    def __init__(self, seed, batch, device):
        # seed: an int, or a 0-dim long tensor on `device` (a CUDA graph's input, see generate)
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


def mix32(x):
    """A 32-bit integer hash (Mueller's; every output bit depends on every input bit) on int64
    tensors holding values below 2**32; the constant is below 2**31, so nothing overflows."""
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return x ^ (x >> 16)


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
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # the most likely is always kept
        logits = logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    probs = logits.softmax(-1)
    # inverse CDF: one uniform per position
    cdf = probs.cumsum(-1)
    chars = (cdf <= u[..., None] * cdf[..., -1:]).sum(-1).clamp(max=probs.size(-1) - 1)
    return chars, probs.gather(-1, chars[..., None]).squeeze(-1)


ORDERS = ("confidence", "random", "noisy", "spread")
CACHES = ("none", "prefix", "dual", "sparse")
REMASK_BY = ("prob", "ratio", "pmi")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")


def check_sampler_options(steps=None, threshold=None, order="confidence", remask=0.0, temperature=1.0,
                          top_k=None, top_p=None, block=None, cache="none", schedule="linear", compile=None,
                          remask_by="prob", refresh=8, cuda_graph=False):
    """Every rule of the sampler's options, in one place: generate_steps and the CLIs call it.
    Raises ValueError with a message that names the option as the CLIs spell it."""
    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)
    if steps is not None and threshold is not None:
        raise ValueError("give --steps or --threshold, not both")
    if steps is None and threshold is None:
        raise ValueError("give --steps or --threshold")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if threshold is not None and not (finite(threshold) and 0 < threshold <= 1):
        raise ValueError(f"--threshold must be in (0, 1], got {threshold}")
    if order not in ORDERS:
        raise ValueError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
    if order != "confidence" and threshold is not None:
        raise ValueError("--threshold needs confidences: use it with --order confidence")
    if not (finite(remask) and remask >= 0):
        raise ValueError(f"--remask must be >= 0, got {remask}")
    if remask and threshold is not None:
        raise ValueError("--remask needs --steps, not --threshold")
    if not (finite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    if top_p is not None and not (finite(top_p) and 0 < top_p <= 1):
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    if block is not None and block < 1:
        raise ValueError(f"--block must be >= 1, got {block}")
    if cache not in CACHES:
        raise ValueError(f"--cache must be one of {', '.join(CACHES)}, got {cache!r}")
    if cache in ("prefix", "dual") and block is None:
        raise ValueError(f"--cache {cache} needs --block (the cache is rebuilt once per block)")
    if cache == "sparse" and (order not in ("random", "spread") or steps is None):
        raise ValueError("--cache sparse needs --steps and --order random or spread (it picks the positions "
                         "to write before the pass)")
    if not (isinstance(refresh, int) and refresh >= 1):
        raise ValueError(f"--refresh must be an integer >= 1, got {refresh!r}")
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"--schedule must be linear or cosine, got {schedule!r}")
    if remask_by not in REMASK_BY:
        raise ValueError(f"--remask-by must be one of {', '.join(REMASK_BY)}, got {remask_by!r}")
    if compile not in COMPILE_MODES:
        raise ValueError(f"--compile-mode must be one of {', '.join(map(str, COMPILE_MODES[1:]))}, got {compile!r}")
    if compile and cache != "none":
        raise ValueError("--compile works without --cache (the cache's keys/values are not compile-friendly)")
    if cuda_graph and steps is None:
        raise ValueError("--cuda-graph needs --steps, not --threshold (the number of passes must be fixed)")
    if cuda_graph and cache != "none":
        raise ValueError("--cuda-graph works without --cache (the cache's shapes change from pass to pass)")
    if cuda_graph and compile not in (None, "default"):
        raise ValueError("--cuda-graph captures its own CUDA graph: use it with --compile-mode default or without --compile")


def plan_blocks(masked_cols, N, T, block, keep):
    """Split the masked columns (sorted) into blocks, decoded left to right, each filled before
    the next: [(window start, window end, block start, block end, masked count)]. A block is the
    next `block` columns from the first masked one (None: the rest of the window), cut at the
    window's end; its window of T columns keeps `keep` columns before it where it can. Past
    the context the window slides with the blocks: one mechanism for any length."""
    plan, i = [], 0
    while i < len(masked_cols):
        first = masked_cols[i]
        start = max(0, min(first - keep, N - T))
        end = min(start + T, N)
        block_end = end if block is None else min(first + block, end)
        j = i
        while j < len(masked_cols) and masked_cols[j] < block_end:
            j += 1
        plan.append((start, end, first, block_end, j - i))
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


def choose_commits(prob, still_masked, order, plan, keys, threshold, priority):
    """(B, n) bool: the positions a step writes (plan: its counts, see denoise_step). Orders
    random and spread do not look at `prob`: the sparse cache chooses before the pass."""
    rank = rank_for_commit(prob, order, plan[2], uniform(keys, still_masked.size(1), stream=1), priority)
    return commit_positions(rank, still_masked, plan[0], threshold)


def rank_for_commit(conf, order, noise_scale, u, priority=None):
    """The score that decides which masked positions are written first (u: uniforms;
    priority: the fixed ranks of order "spread", `spread_priority`)."""
    if order == "random":  # MDLM's ancestral order: which positions to commit is chance
        return u
    if order == "spread":
        return priority
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


@torch.inference_mode()
def generate_steps(model, canvas, steps=None, threshold=None, temperature=1.0, top_k=None, top_p=None,
                   schedule="linear", seed=0, context_keep=None, order="confidence", precision="auto",
                   remask=0.0, block=None, cache="none", compile=None, remask_by="prob", refresh=8):
    """Denoise `canvas` and yield after every forward pass.

    canvas: (B, N) ids; positions equal to the mask id are generated, all others are kept
    verbatim (prompt, known text for infilling). Every row must have the same masked
    positions. Generation goes left to right in blocks (`plan_blocks`): block=B takes the next
    B columns from the first masked one (semi-autoregressive, as LLaDA and Fast-dLLM);
    block=None takes the whole window. The model sees a window of block_size columns around
    the block, keeping `context_keep` columns before it (default block_size - B, or half the
    context without blocks), so texts longer than the context need nothing else.

    Each step predicts every masked position of the block, draws a character for each
    (temperature 0 = argmax; top_k / top_p narrow the distribution), and commits some:
      - steps=S: a schedule (`commit_schedule`) per block; S is spread over the blocks by
        the square root of their masked counts (`split_steps`), so exactly S forward passes
        unmask the whole text (or one per block, if there are more blocks than S)
      - threshold=tau: all with confidence >= tau, and at least one per row.
    order: which to commit: the most confident (default); "random" (MDLM's ancestral order);
    "noisy": log-confidence plus Gumbel noise whose scale falls from 1 to 0 (MaskGIT);
    "spread": a fixed order that keeps the positions of one step far apart (`spread_priority`).
    remask=rho (with steps): each step also re-opens round(rho * that step's count) of the
    block's written characters, those drawn with the lowest probability, and commits as many
    more: the passes and the net progress stay as scheduled (ReMDM's confidence remasking).
    remask_by (only with remask): what "least likely" means: "prob", the probability the character was drawn
    with; "ratio", that probability over the most likely character's at that position (a
    position with many good options, a speaker's name say, is not re-opened for it); "pmi",
    that probability over the model's prior for the character (`char_prior`), so a rare
    character (a capital, a colon) is not re-opened for being rare.
    cache (with block): "prefix" computes the keys/values left of the block once per block and
    runs each later step on the block and what follows it; "dual" caches the right side too and
    runs each step on the block alone (Fast-dLLM). Both rebuild the cache at each block start.
    "sparse" (order random or spread, with or without blocks) needs no blocks: which positions a
    step writes does not depend on its predictions, so it chooses them first and runs the
    network only on them and on the positions changed since the last full pass, against cached
    keys/values for the rest; a full pass rebuilds the cache every `refresh` steps.
    precision: "bf16" or "fp32" for the forward passes; "auto" is bf16 where it is native
    (`native_bf16`: CUDA, CPUs with AVX-512 BF16 or AMX), else fp32.
    compile: a torch.compile mode ("default", "reduce-overhead": CUDA graphs) for the whole
    step, forward pass and sampling together (`denoise_step`); not with a cache.
    Yields dicts: canvas (B, N) after the step, committed (B, N) bool (written this step),
    reopened (B, N) bool (masked again this step), nfe, window (start, end), block (start, end).
    Everything the host decides (`plan_generation`: checks, blocks, counts per step, prior) is
    done before this returns the generator; the generator only queues device work, which is
    what lets `generate(..., cuda_graph=True)` capture it whole.
    """
    return denoise_canvas(model, canvas, **plan_generation(
        model, canvas, steps, threshold, temperature, top_k, top_p, schedule, seed, context_keep, order, precision,
        remask, block, cache, compile, remask_by, refresh))


def plan_generation(model, canvas, steps, threshold, temperature, top_k, top_p, schedule, seed, context_keep,
                    order, precision, remask, block, cache, compile, remask_by, refresh):
    """The host's part of generate_steps, done before any step: checks, the blocks and their
    step plans (on the device), the prior. Returns denoise_canvas's keyword arguments."""
    check_sampler_options(steps, threshold, order, remask, temperature, top_k, top_p, block, cache, schedule,
                          compile, remask_by, refresh)
    step_fn = compiled_step(compile) if compile else denoise_step
    if not remask:  # nothing is re-opened: the ranking is unused (and pmi's prior costs a pass)
        remask_by = "prob"
    prior = char_prior(model, precision) if remask_by == "pmi" else None
    T = model.config.block_size
    keep = context_keep if context_keep is not None else (T - block if block is not None and block < T else T // 2)
    is_masked = canvas == model.config.mask_id
    if not torch.equal(is_masked, is_masked[:1].expand_as(is_masked)):
        raise ValueError("every row of the canvas must have the same masked positions")
    blocks = plan_blocks(is_masked[0].nonzero().flatten().tolist(), canvas.size(1), T, block, keep)  # host sync
    block_steps = split_steps(steps, [b[4] for b in blocks]) if steps is not None else [None] * len(blocks)
    plans = [step_plan(b, n, schedule, remask, refresh, cache, canvas.device) for b, n in zip(blocks, block_steps)]
    return dict(plans=plans, threshold=threshold, temperature=temperature, top_k=top_k, top_p=top_p, order=order,
                remask_by=remask_by, cache=cache, precision=sampling_precision(precision, canvas.device), seed=seed,
                step_fn=step_fn, refresh=refresh, prior=prior)


def step_plan(block, n_steps, schedule, remask, refresh, cache, device):
    """What the host decides for one block before it starts: its columns, and per step the
    commit count, the re-open count and the noise scale (a (steps, 3) tensor on `device`), and
    for the sparse cache how many positions each pass runs on."""
    start, end, first, block_end, n_masked = block
    counts = commit_schedule(n_masked, n_steps, schedule) if n_steps is not None else None
    n_steps = len(counts) if counts is not None else block_end - first  # threshold: at most one pass per mask
    plan = torch.zeros(n_steps, 3)
    reopen = [0] * n_steps
    if counts is not None:
        done = [sum(counts[:i]) for i in range(n_steps)]
        reopen = [min(round(remask * c), d, sum(counts) - d - c) if remask else 0 for c, d in zip(counts, done)]
        plan[:, 0] = torch.tensor([c + r for c, r in zip(counts, reopen)], dtype=torch.float)
        plan[:, 1] = torch.tensor(reopen, dtype=torch.float)
    plan[:, 2] = 1.0 - torch.arange(n_steps, dtype=torch.float) / n_steps
    run_size = None
    if cache == "sparse":  # positions per sparse pass: (written now | changed since the refresh) is at
        # most this; the spare ones up to it get fresh keys/values too, which measured no worse
        changes = [c + 2 * r for c, r in zip(counts, reopen)]  # written, and re-opened ones twice
        run_size = [min(block_end - first, changes[i] + sum(changes[i - i % refresh:i])) for i in range(n_steps)]
    return dict(block=block, counts=counts, plan=plan.to(device), run_size=run_size)


@torch.inference_mode()
def denoise_canvas(model, canvas, plans, threshold, temperature, top_k, top_p, order, remask_by, cache,
                   precision, seed, step_fn, refresh, prior):
    """The generator of generate_steps: the blocks in turn, on a copy of canvas."""
    B, N = canvas.shape
    canvas = canvas.clone()
    noise = Noise(seed, B, canvas.device)
    nfe = 0
    for p in plans:
        start, end, first, block_end, _ = p["block"]
        for commit, reopened in denoise_block(model, canvas, p, threshold, temperature, top_k, top_p, order,
                                              remask_by, cache, precision, noise, step_fn, refresh, prior):
            nfe += 1
            widen = (first, N - block_end)  # block columns -> canvas columns (a copy: see denoise_block)
            yield {"canvas": canvas, "committed": F.pad(commit, widen), "reopened": F.pad(reopened, widen), "nfe": nfe,
                   "window": (start, end), "block": (first, block_end)}


def denoise_block(model, canvas, block_plan, threshold, temperature, top_k, top_p, order, remask_by, cache,
                  precision, noise, step_fn, refresh=8, prior=None):
    """Fill the masks of canvas[:, first:block_end] in place, the model seeing canvas[:, start:end]
    (block_plan: what `step_plan` made for it). Yields (written, re-opened) masks over the block
    after every forward pass. The host decided the counts in advance; everything per step runs
    in `step_fn`."""
    mask_id = model.config.mask_id
    start, end, first, block_end, _ = block_plan["block"]
    counts, plan, run_size = block_plan["counts"], block_plan["plan"], block_plan["run_size"]
    lo, hi = first - start, block_end - start  # the block inside the window
    kv = KVCache() if cache in ("prefix", "dual") else None  # sparse: made at every refresh below
    run_to = hi if cache == "dual" else end - start  # cached passes run on [lo, run_to)
    region = canvas[:, first:block_end]
    generated = region == mask_id  # the block's positions to write
    commit_prob = torch.zeros(generated.shape, device=canvas.device)  # what re-opening ranks by (remask_by)
    n_steps = plan.size(0)
    keys = noise.keys(n_steps)
    priority = None
    if order == "spread":  # one rotation per row and block, from a draw of its own
        priority = spread_priority(hi - lo, (noise.uniform(1)[:, 0] * (hi - lo)).long())
    for step in range(n_steps):
        if counts is None and not (region == mask_id).any():
            return
        if cache == "sparse" and step % refresh == 0:
            kv, at_refresh = KVCache(), region.clone()
        fills_cache = kv is not None and not kv
        with autocast(canvas.device, precision):
            if kv and cache == "sparse":  # what this step writes and all changed since the full pass
                still_masked = region == mask_id
                run = choose_commits(None, still_masked, order, plan[step], keys[step], None, priority)
                run |= region != at_refresh
                # those first, then spare positions up to the bound (a fixed size for every row)
                positions = (~run).float().argsort(dim=1, stable=True)[:, :run_size[step]]
                x, at, out = region.gather(1, positions), positions + lo, (lo, hi)
            elif kv:  # the block (and, prefix cache, the right side) against the cached keys/values
                x, at, out = canvas[:, first:start + run_to], lo, (0, hi - lo)
            else:  # a full pass over the window (fills the cache at a block's first step)
                x, at, out = canvas[:, start:end], 0, (lo, hi)
            new, commit, reopened, commit_prob = step_fn(
                model, x, kv, at, *out, region, generated, commit_prob, keys[step], plan[step],
                mask_id, temperature, top_k, top_p, order, threshold, remask_by, priority, prior)
        if fills_cache:
            kv.own()
        region.copy_(new)
        commit_prob = commit_prob.clone()  # under CUDA graphs the next replay overwrites outputs
        yield commit, reopened  # valid until the next step: copy them to keep them


def denoise_step(model, x, cache, at, lo, hi, region, generated, commit_prob, keys, plan, mask_id,
                 temperature, top_k, top_p, order, threshold, remask_by="prob", priority=None, prior=None):
    """One forward pass and what it writes, a pure function of tensors (torch.compile captures
    it whole, CUDA graphs included). plan: (commit count, re-open count, noise scale).
    Returns the block's new content, the written and re-opened masks, and the scores of the
    written characters that remasking ranks by."""
    logits = model(x, cache=cache, start=at)
    if torch.is_tensor(at):  # a sparse pass: back to block columns (the others are not written)
        logits = logits.new_zeros(region.shape + logits.shape[2:]).scatter(
            1, (at - lo)[..., None].expand_as(logits), logits)
    else:
        logits = logits[:, lo:hi]
    n = hi - lo
    chars, prob = draw_characters(logits, temperature, top_k, top_p, uniform(keys, n, stream=0))
    still_masked = region == mask_id
    commit = choose_commits(prob, still_masked, order, plan, keys, threshold, priority)
    written = generated & ~still_masked
    reopened = lowest(commit_prob.masked_fill(~written, float("inf")), plan[1])  # drawn least likely
    new = torch.where(commit, chars, region).masked_fill(reopened, mask_id)
    score = prob
    if remask_by == "pmi":  # p(drawn | context) / p(drawn): how much the context backs it
        score = prob / prior[chars]
    if remask_by == "ratio" and temperature > 0:  # p(drawn) / p(best), unchanged by top-k/top-p
        logits = logits.float()
        score = ((logits.gather(-1, chars[..., None]).squeeze(-1) - logits.amax(-1)) / temperature).exp()
    return new, commit, reopened, torch.where(commit, score, commit_prob)


def char_prior(model, precision="auto"):
    """(vocab_size - 1,) the model's prior over characters: its prediction with every position
    masked, averaged over a window (its unigram belief, close to the training text's). One
    forward pass, made once per model and kept on it."""
    if getattr(model, "char_prior", None) is None:
        device = next(model.parameters()).device
        x = torch.full((1, model.config.block_size), model.config.mask_id, device=device)
        with torch.inference_mode(), autocast(device, sampling_precision(precision, device)):
            model.char_prior = model(x).float().softmax(-1).mean(1)[0]
    return model.char_prior


COMPILED_STEPS = {}


def compiled_step(mode):
    """denoise_step under torch.compile (one compiled function per mode, made once)."""
    if mode not in COMPILED_STEPS:
        COMPILED_STEPS[mode] = torch.compile(denoise_step, mode=mode, dynamic=False)
    return COMPILED_STEPS[mode]


@torch.inference_mode()
def generate_ar_steps(model, canvas, temperature=1.0, top_k=None, top_p=None, seed=0, precision="auto"):
    """The autoregressive baseline's sampler, for side-by-side comparisons: writes the masked
    positions of canvas left to right, one character per forward pass, each given up to
    block_size characters before it. Yields the same dicts as generate_steps."""
    check_sampler_options(steps=1, temperature=temperature, top_k=top_k, top_p=top_p)
    mask_id, T = model.config.mask_id, model.config.block_size
    B, N = canvas.shape
    dev = canvas.device
    canvas = canvas.clone()
    noise = Noise(seed, B, dev)
    precision = sampling_precision(precision, dev)
    masked_cols = (canvas[0] == mask_id).nonzero().flatten().tolist()
    if masked_cols and masked_cols[0] == 0:
        raise ValueError("the autoregressive model needs at least one character before the first mask")
    for nfe, i in enumerate(masked_cols, start=1):
        start = max(0, i - T)
        with autocast(dev, precision):
            logits = model(canvas[:, start:i])[:, -1:]
        chars, _ = draw_characters(logits, temperature, top_k, top_p, noise.uniform(logits.size(1)))
        canvas[:, i] = chars[:, 0]
        committed = torch.zeros_like(canvas, dtype=torch.bool)
        committed[:, i] = True
        yield {"canvas": canvas, "committed": committed, "reopened": torch.zeros_like(committed), "nfe": nfe,
               "window": (start, i + 1), "block": (i, i + 1)}


def generate(model, canvas, cuda_graph=False, **kwargs):
    """Run `generate_steps` to the end. Returns (canvas, nfe).

    cuda_graph=True (CUDA, with steps and no cache): the whole generation, every step of every
    block, is captured once as one CUDA graph and replayed, with this canvas and seed copied
    into its inputs, so the host launches one graph instead of a few dozen kernels per step
    (at batch 1 those launches take as long as the GPU's work). A graph is kept per model,
    canvas shape, masked columns and sampler settings; the first call for one also runs
    two warm-up generations (compilation with compile="default") and the capture."""
    if cuda_graph:
        return generate_graphed(model, canvas, **kwargs)
    state = {"canvas": canvas, "nfe": 0}
    for state in generate_steps(model, canvas, **kwargs):
        pass
    return state["canvas"], state["nfe"]


GRAPHS = {}


@torch.inference_mode()
def generate_graphed(model, canvas, seed=0, **kwargs):
    """generate(..., cuda_graph=True): see there."""
    if canvas.device.type != "cuda":
        raise ValueError(f"--cuda-graph needs a CUDA device, not {canvas.device.type}")
    check_sampler_options(**{k: v for k, v in kwargs.items() if k not in ("precision", "context_keep")},
                          cuda_graph=True)
    masked_cols = tuple((canvas[0] == model.config.mask_id).nonzero().flatten().tolist())
    key = (id(model), tuple(canvas.shape), masked_cols, tuple(sorted(kwargs.items())))
    if key not in GRAPHS:
        inputs = canvas.clone(), torch.tensor(seed, device=canvas.device)
        side = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graph wants
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                generate(model, inputs[0], seed=inputs[1], **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        options = inspect.signature(generate_steps).bind(model, inputs[0], seed=inputs[1], **kwargs)
        options.apply_defaults()  # generate_steps's defaults
        plan = plan_generation(**options.arguments)  # the host's work, done before the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for state in denoise_canvas(model, inputs[0], **plan):
                pass
        # the plan's tensors live outside the graph's memory pool: they must outlive the graph
        GRAPHS[key] = graph, inputs, plan, state["canvas"], state["nfe"]
    graph, (canvas_in, seed_in), _, canvas_out, nfe = GRAPHS[key]
    canvas_in.copy_(canvas)
    seed_in.fill_(seed)
    graph.replay()
    return canvas_out.clone(), nfe


# -----------------------------------------------------------------------------
# Data and vocabulary

DATA_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny_shakespeare.txt")
TRAIN_FRACTION = 0.9  # first 90% of the file trains, the last 10% is held out, always


def load_text(path):
    """The training text as a str; every problem is one UserError."""
    if not os.path.isfile(path):
        raise UserError(f"data file not found: {path} (run: python data/prepare.py)")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (binary or another encoding)") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def split_text(text):
    """(train, val): the first TRAIN_FRACTION of the text and the rest."""
    n = int(TRAIN_FRACTION * len(text))
    return text[:n], text[n:]


def mask_id_of(chars):
    """The mask symbol's id: the one after the vocabulary's characters (= ModelConfig.mask_id
    of a model built for this vocabulary). The one place that says so."""
    return len(chars)


def encode(text, chars, allow_mask=False):
    """Text -> list of ids. With allow_mask, MASK_GLYPH becomes the mask id (infilling)."""
    index = {c: i for i, c in enumerate(chars)}
    mask_id = mask_id_of(chars)
    unknown = sorted({c for c in text if c not in index and not (allow_mask and c == MASK_GLYPH)})
    if unknown:
        shown = " ".join(repr(c) for c in unknown)
        raise UserError(f"characters not in the model's vocabulary: {shown}")
    return [mask_id if c == MASK_GLYPH and allow_mask else index[c] for c in text]


def decode(ids, chars):
    """Ids -> text; the mask id shows as MASK_GLYPH."""
    mask_id = mask_id_of(chars)
    return "".join(MASK_GLYPH if i == mask_id else chars[i] for i in ids)


# -----------------------------------------------------------------------------
# Devices

def pick_device(name="auto"):
    """'auto' picks cuda, then mps, then cpu; an explicit device that is not there is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} is not available: PyTorch sees no CUDA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} is not available: {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    return dev


def native_bf16(device):
    """True where bf16 matmuls run natively: CUDA, and CPUs with AVX-512 BF16 or AMX. Elsewhere
    bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":  # torch.cpu's probes are private: a missing one counts as no
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def sampling_precision(precision, device):
    """The samplers' "auto": bf16 where it is native (`native_bf16`), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device, precision="auto"):
    """bf16 autocast for precision "bf16", and for "auto" on CUDA; "fp32" is full precision.
    (On CPUs with bf16 instructions, "bf16" makes a forward pass almost twice as fast.)"""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16 and device.type in ("cuda", "cpu"))


# -----------------------------------------------------------------------------
# Checkpoints: one file with the config, the vocabulary, the weights and (for resuming)
# the training state. Only tensors and plain Python types, so weights_only=True loads it.

def save_checkpoint(path, model, chars, **extra):
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.config),
        "chars": "".join(chars),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    write_checkpoint(ckpt, path)


def weights_checksum(state_dict):
    """sha256 of every weight tensor's bytes, in name order: flipped bytes fail the load."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_checkpoint(ckpt, path):
    """Stamp the weights' checksum and write the checkpoint atomically (a temp file, then a
    rename): a crash never leaves a half-written checkpoint. Temp files that killed processes
    left beside `path` are removed first."""
    ckpt["checksum"] = weights_checksum(ckpt["model"])
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temp_files(path)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save raises RuntimeError when it cannot open the file
        reason = e.strerror if isinstance(e, OSError) else str(e).splitlines()[0][:120]
        raise UserError(f"cannot write checkpoint {path}: {reason}") from None


def remove_stale_temp_files(path):
    for tmp in glob.glob(glob.escape(path) + ".tmp*"):
        pid = tmp.rsplit(".tmp", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            os.remove(tmp)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def read_checkpoint(path):
    """Load and validate a checkpoint dict; every failure is one UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path}: truncated, corrupt or not a PyTorch "
                        f"checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a tiny-diffusion checkpoint (expected format {CHECKPOINT_FORMAT})")
    known = {f.name for f in fields(ModelConfig)}
    cfg = ckpt.get("config", {})
    if set(cfg) - known:
        raise UserError(f"{path}: unknown config fields {sorted(set(cfg) - known)}")
    if "checksum" in ckpt and weights_checksum(ckpt.get("model", {})) != ckpt["checksum"]:
        raise UserError(f"{path}: the weights do not match their stored checksum (the file is corrupt)")
    if len(ckpt.get("chars", "")) + 1 != cfg.get("vocab_size"):
        raise UserError(f"{path}: vocabulary of {len(ckpt.get('chars', ''))} characters does not match vocab_size")
    return ckpt


def load_model(path, device="cpu"):
    """Rebuild the model of a checkpoint. Returns (model in eval mode, chars, ckpt)."""
    ckpt = read_checkpoint(path)
    model = Transformer(ModelConfig(**ckpt["config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match the stored config: {first[:120]}") from None
    return model.to(device).eval(), ckpt["chars"], ckpt
