"""
The network: a nanochat-style transformer, bidirectional for masked diffusion.
- bidirectional attention (causal only for the autoregressive baseline)
- rotary position embeddings, no learned positions
- QK-norm: queries and keys RMS-normalised before attention
- parameter-free RMSNorm everywhere, no biases anywhere
- ReLU² MLP
- untied input embedding and output head; the head never predicts the mask symbol
- no time/noise-level input: the mask ratio is visible in the input (MDLM, Sahoo et al. 2024)
- an optional key/value cache, so a sampling pass can run on a few positions of the window
  (KVCache; StaticKVCache, preallocated, for autoregressive decoding under CUDA graphs)
Everything else lives beside it: diffusion.py (masks, losses, estimators), sampler.py,
checkpoint.py (checkpoints, vocabulary, device), optim.py.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from objectives import OBJECTIVES


@dataclass
class ModelConfig:
    vocab_size: int = 66    # characters of the data + 1 mask symbol (the last id)
    block_size: int = 256   # context length in characters
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0        # on the output of every attention and MLP branch
    attn_dropout: float = 0.0   # on the attention probabilities (nanoGPT has all three)
    embd_dropout: float = 0.0   # on the normalised input embedding
    logit_softcap: float = 0.0  # if > 0, logits = cap * tanh(logits / cap) (nanochat uses 15)
    objective: str = "diffusion"  # what it is trained for: a key of objectives.OBJECTIVES
    block_len: int = 0          # L' of objective "block" (BD3-LM); 0 for every other objective
    noise_dim: int = 0          # a D-MMD student's noise input: N(0, 1) per position, this wide (0: none)

    @property
    def mask_id(self):
        return self.vocab_size - 1

    @property
    def causal(self):
        """The attention pattern of the model's objective (only the AR baseline's is causal)."""
        return OBJECTIVES[self.objective].causal


def norm(x):
    # parameter-free RMSNorm
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class KVCache:
    """Keys and values of every layer for one window (Fast-dLLM's cache). The first forward pass
    with an empty cache runs on the whole window and stores them; later passes run only on the
    positions [start, start + n) (or a list of positions per row) and attend to their own fresh
    keys/values there and to the stored ones everywhere else. The stored ones go stale as the
    fresh positions change (the attention is bidirectional): rebuild the cache once per block,
    or every few steps (the sparse cache).
    keep=True: a pass keeps its fresh keys/values. Autoregressive decoding: a pass on positions
    [start, start + n), start being the cached length, grows the cache by n and the next pass runs
    on the next characters alone. A pass on scattered positions (the delayed cache) writes its
    keys/values over the stored ones there.
    A block model's exact cache grows the same way, by each committed block (its clean
    keys/values never change)."""

    def __init__(self, keep=False):
        self.layers = {}
        self.keep = keep

    def __bool__(self):
        return bool(self.layers)

    def own(self):
        """Copy the stored tensors into memory of our own: under CUDA graphs (torch.compile's
        reduce-overhead mode) a pass's outputs are overwritten by the next replay."""
        self.layers = {i: (k.clone(), v.clone()) for i, (k, v) in self.layers.items()}


class StaticKVCache:
    """Preallocated keys/values, (B, n_head, block_size, head_dim) per layer, for autoregressive
    decoding under CUDA graphs and torch.compile. `at(pos)` (a (T,) long tensor) sets where the
    next pass's T positions are (pass the same pos to Transformer.forward for their rotary
    angles): it writes its keys/values in place there and attends to every stored position <=
    its own. Shapes never change and the positions are a tensor, so one compiled pass or one
    captured graph serves every step. Positions past the last written one are masked out; they
    start at zero so that the masked entries are finite (softmax weight 0 times NaN would still
    be NaN). The buffers may be reused by the next generation of the same shape: every position
    is written before it is read."""

    def __init__(self, config, batch, device, dtype=torch.float32):
        head_dim = config.n_embd // config.n_head
        shape = (batch, config.n_head, config.block_size, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.columns = torch.arange(config.block_size, device=device)
        self.pos = self.mask = None

    def __bool__(self):
        return True

    def at(self, pos):
        """The next pass is on positions pos: its mask (T, block_size), made once for all layers."""
        self.pos, self.mask = pos, self.columns <= pos[:, None]
        return self

    def write(self, layer, k, v):
        """Store this pass's k, v (B, H, T, D) at its positions; returns every position's keys,
        values and the mask of those each query may attend to."""
        keys, values = self.keys[layer], self.values[layer]
        keys.index_copy_(2, self.pos, k.to(keys.dtype))
        values.index_copy_(2, self.pos, v.to(values.dtype))
        return keys, values, self.mask


class Attention(nn.Module):
    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.attn_dropout = config.attn_dropout
        self.c_qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin, cache=None, start=0, causal=False, attn_mask=None):
        B, T, C = x.shape
        q, k, v = self.c_qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm keeps attention logits bounded without a softcap
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        mask = attn_mask  # bool, True = may attend: the block model's block-causal structure
        if isinstance(cache, StaticKVCache):  # positions set by cache.at
            k, v, mask = cache.write(self.layer_idx, k, v)
        elif cache is not None:
            stored = cache.layers.get(self.layer_idx)
            if stored is None:  # a full pass: remember the window's keys and values
                cache.layers[self.layer_idx] = (k, v)
            elif torch.is_tensor(start):  # scattered positions (B, T): fresh there, stored elsewhere
                at = start[:, None, :, None].expand(-1, k.size(1), -1, k.size(3))
                k, v = (old.scatter(2, at, new) for old, new in zip(stored, (k, v)))
                if cache.keep:
                    cache.layers[self.layer_idx] = (k, v)
            else:  # fresh keys/values for our positions, the stored ones elsewhere
                k, v = (torch.cat([old[:, :, :start], new, old[:, :, start + T:]], dim=2)
                        for old, new in zip(stored, (k, v)))
                if cache.keep:
                    cache.layers[self.layer_idx] = (k, v)
        if mask is not None:
            causal = False
        elif causal and k.size(2) != T:  # queries at start.. against more keys: is_causal would align them
            causal = False               # top-left, so mask by position (none needed for one last query)
            if not (T == 1 and start == k.size(2) - 1):
                mask = torch.arange(k.size(2), device=x.device) <= start + torch.arange(T, device=x.device)[:, None]
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, cache=None, start=0, causal=False, attn_mask=None):
        x = x + self.dropout(self.attn(norm(x), cos, sin, cache, start, causal, attn_mask))
        x = x + self.dropout(self.mlp(norm(x)))
        return x


# rms of a new noise input's contribution, against the unit-rms embedding it is added to: small, so a
# student starts near its teacher, and not 0, where the noise would be ignored (a saddle: no gradient)
NOISE_RMS = 0.3


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.embd_dropout = nn.Dropout(config.embd_dropout)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        # the head never predicts the mask symbol: it is not a character
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size - 1, bias=False)
        # D-MMD (dmmd.py): random numbers in the input let one factorised step commit correlated characters
        self.noise_proj = nn.Linear(config.noise_dim, config.n_embd, bias=False) if config.noise_dim else None
        head_dim = config.n_embd // config.n_head
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(config.block_size).float(), inv_freq)
        # (1, T, 1, D/2) so it broadcasts over batch and heads; not saved in checkpoints
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)
        # what its checkpoint recommends to the sampler ({"steps": N}: a distilled student's passes);
        # set by checkpoint.load_model, read by sampler.SamplerConfig.from_options and default_steps
        self.sampler_defaults = {}
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.init.normal_(self.wte.weight, std=1.0)
        torch.nn.init.normal_(self.lm_head.weight, std=0.001)
        if self.noise_proj is not None:
            torch.nn.init.normal_(self.noise_proj.weight, std=NOISE_RMS / math.sqrt(self.config.noise_dim))
        for block in self.blocks:
            for lin in (block.attn.c_qkv, block.mlp.c_fc):
                bound = math.sqrt(3.0 / lin.in_features)  # uniform with std 1/sqrt(fan_in)
                torch.nn.init.uniform_(lin.weight, -bound, bound)
            # zero output projections: every block starts as the identity
            torch.nn.init.zeros_(block.attn.c_proj.weight)
            torch.nn.init.zeros_(block.mlp.c_proj.weight)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, cache=None, start=0, causal=None, attn_mask=None, pos=None, noise=None):
        """idx: (B, T) token ids, T <= block_size. Returns logits (B, T, vocab_size - 1).
        cache (a KVCache, sampling only): empty, this pass fills it from the whole window; filled,
        idx holds only the window's positions start .. start + T - 1 (see KVCache), or, if start
        is a (B, T) tensor, the positions it lists (a position listed twice in a row must hold the same
        id twice: both copies compute the same keys/values, so either may land in the cache).
        causal: None = config.causal; True/False overrides it for this pass (the mixed objective
        trains one network both ways).
        attn_mask: (T, keys) bool, True where a query may attend (block diffusion, see diffusion.py).
        pos: (T,) rotary positions of idx's columns, instead of start .. start + T - 1 (block
        diffusion's [noisy ; clean] input, whose two copies share positions).
        noise: (B, T, config.noise_dim), the noise input of a model that has one (noise_dim > 0);
        None draws it from torch's generator."""
        causal = self.config.causal if causal is None else causal
        T = idx.size(1)
        if pos is not None:
            cos, sin = self.cos[:, pos], self.sin[:, pos]
        elif torch.is_tensor(start):
            if not cache:
                raise ValueError("positions need a filled KVCache")
            cos, sin = self.cos[0, start], self.sin[0, start]  # (B, T, 1, D/2)
        else:
            if start + T > self.config.block_size:
                raise ValueError(f"positions up to {start + T} exceed block_size {self.config.block_size}")
            if start and not cache:
                raise ValueError("start > 0 needs a filled KVCache")
            cos, sin = self.cos[:, start:start + T], self.sin[:, start:start + T]
        x = norm(self.wte(idx))
        if self.noise_proj is not None:  # on the masked positions only
            if noise is None:
                noise = torch.randn(*idx.shape, self.config.noise_dim, device=idx.device)
            x = x + self.noise_proj(noise.to(x.dtype)) * (idx == self.config.mask_id)[..., None]
        x = self.embd_dropout(x)
        for block in self.blocks:
            x = block(x, cos, sin, cache, start, causal, attn_mask)
        logits = self.lm_head(norm(x))
        if self.config.logit_softcap > 0:  # bounds the logits: no overconfident characters
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits.float() / cap)
        return logits
