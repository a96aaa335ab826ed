"""The autoregressive sampler (ar_sampler.py, model.StaticKVCache and KVCache): one character a
pass; its engines (the static cache, torch.compile and the CUDA graph) write the same characters
as the plain uncached sampler, inside the context window and past it. CUDA paths are skipped
without a GPU."""

import copy

import pytest
import torch

from ar_sampler import generate_ar, generate_ar_steps, masked_columns, new_cache
from corpus import decode, encode
from model import KVCache, StaticKVCache
from denoise import Noise, draw_characters
from sampler import SamplerConfig

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# inside the context (30 <= 32), sliding past it (75), masks between kept characters
LAYOUTS = [("KING:", 30), ("KING:", 75), ("K_NG:__ my lord,__ the", 40)]


@pytest.fixture(scope="module")
def ar(tiny_ar_ckpt):
    from checkpoint import load_model
    model, chars, _ = load_model(tiny_ar_ckpt)
    return model, chars


def canvas_for(chars, prompt, length, batch=3, device="cpu"):
    ids = encode(prompt, chars, allow_mask=True)
    ids += [len(chars)] * (length - len(ids))
    return torch.tensor([ids] * batch, device=device)


def config(**given):
    return SamplerConfig(**{"temperature": 1.0, "precision": "fp32", **given})


@torch.inference_mode()
def reference_ar(model, canvas, config, seed):
    """The sampler's definition, written independently: every character from a full pass over
    the (up to) block_size characters before it, drawn with the seed's Noise."""
    canvas, T = canvas.clone(), model.config.block_size
    noise = Noise(seed, canvas.size(0), canvas.device)
    for i in (canvas[0] == model.config.mask_id).nonzero().flatten().tolist():
        logits = model(canvas[:, max(0, i - T):i])[:, -1:]
        u = noise.uniform(1)
        canvas[:, i] = draw_characters(logits, config.temperature, config.top_k, config.top_p, u)[0][:, 0]
    return canvas


@pytest.mark.parametrize("prompt,length", LAYOUTS)
def test_static_cache_equals_the_uncached_sampler(ar, prompt, length):
    model, chars = ar
    c = canvas_for(chars, prompt, length)
    out, nfe = generate_ar(model, c, config(), seed=7)
    assert nfe == int((c[0] == len(chars)).sum())
    assert torch.equal(out, reference_ar(model, c, config(), 7))
    assert not torch.equal(out[0], out[1])  # rows draw their own text


@pytest.mark.parametrize("prompt,length", LAYOUTS)
def test_every_step_of_the_cached_steps_equals_the_uncached_steps(ar, prompt, length):
    model, chars = ar
    c = canvas_for(chars, prompt, length)
    # a record's tensors are the sampler's own, valid until the next step: compare in lockstep
    steps = 0
    for a, b in zip(generate_ar_steps(model, c, config(), 3, cached=True),
                    generate_ar_steps(model, c, config(), 3, cached=False), strict=True):
        steps += 1
        assert torch.equal(a.canvas, b.canvas) and a.window == b.window and a.nfe == b.nfe == steps
        assert a.committed.sum() == c.size(0) and a.block == (a.block[0], a.block[0] + 1)
    assert steps == int((c[0] == len(chars)).sum())


def test_autoregressive_sampler_writes_one_character_per_pass(ar):
    model, chars = ar
    c = canvas_for(chars, "KING:", 60, batch=1)
    states = list(generate_ar_steps(model, c, SamplerConfig(temperature=1.0), 0))
    assert len(states) == 55 and states[-1].nfe == 55
    assert all(s.committed.sum() == 1 for s in states)
    assert decode(states[-1].canvas[0, :5].tolist(), chars) == "KING:"
    assert (states[-1].canvas != len(chars)).all()


@pytest.mark.parametrize("prompt,length", LAYOUTS)
def test_cached_autoregressive_sampler_equals_the_uncached_one(ar, prompt, length):
    # masks between kept characters: passes on several new positions at once; batch 3, fp32
    model, chars = ar
    c = canvas_for(chars, prompt, length)
    cached = list(generate_ar_steps(model, c, config(), 7, cached=True))
    uncached = list(generate_ar_steps(model, c, config(), 7, cached=False))
    assert len(cached) == len(uncached) == int((c[0] == len(chars)).sum())
    for a, b in zip(cached, uncached):  # every pass's character, not only the end
        assert torch.equal(a.canvas, b.canvas) and a.window == b.window
    assert not torch.equal(cached[-1].canvas[0], cached[-1].canvas[1])  # rows draw their own text


def test_top_k_top_p_and_greedy_draws_match_the_uncached_sampler(ar):
    model, chars = ar
    c = canvas_for(chars, "KING:", 60)
    for cfg in (config(top_k=5), config(top_p=0.8), config(temperature=0.0)):
        assert torch.equal(generate_ar(model, c, cfg, 1)[0], reference_ar(model, c, cfg, 1))


def test_static_cache_gives_the_full_pass_logits(ar):
    model, _ = ar
    x = torch.randint(0, model.config.vocab_size - 1, (2, 32))
    cache = StaticKVCache(model.config, 2, "cpu")
    with torch.inference_mode():
        full = model(x)
        pos = cache.columns
        prefix = model(x[:, :10], cache=cache.at(pos[:10]), pos=pos[:10])  # a causal mask by position
        steps = [model(x[:, j:j + 1], cache=cache.at(pos[j:j + 1]), pos=pos[j:j + 1]) for j in range(10, 32)]
    torch.testing.assert_close(prefix, full[:, :10], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 10:], rtol=1e-4, atol=1e-4)


def test_append_cache_gives_the_full_pass_logits_of_the_last_position(ar):
    model, _ = ar
    x = torch.randint(0, model.config.vocab_size - 1, (2, 32))
    with torch.inference_mode():
        full = model(x)
        kv = KVCache(keep=True)
        model(x[:, :10], cache=kv)
        three = model(x[:, 10:13], cache=kv, start=10)  # a causal mask by position
        one = model(x[:, 13:14], cache=kv, start=13)
    assert kv.layers[0][0].size(2) == 14
    torch.testing.assert_close(three, full[:, 10:13], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(one, full[:, 13:14], rtol=1e-4, atol=1e-4)


def test_stale_cache_entries_of_an_earlier_generation_change_nothing(ar):
    from ar_sampler import write_columns
    model, chars = ar
    c = canvas_for(chars, "KING:", 30)
    cache = new_cache(model, c, "fp32")
    for k, v in zip(cache.keys, cache.values):  # what a longer earlier generation would leave
        k.normal_(), v.normal_()
    work = c.clone()
    for _ in write_columns(model, work, masked_columns(model, c), config(), 7, cache):
        pass
    assert torch.equal(work, reference_ar(model, c, config(), 7))


def test_passes_trace_whole_and_once_per_shape_not_per_step(ar, monkeypatch):
    # dynamo with a counting backend: fullgraph (no graph break) and one graph per input shape
    # (prefix (3, 5), one character (3, 1), the sliding window (3, 32)), not one per position
    import ar_sampler
    from torch._dynamo.testing import CompileCounter
    model, chars = ar
    counter = CompileCounter()
    passes = tuple(torch.compile(fn, backend=counter, fullgraph=True, dynamic=False) for fn in ar_sampler.EAGER)
    monkeypatch.setitem(ar_sampler.COMPILED, "default", passes)
    torch._dynamo.reset()
    c = canvas_for(chars, "KING:", 75)
    assert torch.equal(generate_ar(model, c, config(compile="default"), 7)[0], reference_ar(model, c, config(), 7))
    assert counter.frame_count == 3


def test_bf16_cache_stores_bf16(ar):
    model, chars = ar
    cache = new_cache(model, canvas_for(chars, "KING:", 30), "bf16")
    assert cache.keys[0].dtype == cache.values[0].dtype == torch.bfloat16
    assert cache.keys[0].shape == (3, model.config.n_head, model.config.block_size,
                                   model.config.n_embd // model.config.n_head)


def test_a_mask_in_the_first_column_is_refused(ar):
    model, chars = ar
    with pytest.raises(ValueError, match="at least one character before the first mask"):
        generate_ar(model, canvas_for(chars, "", 10), config())


def test_cuda_graph_refuses_a_cpu_canvas(ar):
    model, chars = ar
    with pytest.raises(ValueError, match="needs a CUDA device"):
        generate_ar(model, canvas_for(chars, "KING:", 20), config(cuda_graph=True))


@pytest.fixture
def ieee_fp32():
    """fp32 matmuls in full precision (no TF32, which the trainer may have turned on): token
    equality across kernels needs logits equal to ~1e-6, not ~1e-3."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def gpu_case(ar, prompt, length):
    model, chars = ar
    model = copy.deepcopy(model).to("cuda")  # the module's CPU model stays on the CPU
    return model, canvas_for(chars, prompt, length, device="cuda")


@CUDA
@pytest.mark.parametrize("prompt,length", LAYOUTS)
def test_gpu_static_cache_equals_the_uncached_sampler_in_fp32(ar, prompt, length, ieee_fp32):
    model, c = gpu_case(ar, prompt, length)
    assert torch.equal(generate_ar(model, c, config(), 7)[0], reference_ar(model, c, config(), 7))


@CUDA
@pytest.mark.parametrize("prompt,length", LAYOUTS)
def test_cuda_graph_equals_the_uncached_sampler_in_fp32(ar, prompt, length, ieee_fp32):
    model, c = gpu_case(ar, prompt, length)
    for seed in (7, 8):  # the second replays the graph captured for the first, with a new seed
        graphed = generate_ar(model, c, config(cuda_graph=True), seed)[0]
        assert torch.equal(graphed, reference_ar(model, c, config(), seed))


@CUDA
def test_compiled_cuda_graph_equals_the_uncached_sampler_in_fp32(ar, ieee_fp32):
    model, c = gpu_case(ar, *LAYOUTS[1])
    for cfg in (config(compile="default"), config(compile="default", cuda_graph=True)):
        assert torch.equal(generate_ar(model, c, cfg, 7)[0], reference_ar(model, c, config(), 7))


@CUDA
def test_cuda_graph_in_bf16_writes_real_characters(ar):
    model, c = gpu_case(ar, *LAYOUTS[1])
    out = generate_ar(model, c, config(precision="bf16", cuda_graph=True), 7)[0]
    assert (out != model.config.mask_id).all() and not torch.equal(out[0], out[1])
