import torch

from diffusion import draw_masks, training_masks
from model import ModelConfig, Transformer


def test_default_config_is_the_full_10_7M_model():
    model = Transformer(ModelConfig())
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (6, 6, 384, 256)
    assert 10.6e6 < model.num_params() < 10.8e6


def test_no_biases_and_no_norm_parameters():
    model = Transformer(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16))
    names = [n for n, _ in model.named_parameters()]
    assert all(n.endswith("weight") for n in names)
    assert not any("norm" in n or "bias" in n for n in names)


def _perturbed_logits(causal):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, objective="ar" if causal else "diffusion"))
    for p in model.parameters():  # output projections start at zero; make them matter
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randint(0, 65, (1, 16))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 65
    return model(x)[0, 0], model(y)[0, 0]


def test_attention_is_bidirectional():
    a, b = _perturbed_logits(causal=False)
    assert not torch.allclose(a, b), "the first position must see the last one"


def test_ar_baseline_attention_is_causal():
    a, b = _perturbed_logits(causal=True)
    assert torch.allclose(a, b)


def test_head_never_predicts_the_mask_symbol():
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=8)
    logits = Transformer(cfg)(torch.zeros(2, 8, dtype=torch.long))
    assert logits.shape == (2, 8, cfg.vocab_size - 1)


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
