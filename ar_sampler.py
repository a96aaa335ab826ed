"""
The autoregressive baseline's sampler: one character per forward pass, left to right, with
the same sampling rules (temperature, top-k, top-p, seeds) as the diffusion sampler, so the
two families can be compared side by side, each engineered as well as the other.

The window's keys/values live in a static cache (buffers of block_size positions written in
place, model.KVCache(capacity=...)), so a pass runs on the newly written character alone and
allocates nothing. Then the whole generation can be captured as one CUDA graph
(config.cuda_graph, as the diffusion sampler does): at batch 1 the host's kernel launches, not
the GPU's arithmetic, decide the speed of 256 small passes.
"""

import weakref
from typing import NamedTuple

import torch

from devices import autocast, capture_graph, sampling_precision
from model import KVCache
from denoise import Noise, StepRecord, draw_characters
from sampler import SamplerConfig


def masked_columns(model, canvas):
    """The canvas columns to write, left to right (host ints: fixed before any capture)."""
    cols = (canvas[0] == model.config.mask_id).nonzero().flatten().tolist()
    if cols and cols[0] == 0:
        raise ValueError("the autoregressive model needs at least one character before the first mask")
    return cols


def ar_passes(model, canvas, cols, config, seed, cached=True):
    """Write canvas's columns `cols` in place, one forward pass each; yields (nfe, column,
    window start) after each pass. Each character sees up to block_size characters before it.
    cached: the window's keys/values stay in a static cache, so a pass runs on the new
    character alone; past the context the window slides every character and its rotary
    positions start anew, so each pass there re-encodes the window whole, as uncached does.
    The same characters either way."""
    T = model.config.block_size
    noise = Noise(seed, canvas.size(0), canvas.device)
    precision = sampling_precision(config.precision, canvas.device)
    forward = compiled(model, config.compile) if config.compile else model
    kv, window_start, encoded = None, None, 0  # encoded: canvas columns [window_start, encoded) are cached
    for nfe, i in enumerate(cols, start=1):
        start = max(0, i - T)
        if not cached or start != window_start:  # a new window: encode it from its first column
            kv, window_start, encoded = (KVCache(append=True, capacity=T) if cached else None), start, start
        with autocast(canvas.device, precision):
            logits = forward(canvas[:, encoded:i], cache=kv, start=encoded - start)[:, -1:]
        encoded = i if cached else start
        chars, _ = draw_characters(logits, config.temperature, config.top_k, config.top_p, noise.uniform(1))
        canvas[:, i] = chars[:, 0]
        yield nfe, i, start


COMPILED = weakref.WeakKeyDictionary()  # model -> {mode: compiled forward}


def compiled(model, mode):
    """The model's forward under torch.compile (dynamic shapes: a pass's keys grow by one each
    character), made once per model and mode."""
    per_model = COMPILED.setdefault(model, {})
    if mode not in per_model:
        per_model[mode] = torch.compile(model, mode=mode, dynamic=True)
    return per_model[mode]


@torch.inference_mode()
def generate_ar_steps(model, canvas, config=None, seed=0, cached=True):
    """The AR sampler step by step, for animations and comparisons: yields after every pass
    the same records as sampler.generate_steps (denoise.StepRecord)."""
    config = config or SamplerConfig()
    canvas = canvas.clone()
    for nfe, i, start in ar_passes(model, canvas, masked_columns(model, canvas), config, seed, cached):
        committed = torch.zeros_like(canvas, dtype=torch.bool)
        committed[:, i] = True
        yield StepRecord(canvas, committed, torch.zeros_like(committed), nfe, (start, i + 1), (i, i + 1))


@torch.inference_mode()
def generate_ar(model, canvas, config=None, seed=0):
    """Run the AR sampler to the end. Returns (canvas, nfe). With config.cuda_graph (CUDA),
    the whole generation is one CUDA graph (`generate_ar_graphed`)."""
    config = config or SamplerConfig()
    if config.cuda_graph:
        return generate_ar_graphed(model, canvas, config, seed)
    canvas = canvas.clone()
    cols = masked_columns(model, canvas)
    for _ in ar_passes(model, canvas, cols, config, seed):
        pass
    return canvas, len(cols)


class ARGraph(NamedTuple):
    graph: "torch.cuda.CUDAGraph"
    canvas_in: torch.Tensor   # copied in before each replay
    canvas_out: torch.Tensor  # written by the replay
    seed: torch.Tensor        # 0-dim, copied in before each replay
    nfe: int


GRAPHS = weakref.WeakKeyDictionary()  # model -> {(shape, columns, config): ARGraph}; freed with the model


@torch.inference_mode()
def generate_ar_graphed(model, canvas, config, seed=0):
    """The whole AR generation, every pass, captured once as one CUDA graph and replayed with
    this canvas and seed copied into its inputs. One graph per model, canvas shape, masked
    columns and config; the first call for one also runs two warm-up generations and the capture."""
    if canvas.device.type != "cuda":
        raise ValueError(f"--cuda-graph needs a CUDA device, not {canvas.device.type}")
    cols = masked_columns(model, canvas)
    key = (tuple(canvas.shape), tuple(cols), config)
    graphs = GRAPHS.setdefault(model, {})
    if key not in graphs:
        canvas_in, canvas_out = canvas.clone(), canvas.clone()
        seed_in = torch.tensor(seed, device=canvas.device)

        def run():
            canvas_out.copy_(canvas_in)
            for _ in ar_passes(model, canvas_out, cols, config, seed_in):
                pass
        graphs[key] = ARGraph(capture_graph(run, warmups=2)[0], canvas_in, canvas_out, seed_in, len(cols))
    g = graphs[key]
    g.canvas_in.copy_(canvas)
    g.seed.fill_(seed)
    g.graph.replay()
    return g.canvas_out.clone(), g.nfe
