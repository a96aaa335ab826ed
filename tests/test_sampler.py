import shutil
from dataclasses import replace

import pytest
import torch

from conftest import VOCAB, perturbed_model
from corpus import decode, encode
from devices import native_bf16
from model import KVCache
from sampler import (SamplerConfig, commit_schedule, generate, generate_steps, plan_blocks, plan_generation,
                     split_steps)


def opts(**given):
    """A config for the behaviour under test: the plainest sampler (confidence order, linear
    schedule, temperature 1, no remasking) changed by `given`."""
    base = dict(order="confidence", schedule="linear", temperature=1.0, remask=0.0, remask_by="prob")
    return SamplerConfig.from_options(**{**base, **given})


def canvas_for(chars, prompt, length, batch=1):
    ids = encode(prompt, chars, allow_mask=True)
    ids += [len(chars)] * (length - len(ids))
    return torch.tensor([ids] * batch)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("n,steps", [(256, 64), (100, 7), (10, 10), (5, 1), (33, 32)])
def test_commit_schedule_sums_to_n_with_at_least_one_per_step(schedule, n, steps):
    counts = commit_schedule(n, steps, schedule)
    assert len(counts) == steps and sum(counts) == n and min(counts) >= 1


def test_cosine_schedule_commits_few_first_and_many_last():
    counts = commit_schedule(256, 16, "cosine")
    assert counts[0] < counts[-1]
    assert 2 * sum(counts[:8]) < sum(counts[8:])


def test_sampler_is_deterministic_under_a_seed(tiny_model):
    model, chars = tiny_model
    c = canvas_for(chars, "ROMEO:", 32)
    a, _ = generate(model, c, opts(steps=8, temperature=1.0), 3)
    b, _ = generate(model, c, opts(steps=8, temperature=1.0), 3)
    d, _ = generate(model, c, opts(steps=8, temperature=1.0), 4)
    assert torch.equal(a, b) and not torch.equal(a, d)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_steps_unmask_everything_following_the_schedule(tiny_model, schedule):
    model, chars = tiny_model
    c = canvas_for(chars, "KING:", 32, batch=3)
    mask_id = len(chars)
    before = c.clone()
    per_step = []
    for state in generate_steps(model, c, opts(steps=9, temperature=1.0, schedule=schedule), 0):
        assert not (state.committed & (before != mask_id)).any(), "only masked positions are committed"
        per_step.append(state.committed.sum(1).tolist())
        before = state.canvas.clone()
    assert len(per_step) == 9
    assert [row[0] for row in per_step] == commit_schedule(27, 9, schedule)
    assert all(len(set(row)) == 1 for row in per_step), "every sample commits the same count"
    assert (before != mask_id).all()
    assert decode(before[0, :5].tolist(), chars) == "KING:"


def test_temperature_zero_commits_the_argmax(tiny_model):
    model, chars = tiny_model
    c = canvas_for(chars, "", 32)
    for state in generate_steps(model, c, opts(steps=32, temperature=0, precision="fp32"), 0):
        with torch.no_grad():
            probs = model(c).softmax(-1)
        greedy = probs.argmax(-1)
        assert torch.equal(state.canvas[state.committed], greedy[state.committed])
        # one per step, and at a position the model is most sure of (ties are possible)
        confidence = probs.max(-1).values.masked_fill(c != len(chars), -1)
        assert state.committed.sum() == 1
        assert confidence[state.committed].item() == pytest.approx(confidence.max().item(), abs=1e-6)
        c = state.canvas.clone()


@pytest.fixture
def drawn_confidences(monkeypatch):
    """A list that receives the confidences of every draw the sampler makes."""
    import denoise
    seen = []
    real = denoise.draw_characters

    def spy(logits, temperature, top_k, top_p, u):
        drawn, conf = real(logits, temperature, top_k, top_p, u)
        seen.append(conf.clone())
        return drawn, conf
    monkeypatch.setattr(denoise, "draw_characters", spy)
    return seen


def test_threshold_commits_every_confident_position_and_at_least_one(tiny_model, drawn_confidences):
    model, chars = tiny_model
    seen = drawn_confidences
    c = canvas_for(chars, "", 32, batch=2)
    tau = 0.1
    for state in generate_steps(model, c, opts(threshold=tau, temperature=0.7), 1):
        masked_before = c == len(chars)
        conf = seen[-1]
        expected = masked_before & (conf >= tau)
        for row in range(2):
            if masked_before[row].any() and not expected[row].any():
                expected[row, conf[row].masked_fill(~masked_before[row], -1).argmax()] = True
        assert torch.equal(state.committed, expected)
        c = state.canvas.clone()
    assert (c != len(chars)).all()
    assert state.nfe == len(seen) < 32, "confident steps commit several characters"


def test_infilling_keeps_known_characters_and_fills_every_gap(tiny_model):
    model, chars = tiny_model
    prompt = "ROMEO:\nBut soft, what ____ thro_gh"
    c = canvas_for(chars, prompt, len(prompt))
    out, nfe = generate(model, c, opts(steps=5, temperature=1.0), 0)
    text = decode(out[0].tolist(), chars)
    assert len(text) == len(prompt) and nfe == 5
    assert all(a == b for a, b in zip(text, prompt) if b != "_")
    assert "_" not in text


def test_long_generation_slides_a_window_and_keeps_context(tiny_model):
    model, chars = tiny_model
    c = canvas_for(chars, "First Citizen:\n", 100)  # context is 32
    windows, last = [], None
    for state in generate_steps(model, c, opts(steps=40, temperature=1.0), 0):
        windows.append(state.window)
        last = state
    text = decode(last.canvas[0].tolist(), chars)
    assert len(text) == 100 and text.startswith("First Citizen:\n") and "_" not in text
    assert last.nfe == 40
    starts = sorted(set(w[0] for w in windows))
    assert len(starts) > 1 and all(e - s == 32 for s, e in set(windows))
    # every later window starts 16 characters (half the context) before its first gap
    assert starts[1] == 32 - 16


def test_batched_and_single_sampling_agree_under_a_seed(tiny_model):
    model, chars = tiny_model
    batch, _ = generate(model, canvas_for(chars, "A", 32, batch=3), opts(steps=8, temperature=1.0), 10)
    for i in range(3):
        single, _ = generate(model, canvas_for(chars, "A", 32), opts(steps=8, temperature=1.0), 10 + i)
        assert torch.equal(batch[i], single[0])


def test_top_k_limits_the_draw_to_the_k_most_likely(tiny_model):
    model, chars = tiny_model
    c = canvas_for(chars, "", 32, batch=4)
    for state in generate_steps(model, c, opts(steps=8, temperature=2.0, top_k=2, precision="fp32"), 0):
        with torch.no_grad():
            top2 = model(c).topk(2, dim=-1).indices
        drawn = state.canvas[..., None].expand_as(top2)
        assert (drawn == top2).any(-1)[state.committed].all()
        c = state.canvas.clone()


@pytest.mark.parametrize("order", ["random", "noisy", "l2r"])
def test_other_orders_follow_the_schedule_and_unmask_everything(tiny_model, order):
    model, chars = tiny_model
    c = canvas_for(chars, "KING:", 32, batch=2)
    counts, last = [], None
    for state in generate_steps(model, c, opts(steps=9, temperature=1.0, order=order), 0):
        counts.append(state.committed.sum(1).tolist())
        last = state
    assert [row[0] for row in counts] == commit_schedule(27, 9) and all(a == b for a, b in counts)
    assert (last.canvas != len(chars)).all() and decode(last.canvas[0, :5].tolist(), chars) == "KING:"
    confident, _ = generate(model, c, opts(steps=9, temperature=1.0), 0)
    assert not torch.equal(confident, last.canvas), "a different order gives different text"


def test_bf16_forward_passes_on_cpu_still_unmask_everything(tiny_model):
    model, chars = tiny_model
    c = canvas_for(chars, "A", 32)
    fp32, _ = generate(model, c, opts(steps=8, precision="fp32"), 0)
    auto, _ = generate(model, c, opts(steps=8), 0)
    bf16, nfe = generate(model, c, opts(steps=8, precision="bf16"), 0)
    assert torch.equal(auto, bf16 if native_bf16(torch.device("cpu")) else fp32)
    assert nfe == 8 and (bf16 != len(chars)).all() and bf16[0, 0] == c[0, 0]


def test_rows_with_different_masks_are_rejected(tiny_model):
    model, chars = tiny_model
    c = canvas_for(chars, "", 32, batch=2)
    c[1, 0] = 0
    with pytest.raises(ValueError):
        generate(model, c, opts(steps=4))


def test_remasking_reopens_the_least_likely_and_keeps_the_schedule(tiny_model, drawn_confidences):
    model, chars = tiny_model
    mask_id = len(chars)
    seen = drawn_confidences
    c = canvas_for(chars, "KING:", 32, batch=2)
    counts = commit_schedule(27, 9)
    written_prob = torch.zeros(c.shape)  # probability each written character was drawn with
    before, n_reopened = c.clone(), 0
    for step, state in enumerate(generate_steps(model, c, opts(steps=9, temperature=1.0, remask=1.0), 0)):
        canvas, reopened = state.canvas, state.reopened
        assert torch.equal(reopened, (before != mask_id) & (canvas == mask_id))
        # net progress follows the schedule; each step re-opens what the rule allows
        done = sum(counts[:step])
        expected = min(counts[step], done, 27 - done - counts[step])
        assert ((before == mask_id).sum(1) - (canvas == mask_id).sum(1)).tolist() == [counts[step]] * 2
        assert reopened.sum(1).tolist() == [expected] * 2
        for row in range(2):  # the re-opened are the written characters drawn least likely
            written = (before[row] != mask_id) & (c[row] == mask_id)
            if expected:
                lowest = written_prob[row].masked_fill(~written, float("inf")).topk(expected, largest=False)
                assert set(lowest.indices.tolist()) == set(reopened[row].nonzero().flatten().tolist())
        lo, hi = state.block  # the draws cover the block's columns
        drawn = torch.zeros(c.shape)
        drawn[:, lo:hi] = seen[-1]
        written_prob = torch.where(state.committed, drawn, written_prob)
        n_reopened += int(reopened.sum())
        before = canvas.clone()
    assert step == 8 and n_reopened > 0
    assert (before != mask_id).all() and decode(before[0, :5].tolist(), chars) == "KING:"
    plain, _ = generate(model, c, opts(steps=9, temperature=1.0), 0)
    assert not torch.equal(plain, before), "remasking changes the text"


@pytest.mark.parametrize("steps,sizes", [(64, [32] * 7), (64, [224]), (8, [30, 30, 40]), (3, [10, 1, 1]),
                                         (2, [5, 5, 5]), (500, [3, 4])])
def test_steps_split_over_blocks_sum_exactly_when_they_can(steps, sizes):
    alloc = split_steps(steps, sizes)
    assert all(1 <= a <= s for a, s in zip(alloc, sizes))
    assert sum(alloc) == min(max(steps, len(sizes)), sum(sizes))


def test_a_short_last_window_gets_a_pass_per_character():
    """A prompt plus 256 characters spills a few characters past the context; proportional
    shares gave them one or two passes and the tail came out garbled."""
    assert split_steps(64, [250, 6]) == [58, 6]
    assert split_steps(64, [32] * 8) == [8] * 8  # equal blocks: equal passes
    big, small = split_steps(40, [200, 50])
    assert big > small and big / small < 200 / 50  # more passes for more masks, less than in proportion


def test_blocks_cover_the_masks_left_to_right_inside_their_window():
    masked = list(range(5, 100)) + [120, 121]
    plan = plan_blocks(masked, N=130, T=32, block=8, keep=24)
    covered = [c for start, end, first, block_end, n in plan for c in masked if first <= c < block_end]
    assert covered == masked and sum(p[4] for p in plan) == len(masked)
    for start, end, first, block_end, n in plan:
        assert end - start == 32 and start <= first < block_end <= end and block_end - first <= 8
        assert first - start == min(24, first) or end == 130  # the context kept before the block


@torch.no_grad()
@pytest.mark.parametrize("lo,hi", [(8, 16), (0, 32), (30, 32)])
def test_cached_pass_equals_the_full_pass_on_the_state_it_was_built_from(tiny_model, lo, hi):
    model, chars = tiny_model
    x = canvas_for(chars, "ROMEO:\nWhat light", 32, batch=2)
    cache = KVCache()
    full = model(x, cache=cache)
    part = model(x[:, lo:hi], cache=cache, start=lo)
    assert torch.allclose(part, full[:, lo:hi], atol=1e-5)


@torch.no_grad()
def test_a_pass_on_scattered_positions_equals_the_full_pass_on_the_state_it_was_built_from(tiny_model):
    model, chars = tiny_model
    x = canvas_for(chars, "ROMEO:\nWhat light", 32, batch=2)
    cache = KVCache()
    full = model(x, cache=cache)
    positions = torch.tensor([[30, 7, 18], [2, 25, 19]])  # any order, different per row
    part = model(x.gather(1, positions), cache=cache, start=positions)
    assert torch.allclose(part, full.gather(1, positions[..., None].expand_as(part)), atol=1e-5)


@torch.no_grad()
def test_dual_cache_stays_close_to_the_full_pass_as_the_block_fills(tiny_model):
    """Stale keys/values outside the block are the dual cache's approximation: after half the
    block is written, the block's probabilities move by less than 0.05 on average."""
    model, chars = tiny_model
    x = canvas_for(chars, "ROMEO:\nWhat light through yonder", 32)
    cache = KVCache()
    model(x, cache=cache)  # built with the block [16, 24) all masks
    filled = x.clone()
    filled[0, 16:20] = torch.tensor(encode("wind", chars))
    cached = model(filled[:, 16:24], cache=cache, start=16).softmax(-1)
    exact = model(filled)[:, 16:24].softmax(-1)
    assert 0 < (cached - exact).abs().sum(-1).mean() / 2 < 0.05


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_block_decoding_writes_only_inside_the_current_block_left_to_right(tiny_model, cache):
    model, chars = tiny_model
    c = canvas_for(chars, "KING:", 32, batch=2)
    mask_id = len(chars)
    last_block, n = (0, 0), 0
    for state in generate_steps(model, c, opts(steps=12, temperature=0.8, block=8, cache=cache), 0):
        lo, hi = state.block
        written = state.committed.any(0).nonzero().flatten()
        assert len(written) and lo <= written.min() and written.max() < hi and hi - lo <= 8
        assert lo >= last_block[0], "blocks go left to right"
        assert (state.canvas[:, :lo] != mask_id).all(), "everything before the block is written"
        last_block, n = (lo, hi), n + 1
    assert n == state.nfe == 12
    assert (state.canvas != mask_id).all() and decode(state.canvas[0, :5].tolist(), chars) == "KING:"


@pytest.mark.parametrize("cache", ["sparse", "delayed"])
@pytest.mark.parametrize("order,block", [("random", None), ("spread", None), ("l2r", None), ("random", 16)])
def test_sparse_cache_runs_full_passes_every_refresh_and_fills_every_mask(tiny_model, order, block, cache):
    model, chars = tiny_model
    c = canvas_for(chars, "KING:", 32, batch=2)  # the tiny model's context
    calls = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(args[0].size(1)),
                                           with_kwargs=True)
    try:
        out, nfe = generate(model, c, opts(steps=16, temperature=1.0, order=order, remask=0.5, block=block, cache=cache, refresh=4), 3)
    finally:
        hook.remove()
    assert nfe == len(calls) == 16
    full = [i for i, n in enumerate(calls) if n == 32]
    if block is None:
        assert full == [0, 4, 8, 12]
    else:  # each block starts with a full pass, then one every 4 steps
        assert len(full) >= 2 and full[0] == 0
    assert all(n < 32 for i, n in enumerate(calls) if i not in full)
    assert (out != len(chars)).all() and decode(out[0, :5].tolist(), chars) == "KING:"


@pytest.mark.parametrize("cache", ["sparse", "delayed"])
@pytest.mark.parametrize("order", ["random", "l2r"])
def test_sparse_cache_with_refresh_1_is_the_uncached_sampler(tiny_model, order, cache):
    model, chars = tiny_model
    c = canvas_for(chars, "KING:", 40, batch=2)
    plain, _ = generate(model, c, opts(steps=10, temperature=1.0, remask=0.5, order=order), 5)
    every_step, _ = generate(model, c, opts(steps=10, temperature=1.0, remask=0.5, order=order, cache=cache, refresh=1), 5)
    assert torch.equal(plain, every_step)


@pytest.mark.parametrize("halo", [0, 2])
@pytest.mark.parametrize("cache", ["sparse", "delayed"])
def test_a_sparse_pass_runs_what_it_writes_and_what_changed_since_the_cache_saw_it(tiny_model, cache, halo):
    # sparse: the cache holds the last full pass's keys/values, so every position changed since
    # then runs again at every step; delayed: each pass stores what it computed, so a changed
    # position runs in the step after its change, and the passes are smaller; a halo runs the
    # `halo` positions each side of a changed one too (within the block: the prompt never runs again)
    model, chars = tiny_model
    c = canvas_for(chars, "KING:", 32, batch=2)  # one window, the block from column 5
    starts, sizes = [], []

    def record(mod, args, kwargs):
        starts.append(kwargs.get("start")), sizes.append(args[0].size(1))
    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    config = opts(steps=24, temperature=1.0, order="random", remask=0.5, cache=cache, refresh=8, halo=halo)
    try:
        steps = [(s.committed.clone(), s.reopened.clone()) for s in generate_steps(model, c, config, 3)]
    finally:
        hook.remove()
    for i, start in enumerate(starts):
        if i % 8 == 0:
            assert sizes[i] == 32, "a full pass every refresh"
            continue
        ran = torch.zeros(c.shape, dtype=torch.bool).scatter(1, start, True)
        since = i - 1 if cache == "delayed" else i - i % 8
        changed = torch.stack([w | r for w, r in steps[since:i]]).any(0)
        need = steps[i][0] | changed
        for row, column in changed.nonzero().tolist():
            need[row, max(5, column - halo):column + halo + 1] = True
        assert (ran | ~need).all(), f"step {i}: a position it writes, that changed or next to a change did not run"
    # the host's bound on a pass's positions: the delayed cache's is about half the sparse one's
    bound = {kind: sum(plan_generation(model, c, replace(config, cache=kind), 3).blocks[0].run_distinct[1:8])
             for kind in ("sparse", "delayed")}
    assert bound["delayed"] < 0.6 * bound["sparse"], bound
    if halo:  # a halo runs more: the bound grows with it
        plain = sum(plan_generation(model, c, replace(config, halo=0), 3).blocks[0].run_distinct[1:8])
        assert sum(plan_generation(model, c, config, 3).blocks[0].run_distinct[1:8]) > plain


@pytest.mark.parametrize("steps", [None, 7])
def test_l2r_order_commits_the_leftmost_masked_positions_first(tiny_model, steps):
    """steps = the masked count: each pass writes exactly the leftmost still-masked position, as
    the AR model does; fewer steps: each pass writes the leftmost `count` of the schedule."""
    model, chars = tiny_model
    mask_id = len(chars)
    c = canvas_for(chars, "KI_G:__e _", 32, batch=2)  # holes inside the prompt too
    n_masked = int((c[0] == mask_id).sum())
    steps = steps or n_masked
    before, per_pass = c.clone(), []
    for state in generate_steps(model, c, opts(steps=steps, temperature=1.0, order="l2r"), 0):
        still = (before == mask_id).nonzero()[:, 1].view(2, -1)  # each row's masked columns, in order
        written = state.committed.nonzero()[:, 1].view(2, -1)
        assert torch.equal(written, still[:, :written.size(1)]), "the leftmost ones"
        per_pass.append(written.size(1))
        before = state.canvas.clone()
    assert per_pass == ([1] * n_masked if steps == n_masked else commit_schedule(n_masked, steps))
    assert (before != mask_id).all() and decode(before[0, :5].tolist(), chars)[:2] == "KI"


def test_spread_order_writes_far_apart_positions_together(tiny_model):
    model, chars = tiny_model
    c = canvas_for(chars, "", 32)
    gaps = []
    for state in generate_steps(model, c, opts(steps=8, temperature=1.0, order="spread", schedule="linear"), 0):
        written = state.committed[0].nonzero().flatten()
        if state.nfe <= 4:  # while at most half is written, the steps' positions are >= 4 apart
            gaps.append(int(torch.diff(written.sort().values).min()))
    assert min(gaps) >= 4


def test_long_text_through_blocks_is_continuous_and_of_the_asked_length(tiny_model):
    model, chars = tiny_model
    c = canvas_for(chars, "ROMEO:", 150)
    out, nfe = generate(model, c, opts(steps=40, temperature=0.8, block=16, cache="dual"), 1)
    text = decode(out[0].tolist(), chars)
    assert len(text) == 150 and text.startswith("ROMEO:") and "_" not in text
    assert nfe == 40, "exactly the asked passes: there are fewer blocks than steps"


# -----------------------------------------------------------------------------
# A block-diffusion model (--objective block): its exact cache, each step on its block alone

def block_text(B, n, seed=1):
    return torch.randint(0, VOCAB - 1, (B, n), generator=torch.Generator().manual_seed(seed))


BLOCK_MODEL_SETTINGS = [dict(), dict(threshold=0.6), dict(order="random", top_k=8, top_p=0.9, remask=0.0),
                        dict(order="confidence", temperature=0.0, context_keep=8)]


@pytest.mark.parametrize("options", BLOCK_MODEL_SETTINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_cached_block_sampling_equals_uncached_token_for_token(options):
    """The exact cache (clean blocks' keys/values computed once, each step on the block alone)
    against the full window under the block-causal mask every step: the same text, past the
    context too (the window slides by whole blocks), from a prompt that ends inside a block.
    In fp32: under bf16 (precision auto, on a CPU with native bf16) the block alone against the
    cache and the masked window round differently, and a draw near a top-k/top-p edge or a
    CDF step can then flip a character."""
    options = {**options, "precision": "fp32"}
    model, L = perturbed_model(8), 8
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # less peaked: the samplers' draws matter
    canvas = block_text(3, 84, seed=9)
    canvas[:, 5:] = VOCAB - 1
    widths = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: widths.append(
        (args[0].size(1), kwargs.get("attn_mask") is not None)), with_kwargs=True)
    exact, nfe = generate(model, canvas, SamplerConfig.from_options(cache="exact", steps=None if "threshold" in options
                                                                    else 40, **options), seed=3)
    hook.remove()
    plain, nfe_plain = generate(model, canvas, SamplerConfig.from_options(
        steps=None if "threshold" in options else 40, **options), seed=3)
    assert (exact != VOCAB - 1).all() and torch.equal(exact[:, :5], canvas[:, :5])
    assert torch.equal(exact, plain) and nfe == nfe_plain
    steps = [w for w, masked in widths if not masked]  # the denoising passes (cache fills carry the mask)
    assert len(steps) == nfe + ("remask" not in options and "threshold" not in options and
                                options.get("remask", 0.5) > 0)  # + the prior's pass (remask by pmi)
    assert set(steps) == {L, 84 % L} and steps[-1] == 84 % L  # L columns a pass; the canvas ends inside a block


def test_block_model_sampler_rules():
    model = perturbed_model(8)
    canvas = block_text(1, 40)
    canvas[:, 4:] = VOCAB - 1
    with pytest.raises(ValueError, match="blocks of its block_len 8"):
        generate(model, canvas, SamplerConfig(block=4))
    with pytest.raises(ValueError, match="exact"):
        generate(model, canvas, SamplerConfig(block=8, cache="dual"))
    with pytest.raises(ValueError, match="needs a block model"):
        generate(perturbed_model(0), canvas, SamplerConfig(cache="exact"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_of_the_exact_cache_writes_what_the_ungraphed_exact_cache_writes():
    """A block's shapes are static, so a block model's cached generation is one graph; fp32,
    past the context (the window slides by whole blocks)."""
    model = perturbed_model(8).cuda()
    canvas = block_text(2, 84, seed=9).cuda()
    canvas[:, 5:] = VOCAB - 1
    config = dict(cache="exact", steps=40, precision="fp32", order="random", remask=0.0)
    plain, _ = generate(model, canvas, SamplerConfig.from_options(**config), seed=3)
    for seed in (3, 3, 4):  # the capture, a replay, a replay with another seed
        graphed, nfe = generate(model, canvas, SamplerConfig.from_options(cuda_graph=True, **config), seed=seed)
        expected = plain if seed == 3 else generate(model, canvas, SamplerConfig.from_options(**config), seed=4)[0]
        assert nfe == 40 and torch.equal(graphed, expected)


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    from denoise import Noise, draw_characters
    logits = torch.tensor([[[2.0, 1.0, 0.5, -1.0]]]).log_softmax(-1)  # p = 0.61, 0.22, 0.14, 0.03

    def drawn(p):
        return {draw_characters(logits, 1.0, None, p, Noise(i, 1, "cpu").uniform(1))[0].item() for i in range(300)}
    assert drawn(0.6) == {0}
    assert drawn(0.8) == {0, 1}
    assert drawn(0.9) == {0, 1, 2}
    assert drawn(1.0) == {0, 1, 2, 3}


def test_vanishing_temperature_and_top_p_tend_to_the_greedy_draw():
    # 1e-300 is 0 in float32: it used to divide by zero (NaN) and drop every character (newlines)
    from denoise import draw_characters
    logits = torch.randn(3, 7, 20, generator=torch.Generator().manual_seed(0))
    u = torch.rand(3, 7, generator=torch.Generator().manual_seed(1))
    greedy = logits.argmax(-1)
    assert torch.equal(draw_characters(logits, 1e-300, None, None, u)[0], greedy)
    assert torch.equal(draw_characters(logits, 1.0, None, 1e-300, u)[0], greedy)
    assert torch.equal(draw_characters(logits, 1e-300, None, 1e-300, u)[0], greedy)


def test_noise_is_uniform_independent_and_the_same_for_a_row_in_any_batch():
    from denoise import Noise
    u = Noise(0, 4, "cpu").uniform(50_000)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    counts = torch.histc(u, bins=10, min=0, max=1)
    assert ((counts - 20_000).abs() < 800).all()  # chi-by-eye: each decile within 4 sd
    assert abs(torch.corrcoef(u)[0, 1].item()) < 0.02  # rows are independent
    assert abs(torch.corrcoef(torch.stack([u[0, :-1], u[0, 1:]]))[0, 1].item()) < 0.02  # neighbours too
    batch, single = Noise(5, 3, "cpu"), Noise(7, 1, "cpu")
    for _ in range(3):  # row 2 of seed 5 is the one row of seed 7, draw after draw
        assert torch.equal(batch.uniform(100)[2], single.uniform(100)[0])
    assert not torch.equal(Noise(1, 1, "cpu").uniform(100), Noise(2, 1, "cpu").uniform(100))


def test_drawn_characters_follow_the_distribution():
    from denoise import Noise, draw_characters
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = p.log().expand(1, 20_000, 4)
    chars, conf = draw_characters(logits, 1.0, None, None, Noise(0, 1, "cpu").uniform(20_000))
    freq = torch.bincount(chars[0], minlength=4) / 20_000
    assert (freq - p).abs().max() < 0.012
    assert torch.allclose(conf[0], p[chars[0]])


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler")
@pytest.mark.parametrize("order", ["random", "spread"])
def test_compiled_step_writes_what_the_eager_step_writes(tiny_model, order):
    # denoise_step under torch.compile is one graph; on CPU in fp32 it makes the same choices
    model, chars = tiny_model
    mask_id = model.config.mask_id
    canvas = torch.tensor([encode("KING:\n", chars) + [mask_id] * 40] * 2)
    kwargs = dict(steps=12, temperature=1.0, order=order, remask=0.5, schedule="cosine", precision="fp32")
    eager, _ = generate(model, canvas, opts(**kwargs), 5)
    compiled, nfe = generate(model, canvas, opts(compile="default", **kwargs), 5)
    assert nfe == 12 and torch.equal(eager, compiled)


@pytest.mark.parametrize("top_k", [None, 5])
def test_remask_by_ratio_scores_the_drawn_character_against_the_best(top_k):
    # prob ranks re-opening by p(drawn); ratio by p(drawn) / p(best): a position with many good
    # options (flat distribution) is not re-opened just for being uncertain
    from denoise import Noise, Pass, StepState, denoise_step
    from sampler import StepCounts
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 12) * 2

    class Stub:  # a "model" that returns these logits, with mask id 12
        config = type("Config", (), {"mask_id": 12})

        def __call__(self, x, cache=None, start=0):
            return logits
    region = torch.full((2, 6), 12)  # all masked
    counts = StepCounts(*torch.tensor([6.0, 0.0, 1.0]))  # commit all six, re-open none
    keys = Noise(3, 2, "cpu").keys(1)[0]
    prior = torch.rand(12).softmax(0)
    out = {}
    for by in ("prob", "ratio", "pmi"):
        config = SamplerConfig(temperature=1.3, top_k=top_k, order="random", remask_by=by)
        state = StepState(region, region == 12, torch.zeros(2, 6), keys, counts)
        new, commit, _, score, _ = denoise_step(Stub(), Pass(region, None, 0, 0, 6), state, config, prior)
        assert commit.all()
        out[by] = (new, score)
    assert torch.equal(out["prob"][0], out["ratio"][0])  # the same characters are drawn
    assert torch.equal(out["prob"][0], out["pmi"][0])
    p = (logits / 1.3).softmax(-1)
    if top_k:
        p = p.masked_fill(p < p.topk(top_k, -1).values[..., -1:], 0)
        p = p / p.sum(-1, keepdim=True)
    drawn = p.gather(-1, out["prob"][0][..., None]).squeeze(-1)
    assert torch.allclose(out["prob"][1], drawn, atol=1e-6)
    assert torch.allclose(out["ratio"][1], drawn / p.amax(-1), atol=1e-5)
    assert torch.allclose(out["pmi"][1], drawn / prior[out["prob"][0]], atol=1e-5)


def test_char_prior_is_the_models_all_mask_prediction_made_once(tiny_model):
    from denoise import char_prior
    model, chars = tiny_model
    model.__dict__.pop("char_priors", None)
    prior = char_prior(model, "fp32")
    assert prior.shape == (len(chars),) and torch.allclose(prior.sum(), torch.tensor(1.0))
    assert char_prior(model, "fp32") is prior  # kept on the model
    c = canvas_for(chars, "KING:", 32)
    out, nfe = generate(model, c, opts(steps=8, temperature=1.0, order="spread", remask=0.5, remask_by="pmi"), 0)
    assert nfe == 8 and (out != len(chars)).all() and decode(out[0, :5].tolist(), chars) == "KING:"


def test_without_remasking_pmi_costs_no_prior_pass_and_changes_nothing(tiny_model):
    model, chars = tiny_model
    model.__dict__.pop("char_priors", None)
    c = canvas_for(chars, "KING:", 32)
    runs = {by: generate(model, c, opts(steps=8, temperature=1.0, order="spread", remask=0.0, remask_by=by), 3)[0]
            for by in ("pmi", "prob")}
    assert not model.__dict__.get("char_priors")  # the prior's forward pass was skipped
    assert torch.equal(runs["pmi"], runs["prob"])


def test_sampler_config_defaults_are_spread_order_pmi_remasking():
    default = SamplerConfig()
    assert (default.order, default.remask_by, default.schedule) == ("spread", "pmi", "cosine")
    assert default.remask > 0 and 0 < default.temperature < 1


def test_default_passes_scale_with_the_characters_to_write(tiny_model):
    from sampler import default_steps
    assert default_steps(256) == default_steps(100) == 64  # a window: 64 passes, as chosen
    assert default_steps(5000) == 1250  # a long text: 64 per 256 characters
    model, chars = tiny_model
    _, nfe = generate(model, canvas_for(chars, "KING:", 5 + 600), SamplerConfig(), 0)
    assert nfe == 150


def test_a_threshold_takes_confidence_order_and_no_remasking_unless_given():
    config = SamplerConfig.from_options(threshold=0.9)
    assert (config.steps, config.order, config.remask) == (None, "confidence", 0.0)
    assert SamplerConfig.from_options(steps=16).order == "spread"  # without a threshold, the defaults
    assert SamplerConfig.from_options(threshold=0.9, temperature=0.5).temperature == 0.5
    with pytest.raises(ValueError, match="--threshold needs confidences"):
        SamplerConfig.from_options(threshold=0.9, order="spread")
    with pytest.raises(ValueError, match="not both"):
        SamplerConfig.from_options(threshold=0.9, steps=10)


@pytest.mark.parametrize("bad, needle", [(dict(steps=0), "--steps"), (dict(steps=2.5), "--steps"),
                                         (dict(temperature=float("nan")), "--temperature"),
                                         (dict(top_p=1.5), "--top-p"), (dict(cache="dual"), "needs --block"),
                                         (dict(order="best"), "--order"), (dict(precision="fp64"), "--precision"),
                                         (dict(cache="sparse", order="confidence"), "--cache sparse")])
def test_sampler_config_rejects_bad_options_naming_the_flag(bad, needle):
    with pytest.raises(ValueError, match=needle):
        SamplerConfig(**bad)


def test_generate_from_python_writes_what_sample_py_writes(tiny_ckpt, run_main):
    # the library's defaults are the CLI's: same prompt, same seed, same text
    from checkpoint import load_model
    model, chars, _ = load_model(tiny_ckpt)
    r = run_main("sample.py", "--ckpt", tiny_ckpt, "--prompt", "KING:", "--length", "60", "--seed", "7",
                 "--device", "cpu")
    assert r.returncode == 0, r.stderr
    out, nfe = generate(model, canvas_for(chars, "KING:", 60), SamplerConfig(), 7)
    assert r.stdout == decode(out[0].tolist(), chars) + "\n"


def test_noise_takes_its_seed_as_an_int_or_a_tensor():
    # a CUDA graph replays with the seed as a tensor input; the numbers must not change with it
    from denoise import Noise
    as_int, as_tensor = Noise(11, 3, "cpu"), Noise(torch.tensor(11), 3, "cpu")
    for _ in range(2):
        assert torch.equal(as_int.uniform(64), as_tensor.uniform(64))


CACHED_SETTINGS = [dict(order="spread", cache="sparse", refresh=4), dict(order="random", cache="sparse", refresh=8),
                   dict(order="confidence", block=16, cache="prefix"), dict(order="spread", block=16, cache="dual")]


@pytest.mark.parametrize("kwargs", [dict(order="spread", remask=0.5, remask_by="pmi", temperature=0.95),
                                    dict(order="confidence", block=16, top_p=0.9), *CACHED_SETTINGS])
def test_stepping_needs_no_host_sync_once_generate_steps_returns(tiny_model, monkeypatch, kwargs):
    # what makes generate(..., cuda_graph=True) possible: after generate_steps returns, its steps
    # only queue device work: no reading a tensor on the host, no tensor made from host data
    model, chars = tiny_model
    canvas = torch.tensor([encode("KING:\n", chars) + [model.config.mask_id] * 40] * 2)
    expected, _ = generate(model, canvas, opts(steps=10, precision="fp32", **kwargs), 3)
    steps = generate_steps(model, canvas, opts(steps=10, precision="fp32", **kwargs), torch.tensor(3))

    def host_sync(*args, **kw):
        raise AssertionError("a host sync or a host-to-device copy inside a step")
    for name in ("tolist", "item", "__bool__", "nonzero", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, host_sync)
    monkeypatch.setattr(torch, "tensor", host_sync)
    monkeypatch.setattr(torch, "equal", host_sync)
    for state in steps:
        pass
    monkeypatch.undo()
    assert state.nfe == 10 and torch.equal(state.canvas, expected)


def cuda_copy(tiny_model):
    """(the tiny model copied to the GPU, its vocabulary): the module's CPU model stays as it is."""
    import copy
    model, chars = tiny_model
    return copy.deepcopy(model).cuda(), chars


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replays_write_what_the_plain_sampler_writes(tiny_model):
    model, chars = cuda_copy(tiny_model)
    mask_id = model.config.mask_id
    kwargs = dict(steps=12, order="spread", remask=0.5, remask_by="pmi", temperature=0.95)
    # a capture, then replays with another prompt of the same shape and other seeds
    for prompt, seed in [("KING:\n", 5), ("QUEEN:", 6), ("KING:\n", 7)]:
        canvas = torch.tensor([encode(prompt, chars) + [mask_id] * (46 - len(prompt))] * 2, device="cuda")
        plain, _ = generate(model, canvas, opts(**kwargs), seed)
        graphed, nfe = generate(model, canvas, opts(cuda_graph=True, **kwargs), seed)
        assert nfe == 12 and torch.equal(plain, graphed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("kwargs", CACHED_SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_cuda_graph_of_a_cached_generation_writes_what_the_plain_sampler_writes(tiny_model, kwargs):
    """Every pass of a cached generation has a shape the host planned (the sparse cache's
    positions per step are padded to a planned bound), so it is one graph too; fp32."""
    model, chars = cuda_copy(tiny_model)
    for prompt, seed in [("KING:\n", 5), ("QUEEN:", 6)]:  # a capture, then a replay with other inputs
        canvas = torch.tensor([encode(prompt, chars) + [model.config.mask_id] * (90 - len(prompt))] * 2, device="cuda")
        config = dict(steps=24, precision="fp32", **kwargs)
        plain, _ = generate(model, canvas, opts(**config), seed)
        graphed, nfe = generate(model, canvas, opts(cuda_graph=True, **config), seed)
        assert nfe == 24 and torch.equal(plain, graphed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile with a cache is tested on CUDA")
@pytest.mark.parametrize("kwargs", CACHED_SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_a_compiled_cached_generation_graphed_writes_what_it_writes_ungraphed(tiny_model, kwargs):
    """--compile with a cache: a graph per pass shape. Graphed or not, the same kernels (so the
    same characters); against the eager sampler the fused kernels round differently in the last
    bits, so a near-tie draw may flip: nearly all characters agree."""
    model, chars = cuda_copy(tiny_model)
    canvas = torch.tensor([encode("KING:\n", chars) + [model.config.mask_id] * 84] * 2, device="cuda")
    config = dict(steps=24, precision="fp32", compile="default", **kwargs)
    compiled, _ = generate(model, canvas, opts(**config), 5)
    for seed in (5, 6):  # the capture, then a replay with another seed
        graphed, nfe = generate(model, canvas, opts(cuda_graph=True, **config), seed)
        assert nfe == 24 and torch.equal(graphed, compiled if seed == 5 else generate(model, canvas, opts(**config), 6)[0])
    eager, _ = generate(model, canvas, opts(**{**config, "compile": None}), 5)
    assert (eager == compiled).float().mean() > 0.9


def test_the_character_prior_follows_the_model_to_another_precision(tiny_model):
    """A prior made in one precision (or on one device) is not reused for another."""
    from denoise import char_prior
    import copy
    model = copy.deepcopy(tiny_model[0])
    fp32, bf16 = char_prior(model, "fp32"), char_prior(model, "bf16")
    assert fp32.dtype == bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    assert char_prior(model, "fp32") is fp32


def test_a_canvas_that_is_not_batch_by_length_ids_is_a_clear_error(tiny_model):
    model, chars = tiny_model
    one_text = torch.tensor(encode("KING:\n", chars) + [model.config.mask_id] * 10)
    with pytest.raises(ValueError, match=r"\(batch, length\) character ids, got a 1-d int64 tensor"):
        generate(model, one_text, opts(steps=4))
    with pytest.raises(ValueError, match="got a 2-d float32 tensor"):
        generate(model, one_text[None].float(), opts(steps=4))
    assert generate(model, one_text[None], opts(steps=4))[1] == 4  # canvas[None], as the message says
