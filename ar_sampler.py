"""
The autoregressive baseline's sampler: one character per forward pass, left to right, with
the same sampling rules (temperature, top-k, top-p, seeds) as the diffusion sampler, so the
two families can be compared side by side.

Its engine is as fast as we can make it, so that the comparison is fair: a preallocated
key/value cache (model.StaticKVCache) written in place, so every step has the same shapes;
optionally torch.compile (config.compile) and the whole generation captured as one CUDA graph
(config.cuda_graph), as the diffusion sampler does. Past the context window the window slides
every character and its rotary positions start anew, so each pass there re-encodes the window
whole (no cache can give those keys/values: every layer's would change). Cached or not,
compiled or graphed, the characters are the same (tests/test_ar_sampler.py).

    canvas, nfe = generate_ar(model, canvas, config, seed)      # the fast path
    for step in generate_ar_steps(model, canvas, config, seed):  # one record per character
"""

import weakref
from typing import NamedTuple

import torch

from denoise import Noise, StepRecord, draw_characters, uniform
from devices import autocast, capture_graph, sampling_precision
from model import StaticKVCache
from sampler import SamplerConfig


def masked_columns(model, canvas):
    """The columns to write, left to right (row 0's masks: every row has the same layout)."""
    columns = (canvas[0] == model.config.mask_id).nonzero().flatten().tolist()
    if columns and columns[0] == 0:
        raise ValueError("the autoregressive model needs at least one character before the first mask")
    return columns


def new_cache(model, canvas, precision):
    """A StaticKVCache for canvas's batch. Under bf16 autocast attention runs in bf16 anyway,
    so the cache stores bf16: the same numbers the uncached pass attends to, in half the memory."""
    bf16 = precision == "bf16" and canvas.device.type in ("cuda", "cpu")
    return StaticKVCache(model.config, canvas.size(0), canvas.device, torch.bfloat16 if bf16 else torch.float32)


def cached_pass(model, tokens, cache, u, config, precision):
    """The next character after tokens (B, T) at the positions the cache is at (StaticKVCache.at,
    called outside, so that a compiled pass sees the mask as an input), their keys/values
    written into the cache; u: (B, 1) uniforms for the draw."""
    with autocast(tokens.device, precision):
        logits = model(tokens, cache=cache, pos=cache.pos)[:, -1:]
    return draw_characters(logits, config.temperature, config.top_k, config.top_p, u)[0][:, 0]


def window_pass(model, tokens, u, config, precision):
    """The next character after the window tokens (B, T), encoded whole at positions 0 .. T-1."""
    with autocast(tokens.device, precision):
        logits = model(tokens)[:, -1:]
    return draw_characters(logits, config.temperature, config.top_k, config.top_p, u)[0][:, 0]


EAGER = (cached_pass, window_pass)
COMPILED = {}


def passes_for(config):
    """The two pass functions, compiled with config.compile's mode if it has one. dynamic=False:
    a single-character step always has the same shapes (the positions are a tensor), so one
    specialised graph serves all of them."""
    if not config.compile:
        return EAGER
    if config.compile not in COMPILED:
        COMPILED[config.compile] = tuple(torch.compile(fn, mode=config.compile, dynamic=False) for fn in EAGER)
    return COMPILED[config.compile]


def write_columns(model, canvas, columns, config, seed, cache=None, passes=EAGER):
    """Write canvas's masked `columns` in place, left to right, one pass each, and yield each
    column once written. cache: a StaticKVCache for the first window, where canvas columns are
    rotary positions, so a pass runs on the characters not yet cached alone (None: every pass
    encodes its window whole, the reference). Issues no host sync: it runs under CUDA graph capture."""
    T = model.config.block_size
    # one draw per written column, as in every sampler, all made at once (the same numbers as
    # noise.uniform(1) column by column; a few kernels instead of a dozen per column)
    keys = Noise(seed, canvas.size(0), canvas.device).keys(len(columns))
    draws = uniform(keys.flatten(), 1).view(len(columns), canvas.size(0), 1)
    precision = sampling_precision(config.precision, canvas.device)
    cached_fn, window_fn = passes
    filled = 0  # canvas columns [0, filled) have their keys/values in the cache
    for i, u in zip(columns, draws):
        if cache is not None and i <= T:
            chars = cached_fn(model, canvas[:, filled:i], cache.at(cache.columns[filled:i]), u, config, precision)
            filled = i
        else:
            chars = window_fn(model, canvas[:, max(0, i - T):i], u, config, precision)
        canvas[:, i] = chars
        yield i


@torch.inference_mode()
def generate_ar_steps(model, canvas, config=None, seed=0, cached=True):
    """The autoregressive sampler one character at a time, for the animation and the tests:
    writes the masked positions of canvas left to right, each given up to block_size characters
    before it. cached: the static key/value cache in the first window (else every pass encodes
    its window whole); eager, whatever config.compile says. The same characters either way.
    Yields the same records as sampler.generate_steps (denoise.StepRecord)."""
    config = config or SamplerConfig()
    T = model.config.block_size
    canvas = canvas.clone()
    columns = masked_columns(model, canvas)
    cache = new_cache(model, canvas, sampling_precision(config.precision, canvas.device)) if cached else None
    for nfe, i in enumerate(write_columns(model, canvas, columns, config, seed, cache), start=1):
        committed = torch.zeros_like(canvas, dtype=torch.bool)
        committed[:, i] = True
        yield StepRecord(canvas, committed, torch.zeros_like(committed), nfe, (max(0, i - T), i + 1), (i, i + 1))


@torch.inference_mode()
def generate_ar(model, canvas, config=None, seed=0):
    """The autoregressive sampler run to the end with its best engine: the static cache, and
    config.compile / config.cuda_graph if set. Returns (canvas, nfe)."""
    config = config or SamplerConfig()
    if config.cuda_graph:
        return generate_ar_graphed(model, canvas, config, seed)
    canvas = canvas.clone()
    columns = masked_columns(model, canvas)
    cache = new_cache(model, canvas, sampling_precision(config.precision, canvas.device))
    for _ in write_columns(model, canvas, columns, config, seed, cache, passes_for(config)):
        pass
    return canvas, len(columns)


class ARGraph(NamedTuple):
    graph: "torch.cuda.CUDAGraph"
    canvas_in: torch.Tensor   # copied in before each replay
    seed: torch.Tensor        # 0-dim, copied in before each replay
    cache: StaticKVCache      # outside the graph's memory pool: it must outlive the graph
    canvas_out: torch.Tensor  # written by the replay
    nfe: int


GRAPHS = weakref.WeakKeyDictionary()  # model -> {(shape, columns, config): ARGraph}; freed with the model


@torch.inference_mode()
def generate_ar_graphed(model, canvas, config, seed=0):
    """The whole generation captured once as one CUDA graph, every pass unrolled, and replayed
    with this canvas and seed copied into its inputs: the host launches one graph instead of a
    few dozen kernels per character (at batch 1 those launches take longer than the GPU's work).
    A graph is kept per model, canvas shape, masked columns and config; the first call for one
    also runs two warm-up generations (compilation with compile="default") and the capture."""
    if canvas.device.type != "cuda":
        raise ValueError(f"--cuda-graph needs a CUDA device, not {canvas.device.type}")
    columns = masked_columns(model, canvas)
    key = (tuple(canvas.shape), tuple(columns), config)
    graphs = GRAPHS.setdefault(model, {})
    if key not in graphs:
        canvas_in, seed_in = canvas.clone(), torch.tensor(seed, device=canvas.device)
        cache = new_cache(model, canvas, sampling_precision(config.precision, canvas.device))
        passes = passes_for(config)

        def run():
            work = canvas_in.clone()
            for _ in write_columns(model, work, columns, config, seed_in, cache, passes):
                pass
            return work
        graph, canvas_out = capture_graph(run, warmups=2)
        graphs[key] = ARGraph(graph, canvas_in, seed_in, cache, canvas_out, len(columns))
    g = graphs[key]
    g.canvas_in.copy_(canvas)
    g.seed.fill_(seed)
    g.graph.replay()
    return g.canvas_out.clone(), g.nfe
