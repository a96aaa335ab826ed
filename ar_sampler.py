"""
The autoregressive baseline's sampler: one character per forward pass, left to right, with
the same sampling rules (temperature, top-k, top-p, seeds) as the diffusion sampler, so the
two families can be compared side by side.
"""

import torch

from devices import autocast, sampling_precision
from model import KVCache
from denoise import Noise, StepRecord, draw_characters
from sampler import SamplerConfig


@torch.inference_mode()
def generate_ar_steps(model, canvas, config=None, seed=0, cached=True):
    """The autoregressive baseline's sampler, for side-by-side comparisons: writes the masked
    positions of canvas left to right, one character per forward pass, each given up to
    block_size characters before it; config's temperature, top_k, top_p and precision apply.
    cached: keep the window's keys/values (KVCache append mode), so a pass runs on the newly
    written characters alone; past the context the window slides every character and its
    rotary positions start anew, so each pass there re-encodes the window whole, as uncached.
    The same characters either way. Yields the same dicts as generate_steps."""
    config = config or SamplerConfig()
    mask_id, T = model.config.mask_id, model.config.block_size
    B, N = canvas.shape
    dev = canvas.device
    canvas = canvas.clone()
    noise = Noise(seed, B, dev)
    precision = sampling_precision(config.precision, dev)
    masked_cols = (canvas[0] == mask_id).nonzero().flatten().tolist()
    if masked_cols and masked_cols[0] == 0:
        raise ValueError("the autoregressive model needs at least one character before the first mask")
    kv, window_start, encoded = None, None, 0  # encoded: canvas columns [window_start, encoded) are cached
    for nfe, i in enumerate(masked_cols, start=1):
        start = max(0, i - T)
        if not cached or start != window_start:  # a new window: encode it from its first column
            kv, window_start, encoded = (KVCache(append=True) if cached else None), start, start
        with autocast(dev, precision):
            logits = model(canvas[:, encoded:i], cache=kv, start=encoded - start)[:, -1:]
        encoded = i if cached else start
        chars, _ = draw_characters(logits, config.temperature, config.top_k, config.top_p,
                                   noise.uniform(logits.size(1)))
        canvas[:, i] = chars[:, 0]
        committed = torch.zeros_like(canvas, dtype=torch.bool)
        committed[:, i] = True
        yield StepRecord(canvas, committed, torch.zeros_like(committed), nfe, (start, i + 1), (i, i + 1))
