"""ar_sampler.py: the AR baseline's sampler with its static key/value cache and CUDA graph."""
import pytest
import torch

from ar_sampler import generate_ar, generate_ar_graphed, generate_ar_steps
from checkpoint import load_model
from corpus import encode
from model import KVCache
from sampler import SamplerConfig

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")


@pytest.fixture(scope="module")
def ar(tiny_ar_ckpt):
    model, chars, _ = load_model(tiny_ar_ckpt)
    return model, chars


def canvas(chars, prompt, length, batch=2, device="cpu"):
    ids = encode(prompt, chars, allow_mask=True)
    ids = ids + [len(chars)] * (length - len(ids))
    return torch.tensor([ids] * batch, device=device)


def every_pass(model, c, config, cached):
    return [s.canvas.clone() for s in generate_ar_steps(model, c, config, 5, cached=cached)]


@pytest.mark.parametrize("prompt, length", [("KING:", 30), ("KING:", 80), ("K_NG:__ my lord,__ the", 45)])
def test_static_cache_writes_what_the_uncached_sampler_writes_pass_for_pass(ar, prompt, length):
    """Inside the context (32), sliding past it, and kept characters between masks (a pass on
    several new positions): the same character at every pass, fp32, batch 2."""
    model, chars = ar
    config = SamplerConfig(temperature=1.0, precision="fp32")
    c = canvas(chars, prompt, length)
    cached, uncached = every_pass(model, c, config, True), every_pass(model, c, config, False)
    assert len(cached) == int((c[0] == len(chars)).sum())
    assert all(torch.equal(a, b) for a, b in zip(cached, uncached))


def test_generate_ar_returns_the_last_step_and_the_pass_count(ar):
    model, chars = ar
    config = SamplerConfig(temperature=1.0, precision="fp32")
    c = canvas(chars, "KING:", 70)
    out, nfe = generate_ar(model, c, config, seed=5)
    assert nfe == 65 and torch.equal(out, every_pass(model, c, config, True)[-1])
    assert torch.equal(c[:, 5:], torch.full_like(c[:, 5:], len(chars))), "the input canvas is left as it was"


def test_the_static_cache_is_written_in_place(ar):
    """A pass with a static cache allocates no new key/value buffers: what makes one graph possible."""
    model, chars = ar
    kv = KVCache(append=True, capacity=model.config.block_size)
    x = canvas(chars, "KING: my lord", 13)
    with torch.inference_mode():
        model(x[:, :10], cache=kv, start=0)
        before = {i: (k.data_ptr(), k.size(2)) for i, (k, _) in kv.layers.items()}
        model(x[:, 10:13], cache=kv, start=10)
    assert {i: (k.data_ptr(), k.size(2)) for i, (k, _) in kv.layers.items()} == before
    assert all(size == model.config.block_size for _, size in before.values())


def test_the_first_character_needs_a_character_before_it(ar):
    model, chars = ar
    with pytest.raises(ValueError, match="at least one character before the first mask"):
        generate_ar(model, canvas(chars, "", 10))


def test_the_graphed_sampler_needs_cuda(ar):
    model, chars = ar
    with pytest.raises(ValueError, match="needs a CUDA device"):
        generate_ar_graphed(model, canvas(chars, "KING:", 20), SamplerConfig(cuda_graph=True))


@cuda_only
@pytest.mark.parametrize("length", [30, 80])
def test_one_graph_writes_what_the_eager_sampler_writes_on_the_gpu(ar, length):
    model, chars = ar
    model = model.cuda()
    c = canvas(chars, "KING:", length, batch=3, device="cuda")
    config = SamplerConfig(temperature=1.0, precision="fp32")
    eager, nfe = generate_ar(model, c, config, seed=9)
    graphed, nfe_graphed = generate_ar(model, c, SamplerConfig(temperature=1.0, precision="fp32", cuda_graph=True), 9)
    again, _ = generate_ar(model, c, SamplerConfig(temperature=1.0, precision="fp32", cuda_graph=True), 9)
    assert torch.equal(eager, graphed) and torch.equal(graphed, again) and nfe == nfe_graphed


@cuda_only
def test_a_graph_replayed_with_another_seed_writes_that_seeds_text(ar):
    model, chars = ar
    model = model.cuda()
    c = canvas(chars, "KING:", 40, device="cuda")
    graphed = SamplerConfig(temperature=1.0, precision="fp32", cuda_graph=True)
    generate_ar(model, c, graphed, seed=1)  # captures
    eager, _ = generate_ar(model, c, SamplerConfig(temperature=1.0, precision="fp32"), seed=2)
    assert torch.equal(generate_ar(model, c, graphed, seed=2)[0], eager)
