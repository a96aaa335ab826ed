"""
The masked-diffusion maths: the forward (masking) process, the training losses of both
objectives, and the estimators that evaluation reports (the NELBO of the diffusion model, its exact
left-to-right NLL, and the exact NLL of the autoregressive one, on isolated windows or with context, with standard
errors over blocks).
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from devices import autocast


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


T_DISTS = ("uniform", "bell", "clipped")
LOSS_WEIGHTS = ("elbo", "none")


@dataclass(frozen=True)
class MaskRate:
    """How training draws the masked fraction t of a row's n maskable positions, k = 1 +
    floor(t * n) (so P(k) = F(k / n) - F((k - 1) / n) with F the CDF of t):
    - uniform: t ~ U(0, 1), k ~ U{1..n}: the NELBO itself;
    - bell: t ~ Beta(2, 2), density 6t(1 - t): more middle mask rates, fewer extreme ones (Hong et
      al., arXiv 2605.13026, report the same NLL up to ~4x sooner with a bell-shaped t; the exact
      shape they use is not known here: Beta(2, 2) is the symmetric bell with a closed-form CDF);
    - clipped: t ~ U[t_min, t_max] (BD3-LM's clipped schedule: k outside the range never drawn)."""
    dist: str = "uniform"
    t_min: float = 0.0
    t_max: float = 1.0

    def cdf(self, t):
        t = t.clamp(0, 1)
        if self.dist == "bell":
            return t * t * (3 - 2 * t)
        if self.dist == "clipped":
            return ((t - self.t_min) / (self.t_max - self.t_min)).clamp(0, 1)
        return t

    def k_probabilities(self, n, T):
        """(B, T) P(k = j + 1) for each row's maskable count n (B,): F(k / n) - F((k - 1) / n)."""
        j = torch.arange(1, T + 1, device=n.device)[None, :]
        p = self.cdf(j / n[:, None]) - self.cdf((j - 1) / n[:, None])
        return p.masked_fill(j > n[:, None], 0.0)

    def draw_k(self, u, n, T):
        """(k, weight) for uniforms u (B,) and maskable counts n (B,). k: the smallest with
        P(<= k) > u, so only k of positive probability come out (floor(F^-1(u) * n) could land, by
        rounding, on a k of probability 0 at the edge of a clipped range). weight: 1 / (m P(k))
        with m the k of positive probability (n, but for clipped), the importance weight that
        makes a row's expected weighted loss the mean of its per-k losses over those m: the
        NELBO itself for uniform and bell, its terms inside the range for clipped (biased, as
        BD3-LM's clipping is; the weights still undo the range's uneven edges)."""
        p = self.k_probabilities(n, T)
        k = 1 + (p.cumsum(1)[:, :-1] <= u[:, None]).logical_and(torch.arange(1, T, device=u.device) < n[:, None]).sum(1)
        m = (p > 0).sum(1)
        return k, 1.0 / (m * p.gather(1, (k - 1)[:, None])[:, 0])


class TrainingMasks(NamedTuple):
    hidden: torch.Tensor  # (B, T) positions replaced by MASK
    scored: torch.Tensor  # (B, T) positions in the loss
    k: torch.Tensor       # (B,) scored count
    weight: torch.Tensor  # (B,) importance weight of the row's loss (MaskRate.k_weight; 1 for uniform)


def draw_training_masks(x, prefix_prob, generator=None, block_prob=0.0, rate=MaskRate()):
    """Masks for a training batch, stratified in k over the batch. Each row is one of:
    - random (the default): k of the T positions masked anywhere;
    - prefix (prefix_prob): a clean prefix of random length, k of the rest masked at random, so
      the model learns to continue prompts;
    - block (block_prob): what block-wise decoding (sample.py --block) shows the model: a clean
      prefix, a block of random length with k of its positions masked, and everything after it
      masked. Only the block is scored (its conditional NELBO given the prefix).
    k follows `rate` over the n positions a row may mask (uniform: k ~ U{1..n})."""
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
    weight = torch.ones(B, device=dev)
    if rate.dist != "uniform":  # k from the rate's distribution, as the u that draw_masks turns into it
        k, weight = rate.draw_k(u, span, T)
        u = (k - 0.5) / span
    scored, k = draw_masks(B, T, num_clean, u, generator=generator, device=dev, span=span)
    after_block = torch.arange(T, device=dev)[None, :] >= (num_clean + span)[:, None]
    return TrainingMasks(scored | after_block, scored, k, weight)


def training_masks(x, prefix_prob, generator=None, block_prob=0.0):
    """(hidden, scored, k) of `draw_training_masks` with uniform k."""
    return draw_training_masks(x, prefix_prob, generator, block_prob)[:3]


def masked_nll_per_sequence(logits, x, masked, k):
    """Mean cross-entropy over the masked positions of each sequence: (B,)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view(x.shape)
    return (ce * masked).sum(dim=1) / k


def diffusion_loss(model, x, mask_id, prefix_prob=0.0, generator=None, block_prob=0.0, rate=MaskRate(),
                   weights="elbo"):
    """The training objective (see the block comment above). `model` may be wrapped (compiled,
    DDP), so the mask id is passed in. weights "elbo": the mean over rows of each row's masked
    mean -log p times its importance weight (uniform rate: the negative ELBO in nats/char; any
    rate: an unbiased estimate of it). "none" (Sahoo et al., arXiv 2602.15014): no weights at
    all, the plain mean -log p over every masked position of the batch (rows with more masks
    count more; not the NELBO, which evaluation still reports)."""
    hidden, scored, k, weight = draw_training_masks(x, prefix_prob, generator, block_prob, rate)
    logits = model(x.masked_fill(hidden, mask_id))
    if weights == "none":
        ce = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view(x.shape)
        return (ce * scored).sum() / k.sum()
    return (masked_nll_per_sequence(logits, x, scored, k) * weight).mean()


def autoregressive_loss(model, x, causal=None):
    """Next-character cross-entropy (the AR baseline): x is (B, T + 1). causal=True runs a
    bidirectional network causally (the mixed objective)."""
    logits = model(x[:, :-1]) if causal is None else model(x[:, :-1], causal=causal)
    return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())


def mixed_loss(model, x, ar_rows, diffusion):
    """Dual-objective training (Samuel & Charpentier, arXiv 2512.14549): the first `ar_rows` rows of
    x (B, T + 1) train next-character prediction with causal attention, the others (their first T
    characters) masked diffusion, `diffusion(model, x)`; the result is the mean over rows. The
    reference code splits each step's batch the same way (by GPU: 3/4 masked, 1/4 causal). The
    two tasks share the head without conflict: AR inputs hold no MASK, and diffusion scores only
    MASK positions (the reference shifts its diffusion targets by one to the same end)."""
    B = x.size(0)
    ar = autoregressive_loss(model, x[:ar_rows], causal=True)
    return (ar_rows * ar + (B - ar_rows) * diffusion(model, x[ar_rows:, :-1])) / B


# -----------------------------------------------------------------------------
# Block diffusion (BD3-LM, Arriola et al. 2025): the window is split into blocks of L' characters,
# -log p(x) = sum_b -log p(x_b | x_<b), and each conditional is a masked diffusion with its own
# NELBO (the formula above restricted to the block, given the clean blocks before it). Training
# runs all blocks in one pass over [x_noisy ; x_clean] (2T positions, both copies at rotary
# positions 0..T-1) under `block_diffusion_mask`. L' = T is the plain masked-diffusion objective;
# L' = 1 is next-character prediction: position i reads a MASK and x_<i (causally), and the loss
# is the mean over i of -log p(x_i | x_<i), x_0 predicted from nothing.

def block_causal_mask(T, block_len, device=None):
    """(T, T) bool, True where query i may attend key j: j's block is not after i's. On one clean
    (or clean-then-noisy) sequence it is what every block of a block model sees."""
    block = torch.arange(T, device=device) // block_len
    return block[:, None] >= block[None, :]


def block_diffusion_mask(T, block_len, device=None):
    """(2T, 2T) bool for [x_noisy ; x_clean]: a noisy token of block b attends to the noisy tokens
    of block b and the clean tokens of blocks < b; a clean token of block b to the clean tokens of
    blocks <= b (BD3-LM's block-diagonal, offset block-causal and block-causal parts)."""
    block = (torch.arange(2 * T, device=device) % T) // block_len
    clean = torch.arange(2 * T, device=device) >= T
    q_block, kv_block, q_clean, kv_clean = block[:, None], block[None, :], clean[:, None], clean[None, :]
    same_noisy_block = (q_block == kv_block) & ~q_clean & ~kv_clean
    earlier_clean = (q_block > kv_block) & ~q_clean & kv_clean
    clean_causal = (q_block >= kv_block) & q_clean & kv_clean
    return same_noisy_block | earlier_clean | clean_causal


def block_rates(n, t_min=0.0, t_max=1.0, generator=None, device=None):
    """(n,) u in [t_min, t_max), stratified over the n draws (as training_masks does): the mask
    rate of each block. [0, 1) is the unbiased NELBO; BD3's clipped range [beta, omega] trades
    bias for a lower-variance gradient (its section 4)."""
    u = (torch.arange(n, device=device) + torch.rand(n, generator=generator, device=device)) / n
    u = u[torch.randperm(n, generator=generator, device=device)]
    return t_min + (t_max - t_min) * u


def block_masks(B, T, block_len, u, num_clean=None, generator=None, device=None):
    """Masks for B windows of nb = T / L' blocks, drawn per block: u (B * nb,) sets how many of a
    block's scorable positions are masked (k = 1 + floor(u * n)); num_clean (B,): the first
    num_clean positions of each window are context, never masked nor scored (default none).
    Returns (masked (B, T) bool, k (B, nb) long: 0 for a block that is all context)."""
    nb = T // block_len
    if num_clean is None:
        num_clean = torch.zeros(B, dtype=torch.long, device=device)
    starts = torch.arange(nb, device=device) * block_len
    clean_in_block = (num_clean[:, None] - starts[None, :]).clamp(0, block_len).flatten()  # (B * nb,)
    span = block_len - clean_in_block
    masked, k = draw_masks(B * nb, block_len, clean_in_block, u, generator=generator, device=device,
                           span=span.clamp(min=1))
    scorable = span > 0
    return (masked & scorable[:, None]).view(B, T), (k * scorable).view(B, nb)


def block_nelbo_per_block(logits, x, masked, k, block_len):
    """(B, nb): each block's NELBO per character, the mean -log p over its masked positions (k of
    them; a block with k = 0 gives 0)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view(x.shape)
    per_block = (ce * masked).view(x.size(0), -1, block_len).sum(-1)
    return per_block / k.clamp(min=1)  # mean over each block's masked positions


def block_forward(model, noisy, clean, block_len):
    """The logits of the noisy copy in one pass over [noisy ; clean] under the BD3-LM mask."""
    T = noisy.size(1)
    dev = noisy.device
    logits = model(torch.cat([noisy, clean], dim=1), attn_mask=block_diffusion_mask(T, block_len, dev),
                   pos=torch.arange(T, device=dev).repeat(2))
    return logits[:, :T]


def block_diffusion_loss(model, x, mask_id, block_len, t_min=0.0, t_max=1.0, generator=None):
    """Block diffusion's NELBO in nats/char (the training objective of --objective block): every
    block's masked-diffusion NELBO on its noisy positions, mask rates drawn per block, averaged.
    `model` may be wrapped (compiled, DDP), so the mask id and L' are passed in."""
    B, T = x.shape
    u = block_rates(B * (T // block_len), t_min, t_max, generator, x.device)
    masked, k = block_masks(B, T, block_len, u, generator=generator, device=x.device)
    logits = block_forward(model, x.masked_fill(masked, mask_id), x, block_len)
    return block_nelbo_per_block(logits, x, masked, k, block_len).mean()


# -----------------------------------------------------------------------------
# Evaluation: the chain rule over blocks, the same blocks for both objectives.
#
# -log p(val) <= sum over blocks b of NELBO(block_b | the C clean characters before it): the first
# window is scored whole, every later block of T - C characters given the C before it, so every
# character is scored exactly once and C = 0 is the isolated-window estimator. The AR model is
# scored on the same blocks with sliding windows (its exact NLL). Standard errors are over blocks.

def eval_blocks(n, T, context):
    """Blocks that score each of n characters exactly once: [(end, length)]. Block b is the last
    `length` characters of the window [end - T, end): the first window is scored whole, every
    later block of T - context characters sees at least `context` clean characters before it
    (the last block may be shorter, and then sees more)."""
    blocks = [(T, T)]
    while blocks[-1][0] < n:
        end = min(blocks[-1][0] + T - context, n)
        blocks.append((end, end - blocks[-1][0]))
    return blocks


def summarize(per_block, lengths):
    """Per-character mean of per-block means, weighted by block length, and its standard error
    over blocks (a ratio estimator: the spread of the per-block means is the estimator's error)."""
    x, w = per_block.double().cpu(), lengths.double().cpu()
    mean = (w * x).sum() / w.sum()
    nb = len(x)
    se = ((w * (x - mean)).square().sum() * nb / max(nb - 1, 1)).sqrt() / w.sum()
    return mean.item(), se.item()


class Shard(NamedTuple):
    """Which share of the evaluation this process scores (rank of world: batches dealt
    round-robin), and what it reports its progress to: None, or a cli.Progress (its total grows
    by this rank's batches, one update per batch scored; an 80-minute --order l2r says so)."""
    rank: int = 0
    world: int = 1
    progress: object = None


def sharded(n, batch_size, shard, device, score, first=0):
    """The loop every estimator shares: rows first .. n-1 in batches of batch_size, this rank's
    share of them (`Shard`), score(slice) giving each batch's values, in a float64 vector of n
    that is zero in other ranks' rows (sum_over_ranks)."""
    out = torch.zeros(n, dtype=torch.float64, device=device)
    starts = range(first + shard.rank * batch_size, n, shard.world * batch_size)
    if shard.progress:
        shard.progress.total += len(starts)
    for i in starts:
        sl = slice(i, min(i + batch_size, n))
        out[sl] = score(sl)
        if shard.progress:
            shard.progress.update()
    return out


def sum_over_ranks(values, shard):
    if shard.world > 1:
        dist.all_reduce(values)
    return values


@torch.no_grad()
def diffusion_block_nll(model, val, T, blocks, mc=4, seed=1234, batch_size=64, shard=Shard()):
    """Per block: the conditional NELBO per character, averaged over `mc` draws. A draw masks
    k ~ U{1..length} of the block's positions (k stratified over all draws, a CPU generator with a
    fixed seed: the same masks on any device) and scores their mean -log p given the window."""
    device = val.device
    ends = torch.tensor([e for e, _ in blocks]).repeat(mc)
    lengths = torch.tensor([L for _, L in blocks]).repeat(mc)
    n_draws = len(ends)
    g = torch.Generator().manual_seed(seed)
    u = ((torch.arange(n_draws) + torch.rand(n_draws, generator=g)) / n_draws)[torch.randperm(n_draws, generator=g)]
    masked, k = draw_masks(n_draws, T, T - lengths, u, generator=g)

    def score(sl):
        x = val[(ends[sl].to(device) - T)[:, None] + torch.arange(T, device=device)]
        m, kk = masked[sl].to(device), k[sl].to(device)
        with autocast(device):
            logits = model(x.masked_fill(m, model.config.mask_id))
        return masked_nll_per_sequence(logits, x, m, kk).double()
    per_draw = sum_over_ranks(sharded(n_draws, batch_size, shard, device, score), shard)
    return per_draw.view(mc, len(blocks)).mean(0)


@torch.no_grad()
def ar_block_nll(model, val, T, blocks, batch_size=64, shard=Shard()):
    """Per block: the exact mean NLL of its characters, each given everything before it in a
    window of T characters (sliding windows). The very first character has nothing to be
    predicted from, so the first block scores its last T - 1 characters."""
    device = val.device

    def score(inputs, targets, length):
        with autocast(device):
            logits = model(inputs)
        ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
        keep = torch.arange(targets.size(1), device=device)[None, :] >= targets.size(1) - length[:, None]
        return (ce * keep).sum(1).double() / length

    def score_blocks(sl):
        ends = torch.tensor([e for e, _ in blocks[sl]], device=device)
        lengths = torch.tensor([L for _, L in blocks[sl]], device=device)
        window = val[(ends - T - 1)[:, None] + torch.arange(T + 1, device=device)]
        return score(window[:, :-1], window[:, 1:], lengths)
    per_block = sharded(len(blocks), batch_size, shard, device, score_blocks, first=1)
    if shard.rank == 0:  # the first block on its own: T - 1 inputs
        per_block[0] = score(val[None, :T - 1], val[None, 1:T], torch.tensor([T - 1], device=device))[0]
    return sum_over_ranks(per_block, shard)


@torch.no_grad()
def l2r_block_nll(model, val, T, blocks, batch_size=64, shard=Shard()):
    """Per block: the exact mean NLL of its characters read left to right by the diffusion
    network, an any-order AR model read in one order. The character at window
    position p is predicted from the window with MASK at p and at every position after it: the
    clean context and the block's characters before p stay. One forward pass per character, so
    the batch holds (block, position) pairs, several windows' worth at once."""
    device = val.device
    ends = torch.tensor([e for e, _ in blocks])
    lengths = torch.tensor([L for _, L in blocks])
    block_of = torch.repeat_interleave(torch.arange(len(blocks)), lengths)  # per scored character
    first_of_block = torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    pos = T - lengths[block_of] + torch.arange(len(block_of)) - first_of_block  # its window position
    cols = torch.arange(T, device=device)

    def score(sl):
        p = pos[sl].to(device)
        x = val[(ends[block_of[sl]].to(device) - T)[:, None] + cols]
        with autocast(device):
            logits = model(x.masked_fill(cols[None, :] >= p[:, None], model.config.mask_id))
        at_p = logits.gather(1, p[:, None, None].expand(-1, 1, logits.size(-1)))[:, 0].double()
        return F.cross_entropy(at_p, x.gather(1, p[:, None])[:, 0], reduction="none")
    per_char = sum_over_ranks(sharded(len(block_of), batch_size, shard, device, score), shard)
    per_block = torch.zeros(len(blocks), dtype=torch.float64, device=device)
    return per_block.index_add_(0, block_of.to(device), per_char) / lengths.to(device)


@torch.no_grad()  # without it every batch kept its autograd graph (RESULTS.md, 2026-12-01)
def block_model_block_nll(model, val, T, blocks, mc=4, seed=1234, batch_size=64, shard=Shard()):
    """diffusion_block_nll for a block model: an eval block's NELBO given its context is the sum
    over its L'-blocks of each one's conditional NELBO given every clean character before it in
    the window (the context and the eval block's earlier L'-blocks), all in one [noisy ; clean]
    pass. An L'-block that straddles the context keeps its context characters clean in the noisy
    copy and draws its k ~ U{1..n} masks among its n scored ones. With L' = T the masks (same seed)
    and the numbers are diffusion_block_nll's."""
    device, L = val.device, model.config.block_len
    ends = torch.tensor([e for e, _ in blocks]).repeat(mc)
    lengths = torch.tensor([n for _, n in blocks]).repeat(mc)
    n_draws = len(ends)
    g = torch.Generator().manual_seed(seed)
    u = block_rates(n_draws * (T // L), generator=g)
    masked, k = block_masks(n_draws, T, L, u, num_clean=T - lengths, generator=g)
    scored = (torch.arange(T)[None, :] >= (T - lengths)[:, None]).view(n_draws, -1, L).sum(-1)  # per L'-block

    def score(sl):
        x = val[(ends[sl].to(device) - T)[:, None] + torch.arange(T, device=device)]
        m = masked[sl].to(device)
        with autocast(device):
            logits = block_forward(model, x.masked_fill(m, model.config.mask_id), x, L)
        nelbo = block_nelbo_per_block(logits, x, m, k[sl].to(device), L).double()  # per char, per L'-block
        return (nelbo * scored[sl].to(device)).sum(1) / lengths[sl].to(device)
    per_draw = sum_over_ranks(sharded(n_draws, batch_size, shard, device, score), shard)
    return per_draw.view(mc, len(blocks)).mean(0)


EVAL_ORDERS = ("any", "l2r")  # a diffusion model's NELBO (every order), or its exact left-to-right NLL


def block_scores(model, val, context, mc=4, seed=1234, shard=Shard(), order="any"):
    """(per-block mean NLL or NELBO, characters scored per block) on the whole split. order
    (diffusion models): "any", the NELBO; "l2r", the exact left-to-right NLL. An AR model has
    one order and an exact NLL: `order` does not apply to it. shard: this process's share, and
    where its progress goes (`Shard`)."""
    if order not in EVAL_ORDERS:
        raise ValueError(f"--order must be one of {', '.join(EVAL_ORDERS)}, got {order!r}")
    if order == "l2r" and model.config.objective == "block":
        raise ValueError("--order l2r reads a plain diffusion model; a block model is scored by its NELBO")
    T = model.config.block_size
    blocks = eval_blocks(len(val), T, context)
    lengths = torch.tensor([float(L) for _, L in blocks])
    batch = 256 if val.device.type == "cuda" else 64
    if model.config.causal:
        lengths[0] = T - 1
        return ar_block_nll(model, val, T, blocks, batch, shard), lengths
    if order == "l2r":  # one pass per character: a bigger batch keeps a GPU busy
        return l2r_block_nll(model, val, T, blocks, 2 * batch, shard), lengths
    if model.config.objective == "block":
        return block_model_block_nll(model, val, T, blocks, mc, seed, batch, shard), lengths
    return diffusion_block_nll(model, val, T, blocks, mc, seed, batch, shard), lengths


def evaluate(model, val, context=0, mc=4, seed=1234, shard=Shard()):
    """(val NLL or NELBO in nats/char, standard error) of the whole split `val` at this context."""
    was_training = model.training
    model.eval()
    per_block, lengths = block_scores(model, val, context, mc, seed, shard)
    model.train(was_training)
    return summarize(per_block, lengths)


def format_eval(mean, se, causal, order="any"):
    name = "NLL" if causal else "left-to-right NLL (exact)" if order == "l2r" else "NELBO"
    return f"val {name} {mean:.4f} ± {se:.4f} nats/char ({mean / math.log(2):.4f} bits/char)"
