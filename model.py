"""
tiny-diffusion: a character-level masked (absorbing-state) diffusion language model.

This file owns everything the other scripts share:
- the network, a nanochat-style transformer:
  - bidirectional attention (causal only for the autoregressive baseline)
  - rotary position embeddings, no learned positions
  - QK-norm (queries and keys RMS-normalised before attention)
  - parameter-free RMSNorm everywhere, no biases anywhere
  - ReLU² MLP
  - untied input embedding and output head
  - no time/noise-level input: the mask ratio is visible in the input (MDLM, Sahoo et al. 2024)
- the forward (masking) process used in training and evaluation
- the one sampler: confidence-ordered parallel unmasking (fixed steps or a threshold),
  with prompts, infilling, optional remasking and windowed generation of texts longer
  than the context
- the vocabulary, the checkpoint format, and device selection
"""

import argparse
import math
import os
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

MASK_GLYPH = "_"  # how a masked position is written in prompts and shown on screen
CHECKPOINT_FORMAT = "tiny-diffusion/1"


class UserError(Exception):
    """A problem with the user's input: the CLIs print it as one line and exit non-zero."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# -----------------------------------------------------------------------------
# The network

@dataclass
class ModelConfig:
    vocab_size: int = 66    # characters of the data + 1 mask symbol (the last id)
    block_size: int = 256   # context length in characters
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    causal: bool = False    # True only for the autoregressive baseline

    @property
    def mask_id(self):
        return self.vocab_size - 1


def norm(x):
    # parameter-free RMSNorm
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.causal = config.causal
        self.c_qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.c_qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm keeps attention logits bounded without a softcap
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = Attention(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin):
        x = x + self.dropout(self.attn(norm(x), cos, sin))
        x = x + self.dropout(self.mlp(norm(x)))
        return x


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        # the head never predicts the mask symbol: it is not a character
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size - 1, bias=False)
        head_dim = config.n_embd // config.n_head
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(config.block_size).float(), inv_freq)
        # (1, T, 1, D/2) so it broadcasts over batch and heads; not saved in checkpoints
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.init.normal_(self.wte.weight, std=1.0)
        torch.nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_qkv, block.mlp.c_fc):
                bound = math.sqrt(3.0 / lin.in_features)  # uniform with std 1/sqrt(fan_in)
                torch.nn.init.uniform_(lin.weight, -bound, bound)
            # zero output projections: every block starts as the identity
            torch.nn.init.zeros_(block.attn.c_proj.weight)
            torch.nn.init.zeros_(block.mlp.c_proj.weight)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx):
        """idx: (B, T) token ids, T <= block_size. Returns logits (B, T, vocab_size - 1)."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} exceeds block_size {self.config.block_size}")
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(norm(x))


# -----------------------------------------------------------------------------
# Forward process: absorbing ("masked") diffusion, linear schedule.
#
# At noise level t every generated position is replaced by MASK with probability t. The
# continuous-time negative ELBO per character equals
#     E_{k ~ Uniform{1..L}} [ mean over k uniformly chosen masked positions of -log p(x_i | x_t) ]
# (integrate t out: k ~ Binomial(L, t) with t ~ U(0,1) is uniform on {0..L}). We train and
# evaluate on exactly this form: it has lower variance than 1/t-weighting at the same
# expectation, and every sequence gets equal weight.

def draw_masks(B, T, num_clean, u, generator=None, device=None):
    """Masks for B sequences of length T.

    num_clean: (B,) clean prefix length per row (never masked); u: (B,) in [0, 1), which sets
    how many of the remaining T - num_clean positions are masked: k = 1 + floor(u * n).
    Returns (masked (B, T) bool, k (B,) long)."""
    n = T - num_clean
    k = 1 + (u * n).long().clamp(max=n - 1)
    scores = torch.rand(B, T, generator=generator, device=device)
    positions = torch.arange(T, device=device)
    scores = scores.masked_fill(positions[None, :] < num_clean[:, None], 2.0)  # prefix never chosen
    rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each position in a random order
    return rank < k[:, None], k


def training_masks(x, prefix_prob, generator=None):
    """Masks for a training batch: stratified k over the batch, and with probability
    prefix_prob a clean prefix of random length, so the model learns to continue prompts."""
    B, T = x.shape
    dev = x.device
    u = (torch.arange(B, device=dev) + torch.rand(B, generator=generator, device=dev)) / B
    u = u[torch.randperm(B, generator=generator, device=dev)]
    has_prefix = torch.rand(B, generator=generator, device=dev) < prefix_prob
    prefix_len = torch.randint(1, T, (B,), generator=generator, device=dev)
    num_clean = torch.where(has_prefix, prefix_len, torch.zeros_like(prefix_len))
    return draw_masks(B, T, num_clean, u, generator=generator, device=dev)


def masked_nll_per_sequence(logits, x, masked, k):
    """Mean cross-entropy over the masked positions of each sequence: (B,)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view(x.shape)
    return (ce * masked).sum(dim=1) / k


def diffusion_loss(model, x, mask_id, prefix_prob=0.0, generator=None):
    """Negative ELBO in nats/char (the training objective, see the block comment above).
    `model` may be wrapped (compiled, DDP), so the mask id is passed in."""
    masked, k = training_masks(x, prefix_prob, generator)
    x_noisy = x.masked_fill(masked, mask_id)
    return masked_nll_per_sequence(model(x_noisy), x, masked, k).mean()


def autoregressive_loss(model, x):
    """Next-character cross-entropy (the AR baseline): x is (B, T + 1)."""
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())


# -----------------------------------------------------------------------------
# The sampler: confidence-ordered parallel unmasking

def commit_schedule(n, steps, schedule="linear"):
    """How many of n masked positions to commit at each of `steps` steps (each >= 1, sum n).

    linear: the same number every step. cosine: the fraction still masked after step i is
    cos(pi/2 * i/steps) (MaskGIT), so few characters are committed while little is known
    and more at the end."""
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be in 1..{n}, got {steps}")
    done = []
    for i in range(1, steps + 1):
        if schedule == "linear":
            d = (n * i) // steps
        elif schedule == "cosine":
            d = n - math.ceil(n * math.cos(math.pi / 2 * i / steps) - 1e-9)
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
        prev = done[-1] if done else 0
        done.append(min(max(d, prev + 1), n - (steps - i)))  # >= 1 per step, room for the rest
    return [b - a for a, b in zip([0] + done[:-1], done)]


def uniform_per_sample(shape, generators, device):
    """(B, *shape) uniforms, row i from generators[i]: sample i of a batch equals a batch of
    one run with seed + i."""
    return torch.stack([torch.rand(shape, generator=g, device=device) for g in generators])


def gumbel_noise(shape, generators, device):
    return -torch.log(-torch.log(uniform_per_sample(shape, generators, device).clamp_min(1e-20)))


def draw_characters(logits, temperature, top_k, generators):
    """Draw one character per position and return (chars, confidence).

    The confidence is the probability of the drawn character under the distribution it was
    drawn from (at temperature 0: the largest probability of the model's distribution)."""
    logits = logits.float()
    if temperature == 0:
        probs = logits.softmax(-1)
        conf, chars = probs.max(-1)
        return chars, conf
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    # Gumbel-max, one generator per sample
    chars = (probs.log() + gumbel_noise(logits.shape[1:], generators, logits.device)).argmax(-1)
    return chars, probs.gather(-1, chars[..., None]).squeeze(-1)


def check_sampler_options(steps=None, threshold=None, order="confidence", remask=0.0):
    """The rules generate_steps enforces (ValueError), callable up front by the CLIs."""
    if (steps is None) == (threshold is None):
        raise ValueError("give exactly one of steps or threshold")
    if order not in ("confidence", "random", "noisy") or (order != "confidence" and threshold is not None):
        raise ValueError("order is 'confidence', 'random' or 'noisy' (the last two only with steps)")
    if remask < 0 or (remask and threshold is not None):
        raise ValueError("remask is >= 0 and needs steps")


@torch.inference_mode()
def generate_steps(model, canvas, steps=None, threshold=None, temperature=1.0, top_k=None,
                   schedule="linear", seed=0, context_keep=None, order="confidence", precision="auto",
                   remask=0.0):
    """Denoise `canvas` and yield after every forward pass.

    canvas: (B, N) ids; positions equal to the mask id are generated, all others are kept
    verbatim (prompt, known text for infilling). Every row must have the same masked
    positions. N may exceed the context: then a window of block_size characters slides
    along the text, keeping the last `context_keep` (default block_size // 2) characters
    before the first masked one as clean context, and fills the window completely before
    moving on.

    Each step predicts every masked position in the window, draws a character for each
    (temperature 0 = argmax), and commits the most confident ones. order="random" commits a
    random choice instead (MDLM's ancestral order); order="noisy" ranks by log-confidence plus
    Gumbel noise whose scale falls linearly from 1 to 0 over the steps (MaskGIT), which keeps
    confident commits but breaks the "the the the" runs of pure confidence order:
      - steps=S: a schedule (`commit_schedule`) so that exactly S forward passes unmask the
        whole text (S is spread over the windows in proportion to their masked count)
      - threshold=tau: all with confidence >= tau, and at least one per row.
    remask=rho (with steps): each step also re-opens round(rho * that step's count) of the
    window's already written characters, those drawn with the lowest probability, and commits
    as many more, so the net progress per step and the number of passes stay as scheduled
    (ReMDM's confidence remasking; the last step re-opens nothing). A character written early
    from little context gets redrawn once more of its surroundings are known.
    precision: "bf16" or "fp32" for the forward passes; "auto" is bf16 where it is native
    (`native_bf16`: CUDA, CPUs with AVX-512 BF16 or AMX), else fp32.
    Yields dicts: canvas (B, N) after the step, committed (B, N) bool (written this step),
    reopened (B, N) bool (masked again this step), nfe, window (start, end).
    """
    check_sampler_options(steps, threshold, order, remask)
    cfg = model.config
    mask_id, T = cfg.mask_id, cfg.block_size
    keep = T // 2 if context_keep is None else context_keep
    B, N = canvas.shape
    dev = canvas.device
    canvas = canvas.clone()
    is_masked = canvas == mask_id
    if not torch.equal(is_masked, is_masked[:1].expand_as(is_masked)):
        raise ValueError("every row of the canvas must have the same masked positions")
    generators = [torch.Generator(device=dev).manual_seed(seed + i) for i in range(B)]
    if precision == "auto":
        precision = "bf16" if native_bf16(dev) else "fp32"
    masked_cols = is_masked[0].nonzero().flatten().tolist()  # one host sync up front
    steps_left, masked_left = steps, len(masked_cols)
    nfe = 0
    while masked_cols:
        first = masked_cols[0]
        start = max(0, min(first - keep, N - T))
        end = min(start + T, N)
        n_window = sum(1 for c in masked_cols if c < end)
        masked_cols = [c for c in masked_cols if c >= end]
        if steps is not None:
            window_steps = round(steps_left * n_window / masked_left) if masked_cols else steps_left
            window_steps = min(max(window_steps, 1), n_window)
            counts = commit_schedule(n_window, window_steps, schedule)
            steps_left, masked_left = max(steps_left - window_steps, 1), masked_left - n_window
        step = 0
        generated = canvas[:, start:end] == mask_id  # this window's positions to write
        commit_prob = torch.zeros(generated.shape, device=dev)  # p(drawn character) when written
        while True:
            window = canvas[:, start:end]
            still_masked = window == mask_id
            if steps is not None and step == len(counts):
                break
            if threshold is not None and not still_masked.any():
                break
            with autocast(dev, precision):
                logits = model(window)
            chars, conf = draw_characters(logits, temperature, top_k, generators)
            nfe += 1
            prob = conf
            if order == "random":  # MDLM's ancestral order: which positions to commit is chance
                conf = uniform_per_sample(conf.shape[1:], generators, dev)
            elif order == "noisy":  # MaskGIT: Gumbel noise on log-confidence, annealed to zero
                noise_scale = 1.0 - step / len(counts)
                conf = conf.clamp_min(1e-9).log() + noise_scale * gumbel_noise(conf.shape[1:], generators, dev)
            conf = conf.masked_fill(~still_masked, float("-inf"))  # never re-commit
            n_remask = 0
            if steps is not None:
                if remask:
                    done = sum(counts[:step])
                    n_remask = min(round(remask * counts[step]), done, n_window - done - counts[step])
                top = conf.topk(counts[step] + n_remask, dim=1).indices
                commit = torch.zeros_like(still_masked).scatter_(1, top, True)
            else:
                commit = conf >= threshold
                best = F.one_hot(conf.argmax(1), end - start).bool()
                commit |= best & still_masked.any(1, keepdim=True)
            commit &= still_masked
            canvas[:, start:end] = torch.where(commit, chars, window)
            committed = torch.zeros_like(canvas, dtype=torch.bool)
            committed[:, start:end] = commit
            reopened = torch.zeros_like(committed)
            if n_remask:  # the written characters drawn with the lowest probability
                written = generated & ~still_masked
                low = commit_prob.masked_fill(~written, float("inf")).topk(n_remask, dim=1, largest=False)
                reopened[:, start:end].scatter_(1, low.indices, True)
                canvas.masked_fill_(reopened, mask_id)
            if remask:
                commit_prob = torch.where(commit, prob, commit_prob)
            step += 1
            yield {"canvas": canvas, "committed": committed, "reopened": reopened, "nfe": nfe,
                   "window": (start, end)}


def generate(model, canvas, **kwargs):
    """Run `generate_steps` to the end. Returns (canvas, nfe)."""
    state = {"canvas": canvas, "nfe": 0}
    for state in generate_steps(model, canvas, **kwargs):
        pass
    return state["canvas"], state["nfe"]


# -----------------------------------------------------------------------------
# Vocabulary

def encode(text, chars, allow_mask=False):
    """Text -> list of ids. With allow_mask, MASK_GLYPH becomes the mask id (infilling)."""
    index = {c: i for i, c in enumerate(chars)}
    mask_id = len(chars)
    unknown = sorted({c for c in text if c not in index and not (allow_mask and c == MASK_GLYPH)})
    if unknown:
        shown = " ".join(repr(c) for c in unknown)
        raise UserError(f"characters not in the model's vocabulary: {shown}")
    return [mask_id if c == MASK_GLYPH and allow_mask else index[c] for c in text]


def decode(ids, chars, mask_glyph=MASK_GLYPH):
    return "".join(chars[i] if i < len(chars) else mask_glyph for i in ids)


# -----------------------------------------------------------------------------
# Devices

def pick_device(name="auto"):
    """'auto' picks cuda, then mps, then cpu; an explicit device that is not there is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} is not available: PyTorch sees no CUDA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} is not available: {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    return dev


def native_bf16(device):
    """True where bf16 matmuls run natively: CUDA, and CPUs with AVX-512 BF16 or AMX. Elsewhere
    bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":  # torch.cpu's probes are private: a missing one counts as no
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def autocast(device, precision="auto"):
    """bf16 autocast for precision "bf16", and for "auto" on CUDA; "fp32" is full precision.
    (On CPUs with bf16 instructions, "bf16" makes a forward pass almost twice as fast.)"""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16 and device.type in ("cuda", "cpu"))


# -----------------------------------------------------------------------------
# Checkpoints: one file with the config, the vocabulary, the weights and (for resuming)
# the training state. Only tensors and plain Python types, so weights_only=True loads it.

def save_checkpoint(path, model, chars, **extra):
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.config),
        "chars": "".join(chars),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    write_atomically(ckpt, path)


def write_atomically(obj, path):
    """torch.save to a temp file, then rename: a crash never leaves a half-written checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_checkpoint(path):
    """Load and validate a checkpoint dict; every failure is one UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path}: truncated, corrupt or not a PyTorch "
                        f"checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a tiny-diffusion checkpoint (expected format {CHECKPOINT_FORMAT})")
    known = {f.name for f in fields(ModelConfig)}
    cfg = ckpt.get("config", {})
    if set(cfg) - known:
        raise UserError(f"{path}: unknown config fields {sorted(set(cfg) - known)}")
    if len(ckpt.get("chars", "")) + 1 != cfg.get("vocab_size"):
        raise UserError(f"{path}: vocabulary of {len(ckpt.get('chars', ''))} characters does not match vocab_size")
    return ckpt


def load_model(path, device="cpu"):
    """Rebuild the model of a checkpoint. Returns (model in eval mode, chars, ckpt)."""
    ckpt = read_checkpoint(path)
    model = Transformer(ModelConfig(**ckpt["config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match the stored config: {first[:120]}") from None
    return model.to(device).eval(), ckpt["chars"], ckpt
