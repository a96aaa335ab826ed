"""Block diffusion (BD3-LM, --objective block): the attention masks, the vectorised loss against
one forward per block, its two ends (L' = 1 and L' = T), evaluation, and the exact-cache sampler.
Random tiny networks with every weight perturbed (output projections start at zero), no training."""

import pytest
import torch
import torch.nn.functional as F

from conftest import run_script
from diffusion import (block_causal_mask, block_diffusion_loss, block_diffusion_mask, block_forward, block_masks,
                       block_model_block_nll, block_rates, diffusion_block_nll, eval_blocks, masked_nll_per_sequence)
from model import ModelConfig, Transformer

T, VOCAB = 32, 66


def perturbed_model(block_len, block_size=T):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, block_size=block_size,
                                    objective="block" if block_len else "diffusion", block_len=block_len))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def text(B=2, n=T, seed=1):
    return torch.randint(0, VOCAB - 1, (B, n), generator=torch.Generator().manual_seed(seed))


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
    # without no_grad every batch kept its autograd graph: 138 GB on an H200 at context 128
    model = perturbed_model(8)
    val = text(1, 200, seed=3)[0]
    got = block_model_block_nll(model, val, T, eval_blocks(len(val), T, 12), mc=1, seed=4, batch_size=2)
    assert not got.requires_grad and got.grad_fn is None


@pytest.mark.parametrize("block_len", ["0", "5", "64"])
def test_bad_block_len_is_a_one_line_error(block_len, capsys):
    import train
    with pytest.raises(SystemExit) as e:
        train.main(["--block_size", "32", "--objective", "block", "--block_len", block_len, "--device", "cpu"])
    assert str(e.value.code).count("\n") == 0 and "--block_len must divide --block_size 32" in str(e.value.code)


def test_block_options_need_the_block_objective():
    r = run_script("train.py", "--block_len", "4")
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "need --objective block" in r.stderr


SAMPLER_SETTINGS = [dict(), dict(threshold=0.6), dict(order="random", top_k=8, top_p=0.9, remask=0.0),
                    dict(order="confidence", temperature=0.0, context_keep=8)]


@pytest.mark.parametrize("options", SAMPLER_SETTINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_cached_block_sampling_equals_uncached_token_for_token(options):
    """The exact cache (clean blocks' keys/values computed once, each step on the block alone)
    against the full window under the block-causal mask every step: the same text, past the
    context too (the window slides by whole blocks), from a prompt that ends inside a block.
    In fp32: under bf16 (precision auto, on a CPU with native bf16) the block alone against the
    cache and the masked window round differently, and a draw near a top-k/top-p edge or a
    CDF step can then flip a character."""
    from sampler import SamplerConfig, generate
    options = {**options, "precision": "fp32"}
    model, L = perturbed_model(8), 8
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # less peaked: the samplers' draws matter
    canvas = text(3, 84, seed=9)
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
    from sampler import SamplerConfig, generate
    model = perturbed_model(8)
    canvas = text(1, 40)
    canvas[:, 4:] = VOCAB - 1
    with pytest.raises(ValueError, match="blocks of its block_len 8"):
        generate(model, canvas, SamplerConfig(block=4))
    with pytest.raises(ValueError, match="exact"):
        generate(model, canvas, SamplerConfig(block=8, cache="dual"))
    with pytest.raises(ValueError, match="needs a block model"):
        generate(perturbed_model(0), canvas, SamplerConfig(cache="exact"))


def test_cpu_block_preset_is_a_valid_block_run():
    from cli import ArgumentParser
    from train_config import add_train_flags, check_config, configs_from_args
    p = ArgumentParser()
    add_train_flags(p)
    mc, tc, _ = configs_from_args(p.parse_args(["--preset", "cpu-block"]))
    check_config(mc, tc)
    assert mc.objective == "block" and mc.block_size % mc.block_len == 0 and tc.time_budget <= 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_of_the_exact_cache_writes_what_the_ungraphed_exact_cache_writes():
    """A block's shapes are static, so a block model's cached generation is one graph; fp32,
    past the context (the window slides by whole blocks)."""
    from sampler import SamplerConfig, generate
    model = perturbed_model(8).cuda()
    canvas = text(2, 84, seed=9).cuda()
    canvas[:, 5:] = VOCAB - 1
    config = dict(cache="exact", steps=40, precision="fp32", order="random", remask=0.0)
    plain, _ = generate(model, canvas, SamplerConfig.from_options(**config), seed=3)
    for seed in (3, 3, 4):  # the capture, a replay, a replay with another seed
        graphed, nfe = generate(model, canvas, SamplerConfig.from_options(cuda_graph=True, **config), seed=seed)
        expected = plain if seed == 3 else generate(model, canvas, SamplerConfig.from_options(**config), seed=4)[0]
        assert nfe == 40 and torch.equal(graphed, expected)


@pytest.fixture
def block_ckpt(tmp_path):
    from checkpoint import save_checkpoint
    chars = [chr(33 + i) for i in range(VOCAB - 2)] + ["\n"]  # VOCAB - 1 characters and the mask
    path = str(tmp_path / "block.pt")
    save_checkpoint(path, perturbed_model(8), chars)
    return path


@pytest.mark.parametrize("flags, needle", [(["--order", "l2r"], "--order l2r reads a plain diffusion"),
                                           (["--as-ar"], "--as-ar reads a plain diffusion")])
def test_evaluate_refuses_what_a_block_model_cannot_be_read_as(block_ckpt, flags, needle, data_path):
    import evaluate
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--ckpt", block_ckpt, "--device", "cpu", "--data", data_path, *flags])
    assert str(e.value).startswith("evaluate.py: error:") and needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("flags, needle", [(["--cache", "sparse"], "a block model's cache is exact"),
                                           (["--block", "4"], "writes blocks of its block_len 8")])
def test_sampling_a_block_model_against_its_blocks_is_a_one_line_error(block_ckpt, flags, needle):
    import sample
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", block_ckpt, "--device", "cpu", "--length", "20", *flags])
    assert str(e.value).startswith("sample.py: error:") and needle in str(e.value)
