"""The sparse cache's pass sizes padded to a few buckets (issue 27): compiled generation then has
a handful of shapes, the padding changes nothing, a compiled step past dynamo's recompile limit
says so, and the named settings bench.py and quality.py accept."""

import warnings
from dataclasses import replace

import pytest
import torch

import denoise
from corpus import encode
from sampler import Block, SamplerConfig, generate, plan_generation, step_plan


def in_buckets(size, width):
    return size == width or (size < width and (size in (8, 16) or size % 32 == 0))


def opts(**given):
    base = dict(temperature=1.0, order="spread", remask=0.5, cache="sparse", precision="fp32")
    return SamplerConfig.from_options(**{**base, **given})


@pytest.mark.parametrize("refresh", [2, 4, 8])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("steps,n", [(64, 256), (32, 256), (64, 224)])
def test_sparse_pass_sizes_come_from_a_few_buckets(refresh, schedule, steps, n):
    plan = step_plan(Block(0, n, 0, n, n), steps, opts(steps=steps, schedule=schedule, refresh=refresh), "cpu")
    assert all(in_buckets(size, n) for size in plan.run_size)
    assert all(d <= size for d, size in zip(plan.run_distinct, plan.run_size))
    assert len(set(plan.run_size)) <= 10  # the exact bounds took up to 49 sizes (refresh 8, cosine)


def test_a_padded_size_is_the_smallest_bucket_that_holds_the_pass():
    sizes = [denoise.sparse_pass_size(n, 256) for n in (1, 8, 9, 16, 17, 32, 33, 250)]
    assert sizes == [8, 8, 16, 16, 32, 32, 64, 256]
    assert denoise.sparse_pass_size(20, 27) == 27  # never wider than the block


def tiny_canvas(model, chars, prompt, length):
    return torch.tensor([encode(prompt, chars) + [model.config.mask_id] * (length - len(prompt))] * 2)


@pytest.mark.parametrize("kwargs", [dict(refresh=2), dict(refresh=4, order="random"), dict(refresh=8, order="l2r"),
                                    dict(refresh=3, block=16), dict(refresh=4, schedule="cosine", temperature=0.9)])
def test_padded_sparse_passes_write_what_the_unpadded_ones_write(tiny_model, monkeypatch, kwargs):
    # CPU, fp32, eager: the positions repeated to fill a bucket compute the keys/values their first
    # copy does, so the text is the same character for character; a 90-character canvas slides
    model, chars = tiny_model
    canvas = tiny_canvas(model, chars, "KING:\n", 90)
    config = opts(steps=30, **kwargs)
    plan = plan_generation(model, canvas, config, 5)
    assert any(size > n for b in plan.blocks for n, size in zip(b.run_distinct, b.run_size)), "nothing padded"
    sizes = []
    hook = model.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].size(1)))
    try:
        padded, nfe = generate(model, canvas, config, 5)
    finally:
        hook.remove()
    widths = {b.block.block_end - b.block.first for b in plan.blocks}
    assert all(n == model.config.block_size or any(in_buckets(n, w) for w in widths) for n in sizes)
    monkeypatch.setattr(denoise, "sparse_pass_size", lambda n, width: n)  # the exact bounds, as before buckets
    unpadded, _ = generate(model, canvas, config, 5)
    assert nfe == 30 and torch.equal(padded, unpadded)


def test_a_compiled_step_past_the_recompile_limit_warns_once_and_runs_eager():
    def step(x):
        return (x * 2).sum()

    loud = denoise.loud_at_recompile_limit(torch.compile(step, backend="eager", dynamic=False), step)
    with torch._dynamo.config.patch(recompile_limit=1):
        assert loud(torch.ones(3)) == 6  # compiled: the one graph the limit allows
        with pytest.warns(RuntimeWarning, match="recompile limit"):
            assert loud(torch.ones(4)) == 8  # a new shape: said, and run eager
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # said once, not at every step
            assert loud(torch.ones(5)) == 10
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile with a cache is tested on CUDA")
def test_a_compiled_sparse_generation_on_cuda_makes_one_graph_per_planned_shape(tiny_model):
    # dynamo allowed exactly the planned shapes (the filling pass, the buckets): one graph more
    # would pass the limit and warn; graphed, the same kernels write the same characters
    import copy
    model, chars = tiny_model
    model = copy.deepcopy(model).cuda()
    canvas = tiny_canvas(model, chars, "KING:", model.config.block_size).cuda()  # one window, one block
    config = opts(steps=24, refresh=8, compile="default")
    run_size = plan_generation(model, canvas, config, 5).blocks[0].run_size
    shapes = 1 + len({size for i, size in enumerate(run_size) if i % 8})
    denoise.compiled_step("default")  # made before the patch: making it raises the limit to 64
    torch._dynamo.reset()
    limit_hit = lambda caught: [str(w.message) for w in caught if "recompile limit" in str(w.message)]
    with torch._dynamo.config.patch(recompile_limit=shapes), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, nfe = generate(model, canvas, config, 5)
        after_compiled = limit_hit(caught)
        graphed, _ = generate(model, canvas, replace(config, cuda_graph=True), 5)
    assert nfe == 24
    assert not after_compiled, f"more graphs than the {shapes} planned shapes {sorted(set(run_size))}: {after_compiled}"
    assert limit_hit(caught) == after_compiled, "capturing the generation as a CUDA graph compiled the step again"
    assert torch.equal(compiled, graphed), f"{int((compiled != graphed).sum())} characters differ, graphed or not"
    torch._dynamo.reset()


def test_the_named_settings_expand_to_their_fields_and_take_more():
    import bench
    import quality
    assert bench.setting_overrides("fast32") == dict(steps=32, schedule="linear", temperature=0.9, order="spread",
                                                     remask=0.5, remask_by="pmi")
    assert bench.setting_overrides("sparse2,refresh=4")["refresh"] == 4  # a later field wins
    config = quality.parse_setting("fast32,cache=sparse,refresh=2")
    assert (config.steps, config.cache, config.refresh, config.temperature) == (32, "sparse", 2, 0.9)
    assert quality.parse_setting("sparse2") == SamplerConfig(cache="sparse", refresh=2, temperature=0.9)
