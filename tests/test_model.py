"""model.py, the network: its size, no biases or norm weights, bidirectional or causal attention
(per model and per call), a head that never predicts the mask."""
import torch

from conftest import random_tiny_model
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


@torch.no_grad()
def test_causal_flag_per_call_is_the_causal_model():
    T = 12
    model = random_tiny_model(T)
    causal = Transformer(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=T, objective="ar")).eval()
    causal.load_state_dict(model.state_dict())
    x = torch.randint(0, 65, (3, T))
    assert torch.allclose(model(x, causal=True), causal(x), atol=1e-6)
    assert torch.allclose(causal(x, causal=False), model(x), atol=1e-6)
    later = x.clone()
    later[:, 6:] = 0  # the future does not reach the past under causal attention, and does otherwise
    assert torch.allclose(model(x, causal=True)[:, :6], model(later, causal=True)[:, :6], atol=1e-6)
    assert not torch.allclose(model(x)[:, :6], model(later)[:, :6], atol=1e-3)
