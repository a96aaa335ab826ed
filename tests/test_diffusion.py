"""diffusion.py, the masked-diffusion maths: the training masks and mask rates, the losses (NELBO,
mixed, BD3-LM block NELBO), and the estimators with context (NELBO, AR NLL, exact left-to-right
NLL, block model) against exact enumeration or one forward pass per case. Random tiny networks,
no training."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import diffusion
from conftest import VOCAB, perturbed_model, random_tiny_model
from diffusion import (MaskRate, block_causal_mask, block_diffusion_loss, block_diffusion_mask, block_forward,
                       block_masks, block_model_block_nll, block_rates, diffusion_block_nll, draw_masks,
                       draw_training_masks, eval_blocks, masked_nll_per_sequence, training_masks)
from model import ModelConfig, Transformer

T = 32  # the block-diffusion tests' context


def text(B=2, n=T, seed=1):
    return torch.randint(0, VOCAB - 1, (B, n), generator=torch.Generator().manual_seed(seed))


# -----------------------------------------------------------------------------
# Training masks and mask rates

def test_draw_masks_masks_exactly_k_positions_outside_the_clean_prefix():
    B, T = 500, 40
    g = torch.Generator().manual_seed(0)
    num_clean = torch.randint(0, T, (B,), generator=g)
    u = torch.rand(B, generator=g)
    masked, k = draw_masks(B, T, num_clean, u, generator=g)
    assert torch.equal(masked.sum(1), k)
    assert torch.equal(k, 1 + (u * (T - num_clean)).long())
    prefix = torch.arange(T)[None, :] < num_clean[:, None]
    assert not (masked & prefix).any()


def test_training_masks_fraction_is_uniform_on_average():
    # k ~ Uniform{1..L}: mean masked fraction (L + 1) / (2L), and every row has a mask
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4096, 64, dtype=torch.long)
    masked, _, k = training_masks(x, prefix_prob=0.0, generator=g)
    assert (k >= 1).all() and (k <= 64).all()
    assert abs(masked.float().mean().item() - 65 / 128) < 0.01
    # stratified over the batch: with 4096 rows, every k in 1..64 occurs exactly 64 times
    assert torch.equal(torch.bincount(k - 1, minlength=64), torch.full((64,), 64))


def test_training_masks_keep_a_clean_prefix_when_asked():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(2000, 32, dtype=torch.long)
    masked, _, _ = training_masks(x, prefix_prob=0.5, generator=g)
    first_masked_at_0 = masked[:, 0].float().mean().item()
    # without prefixes position 0 is masked half the time on average; with them far less
    assert first_masked_at_0 < 0.35


def test_block_masks_look_like_block_decoding():
    # every row: clean prefix, a block of 8, 16 or 32 with k in 1..len masks (the scored ones),
    # then all masks (hidden, not scored)
    g = torch.Generator().manual_seed(2)
    T = 64
    x = torch.zeros(3000, T, dtype=torch.long)
    hidden, scored, k = training_masks(x, prefix_prob=0.0, generator=g, block_prob=1.0)
    assert torch.equal(scored.sum(1), k) and not (scored & ~hidden).any()
    pos = torch.arange(T)
    tail = hidden & ~scored
    end = torch.where(tail.any(1), tail.float().argmax(1), torch.full((len(x),), T))
    assert torch.equal(tail, pos[None, :] >= end[:, None]), "the unscored masks are one suffix"
    first = scored.float().argmax(1)
    last = T - 1 - scored.flip(1).float().argmax(1)
    assert (last < end).all() and (end - first <= 32).all() and (k <= end - first).all()
    assert (end < T).float().mean() > 0.8  # most blocks end before the window does
    # the block length is visible where all its positions are masked: all three lengths occur
    full = tail.any(1) & (k == end - first)
    assert {8, 16, 32} <= set((end - first)[full].tolist())


def test_block_prob_and_prefix_prob_split_the_batch():
    g = torch.Generator().manual_seed(3)
    x = torch.zeros(4000, 64, dtype=torch.long)
    hidden, scored, _ = training_masks(x, prefix_prob=0.3, generator=g, block_prob=0.5)
    block_rows = (hidden & ~scored).any(1).float().mean().item()  # masked but unscored tail
    assert 0.4 < block_rows < 0.5  # block rows whose block ends before T (most of the 50%)
    clean_start = (~hidden[:, 0]).float().mean().item()
    assert clean_start > 0.75  # prefix rows and nearly all block rows keep position 0 clean


RATES = [MaskRate("bell"), MaskRate("clipped", 0.3, 0.8)]


@pytest.mark.parametrize("rate", RATES + [MaskRate()])
def test_draws_of_k_follow_the_chosen_distribution(rate):
    n, B = 40, 40000
    masks = draw_training_masks(torch.zeros(B, n, dtype=torch.long), 0.0, torch.Generator().manual_seed(0), rate=rate)
    assert torch.equal(masks.scored.sum(1), masks.k)
    expected = rate.k_probabilities(torch.tensor([n]), n)[0]
    observed = torch.bincount(masks.k - 1, minlength=n).float() / B
    assert (observed - expected).abs().max() < 0.004  # stratified draws: far tighter than iid sampling
    assert observed[expected == 0].sum() == 0, "no k of probability 0"
    if rate.dist == "bell":  # Beta(2, 2): mean 1/2, variance 1/20
        t = (masks.k.float() - 0.5) / n
        assert t.mean().item() == pytest.approx(0.5, abs=0.01) and t.var().item() == pytest.approx(0.05, abs=0.003)


@pytest.mark.parametrize("rate", RATES)
def test_elbo_weights_make_the_expected_loss_the_uniform_one(rate):
    """A fixed toy loss per k: weighted by P_uniform(k) / P(k), its mean under the rate's draws is
    the mean over k (the NELBO's form); for clipped, the mean over the k the range can draw."""
    n, B = 64, 200000
    f = lambda k: torch.log(k.double()) + torch.sin(k.double())  # any per-k loss
    ks = torch.arange(1, n + 1)
    support = rate.k_probabilities(torch.tensor([n]), n)[0] > 0
    target = f(ks)[support].mean().item()
    masks = draw_training_masks(torch.zeros(B, n, dtype=torch.long), 0.0, torch.Generator().manual_seed(1), rate=rate)
    weighted = (masks.weight.double() * f(masks.k)).mean().item()
    unweighted = f(masks.k).mean().item()
    assert weighted == pytest.approx(target, abs=1e-3)  # stratified draws: error ~1e-5 measured
    assert abs(unweighted - target) > 0.02, "the weights are what corrects it"
    if rate.dist == "bell":
        assert support.all() and target == pytest.approx(f(ks).mean().item())


def test_uniform_rate_weights_are_one_and_its_masks_unchanged():
    x = torch.zeros(512, 32, dtype=torch.long)
    old = diffusion.training_masks(x, 0.2, torch.Generator().manual_seed(4), 0.1)
    new = draw_training_masks(x, 0.2, torch.Generator().manual_seed(4), 0.1, MaskRate())
    assert all(torch.equal(a, b) for a, b in zip(old, new[:3])) and (new.weight == 1).all()


# -----------------------------------------------------------------------------
# Losses

@torch.no_grad()
def test_loss_weights_none_is_the_plain_mean_over_masked_characters():
    T = 16
    model = random_tiny_model(T)
    x = torch.randint(0, 65, (64, T))
    rate = MaskRate("bell")
    masks = draw_training_masks(x, 0.2, torch.Generator().manual_seed(2), rate=rate)
    logp = torch.log_softmax(model(x.masked_fill(masks.hidden, model.config.mask_id)).double(), -1)
    nll = -logp.gather(-1, x[..., None])[..., 0]
    plain = diffusion.diffusion_loss(model, x, model.config.mask_id, 0.2, torch.Generator().manual_seed(2),
                                     rate=rate, weights="none")
    elbo = diffusion.diffusion_loss(model, x, model.config.mask_id, 0.2, torch.Generator().manual_seed(2),
                                    rate=rate, weights="elbo")
    assert plain.item() == pytest.approx(((nll * masks.scored).sum() / masks.k.sum()).item(), abs=1e-5)
    per_row = (nll * masks.scored).sum(1) / masks.k
    assert elbo.item() == pytest.approx((per_row * masks.weight).mean().item(), abs=1e-5)


@torch.no_grad()
def test_mixed_loss_is_the_row_weighted_sum_of_both_objectives():
    T = 16
    model = random_tiny_model(T)
    x = torch.randint(0, 65, (10, T + 1))
    diffusion_part = lambda m, rows: diffusion.diffusion_loss(m, rows, m.config.mask_id, 0.0,
                                                              torch.Generator().manual_seed(3))
    mixed = diffusion.mixed_loss(model, x, 3, diffusion_part)
    logits = model(x[:3, :-1], causal=True)
    ar = F.cross_entropy(logits.flatten(0, 1), x[:3, 1:].flatten())
    assert mixed.item() == pytest.approx((0.3 * ar + 0.7 * diffusion_part(model, x[3:, :-1])).item(), abs=1e-5)


# -----------------------------------------------------------------------------
# The estimators with context

def exact_conditional_nelbo(model, x, context):
    """NELBO per block character by enumerating every non-empty mask pattern of the block
    x[:, context:] given the clean x[:, :context], computed from log-softmax directly (not with
    the loss function under test): the average over k = 1..L of the mean, over the C(L, k)
    patterns, of the mean -log p of the k masked characters."""
    L = x.size(1) - context
    total = 0.0
    for k in range(1, L + 1):
        per_pattern = []
        for positions in itertools.combinations(range(context, context + L), k):
            noisy = x.clone()
            noisy[0, list(positions)] = model.config.mask_id
            logp = torch.log_softmax(model(noisy)[0].double(), dim=-1)
            per_pattern.append(sum(-logp[i, x[0, i]].item() for i in positions) / k)
        total += sum(per_pattern) / len(per_pattern)
    return total / L


@torch.no_grad()
@pytest.mark.parametrize("context", [0, 3])
def test_monte_carlo_nelbo_matches_exact_enumeration(context):
    T = 7
    model = random_tiny_model(T)
    x = torch.randint(0, 65, (1, T))
    exact = exact_conditional_nelbo(model, x, context)

    def estimate(seed):  # 3000 draws in one batch: the masks are drawn up front, whatever the batch
        return diffusion.diffusion_block_nll(model, x[0], T, [(T, T - context)], mc=3000, seed=seed, batch_size=3000)
    per_block = estimate(5)
    # the error of the mean of 3000 stratified draws, measured on repeated seeds
    se = torch.stack([estimate(s)[0] for s in range(6, 14)]).std().item()
    assert 0 < se < 0.05
    assert abs(per_block[0].item() - exact) < 4 * se + 1e-3, (per_block[0].item(), exact, se)
    assert torch.equal(per_block, estimate(5))  # the same seed gives the same masks


@pytest.mark.parametrize("n,T,context", [(1000, 256, 0), (1000, 256, 128), (1000, 256, 192), (257, 256, 100),
                                         (111540, 256, 128)])
def test_eval_blocks_score_every_character_once_with_enough_context(n, T, context):
    blocks = diffusion.eval_blocks(n, T, context)
    scored = [i for end, length in blocks for i in range(end - length, end)]
    assert sorted(scored) == list(range(n)), "every character exactly once"
    assert blocks[0] == (T, T)
    for end, length in blocks[1:]:
        assert end <= n and T - length >= context and length <= T - context


def test_context_zero_reproduces_the_isolated_window_estimator():
    """The estimator before block chaining (every window of T scored alone, k stratified over
    all draws), written out independently: on a split that is a whole number of windows the
    chained estimator with C = 0 gives the same number."""
    T, mc, seed = 16, 3, 7
    model = random_tiny_model(T)
    val = torch.randint(0, 65, (T * 10,))
    starts = torch.arange(0, len(val), T).repeat(mc)
    n = len(starts)
    g = torch.Generator().manual_seed(seed)
    u = ((torch.arange(n) + torch.rand(n, generator=g)) / n)[torch.randperm(n, generator=g)]
    masked, k = draw_masks(n, T, torch.zeros(n, dtype=torch.long), u, generator=g)
    x = val[starts[:, None] + torch.arange(T)]
    with torch.no_grad():
        logp = torch.log_softmax(model(x.masked_fill(masked, model.config.mask_id)).double(), -1)
    nll = -logp.gather(-1, x[..., None])[..., 0]
    reference = ((nll * masked).sum(1) / k).mean().item()
    per_block, lengths = diffusion.block_scores(model, val, context=0, mc=mc, seed=seed)
    mean, se = diffusion.summarize(per_block, lengths)
    assert mean == pytest.approx(reference, abs=1e-6)  # fp32 logits
    assert 0 < se < 1


@torch.no_grad()
def test_ar_sliding_windows_give_each_character_its_preceding_context():
    """With context T - 1 (stride 1) every character i >= T is predicted from exactly the T
    characters before it, and character i < T from all of val[:i]: checked one by one."""
    T = 16
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=T, objective="ar")).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    val = torch.randint(0, 65, (50,))
    per_block, lengths = diffusion.block_scores(model, val, context=T - 1)
    mean, se = diffusion.summarize(per_block, lengths)
    nll = []
    for i in range(1, len(val)):
        logp = torch.log_softmax(model(val[None, max(0, i - T):i])[0, -1].double(), -1)
        nll.append(-logp[val[i]].item())
    assert lengths.sum() == len(val) - 1
    assert mean == pytest.approx(sum(nll) / len(nll), abs=1e-6)
    assert se > 0, "a real standard error, over blocks"


# -----------------------------------------------------------------------------
# The network read in one order: the exact left-to-right NLL, and the any-order identity that
# ties it to the NELBO

def order_nll(model, x, context, orders):
    """Exact NLL per character of the block x[:, context:] given the clean x[:, :context], read
    in each of `orders` (block positions; one row each, all read at once): all of them MASK at
    first, each predicted then revealed. One float64 value per order."""
    orders = torch.tensor([list(order) for order in orders])
    rows = torch.arange(len(orders))
    noisy = x.repeat(len(orders), 1)
    noisy[:, context:] = model.config.mask_id
    total = torch.zeros(len(orders), dtype=torch.float64)
    for step in range(orders.size(1)):
        i = orders[:, step]
        logp = torch.log_softmax(model(noisy)[rows, i].double(), dim=-1)
        total -= logp[rows, x[0, i]]
        noisy[rows, i] = x[0, i]
    return total / orders.size(1)


@torch.no_grad()
@pytest.mark.parametrize("n,T,context", [(64, 16, 0), (61, 16, 8), (40, 16, 15)])
def test_left_to_right_estimator_equals_a_loop_over_positions(n, T, context):
    """Every block, every character one by one: the window with MASK at the character and after it."""
    model = random_tiny_model(T)
    torch.manual_seed(1)
    val = torch.randint(0, 65, (n,))
    blocks = diffusion.eval_blocks(n, T, context)
    per_block = diffusion.l2r_block_nll(model, val, T, blocks, batch_size=7)  # batches cut across blocks
    expected = []
    for end, length in blocks:
        window = val[None, end - T:end]
        expected.append(order_nll(model, window, T - length, [range(T - length, T)])[0].item())
    assert torch.allclose(per_block, torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    scores, lengths = diffusion.block_scores(model, val, context, order="l2r")
    assert torch.allclose(scores, per_block, atol=1e-6) and lengths.sum() == n  # every character once


@torch.no_grad()
@pytest.mark.parametrize("context", [0, 2])
def test_mean_over_all_orders_equals_the_exact_nelbo(context):
    """A masked diffusion model is an any-order AR model: the mean of the exact NLLs of all L!
    orders of the block is its NELBO (every mask pattern enumerated), in float64."""
    L = 5
    model = random_tiny_model(context + L).double()
    torch.manual_seed(2)
    x = torch.randint(0, 65, (1, context + L))
    block = range(context, context + L)
    orders = list(itertools.permutations(block))
    assert len(orders) == math.factorial(L)
    any_order = order_nll(model, x, context, orders).mean().item()
    assert any_order == pytest.approx(exact_conditional_nelbo(model, x, context), abs=1e-9)
    left_to_right = diffusion.l2r_block_nll(model, x[0], context + L, [(context + L, L)])[0].item()
    assert left_to_right == pytest.approx(order_nll(model, x, context, [block])[0].item(), abs=1e-9)
    assert abs(left_to_right - any_order) > 1e-3, "one order is not the average of all"


# -----------------------------------------------------------------------------
# Block diffusion (BD3-LM): the attention masks, the vectorised loss against one forward per
# block, its two ends (L' = 1 and L' = T), evaluation

def test_block_causal_mask_hides_later_blocks():
    model, L = perturbed_model(8), 8
    x = text()
    y = x.clone()
    y[:, 2 * L + 3] = (x[:, 2 * L + 3] + 1) % (VOCAB - 1)  # one character of block 2
    mask = block_causal_mask(T, L)
    a, b = model(x, attn_mask=mask), model(y, attn_mask=mask)
    assert torch.equal(a[:, :2 * L], b[:, :2 * L]), "blocks 0 and 1 must not see block 2"
    assert not torch.allclose(a[:, 2 * L:3 * L], b[:, 2 * L:3 * L]), "block 2 sees itself"


def test_noisy_block_never_sees_its_own_clean_copy():
    """Under the [noisy ; clean] mask: changing block 2 in both copies changes no output of blocks
    0 and 1 (either copy); changing only its clean copy changes the noisy block 3, not the noisy
    block 2 (it would see its answer)."""
    model, L = perturbed_model(8), 8
    x = text()
    noisy = x.masked_fill(torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5, VOCAB - 1)
    mask, pos = block_diffusion_mask(T, L), torch.arange(T).repeat(2)
    run = lambda n, c: model(torch.cat([n, c], 1), attn_mask=mask, pos=pos)
    c2, n2 = x.clone(), noisy.clone()
    c2[:, 2 * L:3 * L] = (x[:, 2 * L:3 * L] + 1) % (VOCAB - 1)
    n2[:, 2 * L:3 * L] = c2[:, 2 * L:3 * L]
    base, both = run(noisy, x), run(n2, c2)
    for copy in (0, T):
        assert torch.equal(base[:, copy:copy + 2 * L], both[:, copy:copy + 2 * L])
    clean_only = run(noisy, c2)
    assert torch.equal(base[:, :3 * L], clean_only[:, :3 * L])
    assert not torch.allclose(base[:, 3 * L:T], clean_only[:, 3 * L:T])


def loop_over_blocks(model, x, masked, L):
    """The reference: one forward per block b on [clean blocks < b ; noisy block b] under the
    block-causal mask, keeping block b's logits."""
    noisy = x.masked_fill(masked, VOCAB - 1)
    out = []
    for b in range(T // L):
        inp = torch.cat([x[:, :b * L], noisy[:, b * L:(b + 1) * L]], 1)
        out.append(model(inp, attn_mask=block_causal_mask((b + 1) * L, L))[:, b * L:])
    return torch.cat(out, 1)


def per_block_loss(logits, x, masked, L):
    ce = F.cross_entropy(logits.flatten(0, 1), x.flatten(), reduction="none").view(x.shape)
    m = masked.float()
    return ((ce * m).view(len(x), -1, L).sum(-1) / m.view(len(x), -1, L).sum(-1)).mean()


@pytest.mark.parametrize("L", [4, 8])
def test_vectorised_loss_equals_a_loop_over_blocks(L):
    model, x = perturbed_model(L), text()
    loss = block_diffusion_loss(model, x, VOCAB - 1, L, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws as the loss makes
    masked, k = block_masks(2, T, L, block_rates(2 * T // L, generator=g), generator=g)
    assert torch.equal(masked.view(2, -1, L).sum(-1), k) and (k >= 1).all() and (k <= L).all()
    reference = loop_over_blocks(model, x, masked, L)
    torch.testing.assert_close(block_forward(model, x.masked_fill(masked, VOCAB - 1), x, L), reference,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, per_block_loss(reference, x, masked, L), atol=1e-5, rtol=1e-5)


def test_block_len_1_is_next_character_nll_from_a_mask_input():
    """L' = 1 reduces to an AR model that reads a MASK at the predicted position: the loss is
    mean over i = 0..T-1 of -log p(x_i | x_<i), p from the output at position i of the causal
    network run on [x_0 .. x_{i-1}, MASK] (x_0 predicted from a lone MASK)."""
    model, x = perturbed_model(1), text()
    loss = block_diffusion_loss(model, x, VOCAB - 1, 1, generator=torch.Generator().manual_seed(0))
    nll = []
    for i in range(T):
        inp = torch.cat([x[:, :i], torch.full((2, 1), VOCAB - 1)], 1)
        logits = model(inp, attn_mask=torch.ones(i + 1, i + 1, dtype=torch.bool).tril())[:, i]
        nll.append(F.cross_entropy(logits, x[:, i], reduction="none"))
    torch.testing.assert_close(loss, torch.stack(nll).mean(), atol=1e-5, rtol=1e-5)


def test_block_len_T_is_the_plain_masked_diffusion_nelbo():
    model, x = perturbed_model(T), text()
    loss = block_diffusion_loss(model, x, VOCAB - 1, T, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    masked, k = block_masks(2, T, T, block_rates(2, generator=g), generator=g)
    plain = model(x.masked_fill(masked, VOCAB - 1))  # one bidirectional pass, no [noisy ; clean]
    torch.testing.assert_close(loss, masked_nll_per_sequence(plain, x, masked, k[:, 0]).mean(), atol=1e-5,
                               rtol=1e-5)


def test_clipped_mask_rates_stay_in_range():
    u = block_rates(400, 0.3, 0.8, generator=torch.Generator().manual_seed(0))
    assert 0.3 <= u.min() and u.max() < 0.8
    masked, k = block_masks(100, 40, 10, u, generator=torch.Generator().manual_seed(0))
    assert k.min() >= 4 and k.max() <= 9  # k = 1 + floor(u * 10)


def test_block_evaluation_with_block_len_T_is_the_diffusion_estimate():
    """Same seed, same masks: a block model with L' = T scores exactly as the plain estimator."""
    model = perturbed_model(T)
    val = text(1, 400, seed=7)[0]
    blocks = eval_blocks(len(val), T, 8)
    a = block_model_block_nll(model, val, T, blocks, mc=2, seed=11)
    b = diffusion_block_nll(model, val, T, blocks, mc=2, seed=11)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_block_evaluation_sums_the_blocks_conditional_nelbos():
    """With context C that is not a multiple of L', the straddling L'-block keeps its context
    characters clean and scores the rest; the estimate is the per-character mean of the sum of
    the L'-blocks' NELBOs, checked against one forward per L'-block for the same masks."""
    L, C = 8, 12
    model = perturbed_model(L)
    val = text(1, 200, seed=3)[0]
    blocks = eval_blocks(len(val), T, C)
    got = block_model_block_nll(model, val, T, blocks, mc=1, seed=4)
    g = torch.Generator().manual_seed(4)
    lengths = torch.tensor([n for _, n in blocks])
    masked, k = block_masks(len(blocks), T, L, block_rates(len(blocks) * T // L, generator=g),
                            num_clean=T - lengths, generator=g)
    for i, (end, n) in enumerate(blocks):
        x = val[end - T:end][None]
        scored = (torch.arange(T) >= T - n).view(-1, L).sum(-1)
        assert not masked[i, :T - n].any() and torch.equal(masked[i].view(-1, L).any(1), scored > 0)
        logits = loop_over_blocks(model, x, masked[i:i + 1], L)
        ce = F.cross_entropy(logits[0], x[0], reduction="none")
        m = masked[i].float()
        per_block = (ce * m).view(-1, L).sum(-1) / m.view(-1, L).sum(-1).clamp(min=1)
        torch.testing.assert_close(got[i], ((per_block * scored).sum() / n).double(), atol=1e-5, rtol=1e-5)


def test_block_evaluation_keeps_no_graph():
    # without no_grad every batch kept its autograd graph (RESULTS.md, 2026-12-01)
    model = perturbed_model(8)
    val = text(1, 200, seed=3)[0]
    got = block_model_block_nll(model, val, T, eval_blocks(len(val), T, 12), mc=1, seed=4, batch_size=2)
    assert not got.requires_grad and got.grad_fn is None
