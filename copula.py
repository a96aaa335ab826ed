"""
Copula sampling: each step draws the characters it commits jointly, left to right, through a
second model, as Discrete Copula Diffusion does (Liu, Broadrick, Niepert, Van den Broeck, ICLR
2025, arXiv 2410.01949; their code: github.com/liuanji/Copula-Diffusion, src/dcd/sampling.py).

Why. A plain step draws each character it commits from the network's marginal p(x_j | x_t)
alone, independently of the others it commits in the same pass; the dependencies between them
are lost (the paper's irreducible term of the NELBO), which is why few passes write worse text.
DCD keeps the diffusion model's univariate marginals and takes the dependencies from a copula
model p_C: it samples the I-projection of the copula onto the distributions with those marginals,

    q = argmin { KL(q || p_C(. | x_t)) : q(x_j) = p(x_j | x_t) for every j }  =  p_C(x | x_t) prod_j exp V_j(x_j),

approximated by one scaling step, V_j(x_j) = log p(x_j | x_t) - log p_C(x_j | x_t): the target
marginal over the copula's own. For a copula that reads left to right, drawn left to right, that is
the rule implemented here (the paper's autoregressive DCD; its code adds these log-ratios to
GPT-2's logits, `scaled_autoregressive_generation`): each committed position j of a step, in
order, draws

    q(x_j) ∝ p_C(x_j | x̂_<j) · p(x_j | x_t) / p(x_j | x_t^{<j})

x̂_<j: what the copula reads, x_t's characters before j with this step's earlier draws in place.
p(x_j | x_t^{<j}): the copula's marginal of x_j without this step's draws, i.e. given the left part
of x_t. An AR model cannot sum over the masked characters there, so, as in the paper's code, the
diffusion network supplies it: its prediction with x_t's characters before j and masks at j and
after (an exact query for this any-order network; the paper's code runs SEDD under a causal
attention mask instead, which for our network is far off: KL 0.42 nats/char from the exact reading
on three validation windows). The ratio carries what x_t's right side says about x_j (characters
committed at earlier steps, the far end of a gap); the copula carries the left side and the
dependencies between the characters of this step. The temperature (and top-k, top-p) apply to the
combined distribution; the random numbers are the plain step's, so where the tilt is exactly 1
the plain character is drawn.

Consequences worth knowing. With nothing clean right of the committed positions (a continuation
written left to right: --order l2r, no remasking) the ratio is exactly 1: copula ar is then the AR
model itself, copula l2r the network read left to right, one character per pass; the diffusion
passes add nothing. The copula earns its passes only where a step's characters have context on
their right: the spread and random orders after their first step, remasking, infilling. There the
AR copula draws the masked characters between the committed ones too, and the step drops them:
its characters were drawn beside text that is not kept (on a CPU check, 8 prompts, 64 characters
in 4 passes, spread order: 70% real words against 77% plain; copula l2r 79%;
assets/runs/i28_copula_cpu_local.txt).

The copulas (--copula):
  ar   the autoregressive baseline (--copula-ckpt, default weights/ar_baseline.pt). It needs every
       character before j, so each step draws every masked column from its first to its last
       committed one by the rule, one cached AR pass each, and keeps those it commits (the paper's
       chunked sampler likewise draws all, then re-masks); drafted from the AR alone, blind to the
       clean characters on their right, they read worse (AR NLL 2.22 against 1.64 in that check).
       Order l2r: one AR pass per committed character.
  l2r  the diffusion network itself read left to right (DESIGN.md: an exact density model, better
       than the AR baseline): p_C(x_j | x̂_<j) is its prediction with x̂'s characters before j and
       masks at j and after; one full pass per committed character but the first of each step
       (whose context is x_t's: its tilt is 1).
Both add full passes of the diffusion network for the left readings p(x_j | x_t^{<j}): one per
distinct left context among the positions drawn (masked columns between the same two clean ones
share one), none where nothing clean lies right of j. `CopulaCost` counts both, and sample.py
--stats and quality.py report them beside the diffusion passes.
Needs --cache none (every pass reads its whole window) and a model that is not a block model.
"""

import os
from dataclasses import dataclass

import torch

from checkpoint import DEFAULT_AR, load_model_of_kind
from cli import UserError, shown
from denoise import denoise_canvas, draw_characters, remask_score, uniform
from devices import autocast
from model import StaticKVCache

COPULAS = ("none", "ar", "l2r")
REFERENCE_ROWS = 256  # windows per forward pass of the left readings: bounds their memory
# the flags' help lines (sampler.SAMPLER_HELP)
COPULA_HELP = {
    "copula": "draw each step's committed characters jointly, left to right, through a second model (Discrete "
              "Copula Diffusion, copula.py): ar, the AR baseline (one cached AR pass per masked character up to "
              "the step's last committed one); l2r, this network read left to right (one full pass per committed "
              "character); both add full passes for the left readings they divide by, reported by sample.py "
              "--stats and quality.py. Needs --cache none",
    "copula_ckpt": "with --copula ar: the autoregressive copula (default weights/ar_baseline.pt)",
}


@dataclass
class CopulaCost:
    """What the copula added to one generation: its passes, each over the whole batch (ar: cached
    AR calls, the first of each step on the clean text before the step's first masked column, the
    others on one character; l2r: full passes of the diffusion network), and the diffusion
    network's full passes for the left readings per sample (rows / batch)."""
    copula: str
    passes: int = 0
    reference: float = 0.0

    def __str__(self):
        return f"+{self.passes} {self.copula} +{self.reference:.0f} ref"


def check_copula_options(c):
    """The copula's rules among the sampler's options (ValueError naming the flags)."""
    if c.copula not in COPULAS:
        raise ValueError(f"--copula must be one of {', '.join(COPULAS)}, got {c.copula!r}")
    if c.copula_ckpt is not None and c.copula != "ar":
        raise ValueError("--copula-ckpt names the autoregressive copula: use it with --copula ar")
    if c.copula != "none" and c.cache != "none":
        raise ValueError(f"--copula {c.copula} needs --cache none (its passes read whole windows), "
                         f"got --cache {c.cache}")
    if c.copula != "none" and c.cuda_graph:
        raise ValueError("--copula runs a host loop per step (its passes depend on the step's positions): "
                         "not with --cuda-graph")


def check_copula_model(model, config):
    """The copula's rules that depend on the diffusion checkpoint (ValueError)."""
    if config.copula != "none" and model.config.block_len:
        raise ValueError(f"--copula {config.copula}: not for a block model (its passes see the block-causal mask)")


def copula_model(model, config, chars=None):
    """The AR copula of config.copula_ckpt (default weights/ar_baseline.pt) for this diffusion
    model: loaded once per path and device and kept on the model, as char_prior is. chars: the
    diffusion model's vocabulary, which the copula's must equal (UserError)."""
    path = config.copula_ckpt or DEFAULT_AR
    device = next(model.parameters()).device
    loaded = model.__dict__.setdefault("copula_models", {})
    key = (os.path.abspath(path), str(device))
    if key not in loaded:
        ar, ar_chars, _ = load_model_of_kind(path, device, causal=True)
        loaded[key] = (ar, ar_chars)
    ar, ar_chars = loaded[key]
    if (chars is not None and ar_chars != chars) or ar.config.vocab_size != model.config.vocab_size:
        raise UserError(f"{shown(path)}: the copula's vocabulary differs from the diffusion model's")
    if ar.config.block_size < model.config.block_size:
        raise UserError(f"{shown(path)}: the copula's context ({ar.config.block_size}) is shorter than the "
                        f"diffusion model's window ({model.config.block_size})")
    return ar


def check_copula_vocabulary(model, config, chars):
    """With --copula ar: its checkpoint loads and its vocabulary is chars, the diffusion model's
    (UserError); the CLIs check it, generate cannot (a model does not carry its vocabulary)."""
    if config.copula == "ar":
        copula_model(model, config, chars)


def make_copula(model, config):
    """The copula of one generation (None for --copula none): sampler.plan_generation's."""
    if config.copula == "none":
        return None
    return Copula(model, config.copula, copula_model(model, config) if config.copula == "ar" else None)


def generate_with_cost(model, canvas, config, seed=0):
    """sampler.generate, and what its copula cost: (canvas, nfe, CopulaCost, or None without one)."""
    from sampler import generate, last_step, plan_generation  # here: sampler imports this module
    if config.copula == "none":
        return (*generate(model, canvas, config, seed), None)
    plan = plan_generation(model, canvas, config, seed)
    last = last_step(denoise_canvas(model, canvas, plan))
    return (canvas, 0, plan.copula.cost) if last is None else (last.canvas, last.nfe, plan.copula.cost)


class Copula:
    """One generation's copula: `redraw` replaces a step's committed characters by a joint draw."""

    def __init__(self, model, kind, ar=None):
        self.model, self.ar = model, ar
        self.cost = CopulaCost(kind)

    def redraw(self, canvas, block, state, out, plan):
        """The step's denoise.StepResult `out`, its committed characters drawn jointly (the rule
        above). canvas still holds x_t; block: the sampler.Block being written."""
        window = canvas[:, block.start:block.end]
        lo = block.first - block.start
        logits = out.logits.float()
        # under bf16 attention runs in bf16 anyway: the AR cache stores what it attends to (ar_sampler.new_cache)
        self.cache_dtype = torch.bfloat16 if plan.precision == "bf16" and canvas.device.type in ("cuda", "cpu") \
            else torch.float32
        u = uniform(state.keys, logits.size(1), stream=0)  # the plain step's numbers
        with autocast(canvas.device, plan.precision):
            ref = self.left_readings(window, lo, self.drawn(window, lo, out.commit), logits)
            draw = self.draw_ar if self.ar is not None else self.draw_l2r
            chars, prob, combined = draw(window, lo, out.commit, logits, ref, u, plan.config)
        score = remask_score(combined, chars, prob, plan.config, plan.prior)  # chars: 0 where not committed
        return out._replace(region=torch.where(out.commit, chars, out.region),
                            commit_prob=torch.where(out.commit, score, out.commit_prob))

    def drawn(self, window, lo, commit):
        """(B, n) the block positions the copula draws: the committed ones; for the AR, which reads
        every character before the one it draws, every masked one up to the step's last committed."""
        if self.ar is None:
            return commit
        idx = torch.arange(commit.size(1), device=commit.device)
        last = torch.where(commit, idx, -1).max(1).values
        return (window[:, lo:lo + commit.size(1)] == self.model.config.mask_id) & (idx <= last[:, None])

    def left_readings(self, window, lo, drawn, logits):
        """(B, n, V) log p(x_j | x_t^{<j}) at the block positions j the copula draws: the network's
        prediction with the window's characters before j and masks at j and after. Where no clean
        character lies at or after j that is x_t itself, the step's own logits; the others take a
        row each, one per distinct left context (its last clean column), batched."""
        B, W = window.shape
        mask_id, cols = self.model.config.mask_id, torch.arange(W, device=window.device)
        clean_at = torch.where(window != mask_id, cols, -1)
        last_before = torch.cat([clean_at.new_full((B, 1), -1), clean_at.cummax(1).values[:, :-1]], 1)
        key = last_before[:, lo:lo + drawn.size(1)]  # the last clean column before each block position
        ref = logits.log_softmax(-1)
        need_b, need_p = (drawn & (key != clean_at.max(1).values[:, None])).nonzero(as_tuple=True)
        if not len(need_b):
            return ref
        contexts, row = torch.unique(need_b * W + key[need_b, need_p] + 1, return_inverse=True)
        x = window[contexts // W].masked_fill(cols >= (contexts % W)[:, None], mask_id)
        for i in range(0, len(contexts), REFERENCE_ROWS):
            here = (row >= i) & (row < i + REFERENCE_ROWS)
            out = self.model(x[i:i + REFERENCE_ROWS])
            ref[need_b[here], need_p[here]] = out[row[here] - i, lo + need_p[here]].float().log_softmax(-1)
        self.cost.reference += len(contexts) / B
        return ref

    def draw_l2r(self, window, lo, commit, logits, ref, u, config):
        """The network read left to right as the copula: round k draws every row's k-th committed
        position j (left to right) from its reading of the row with this step's earlier draws in
        place and masks at j and after, tilted by p(x_j | x_t) / p(x_j | x_t^{<j}). Round 0 needs no
        pass: nothing is drawn yet, so its reading is the reference and the tilt is exactly 1."""
        B, n = commit.shape
        mask_id, device = self.model.config.mask_id, window.device
        cols, rows = torch.arange(window.size(1), device=device), torch.arange(B, device=device)
        positions = torch.where(commit, torch.arange(n, device=commit.device), n).sort(1).values
        work, chars, prob, combined = window.clone(), *drawn_buffers(logits)
        for k in range(int(commit.sum(1).max())):  # host sync: the rounds
            valid, p = positions[:, k] < n, positions[:, k].clamp(max=n - 1)
            num = ref[rows, p]
            if k:
                x = work.masked_fill(cols >= (lo + p)[:, None], mask_id)
                num = self.model(x)[rows, lo + p].float().log_softmax(-1)
                self.cost.passes += 1
            tilted = logits[rows, p] + (num - ref[rows, p])
            ch, pr = draw_characters(tilted, config.temperature, config.top_k, config.top_p, u[rows, p])
            b, p = rows[valid], p[valid]
            work[b, lo + p], chars[b, p], prob[b, p], combined[b, p] = ch[valid], ch[valid], pr[valid], tilted[valid]
        return chars, prob, combined

    def draw_ar(self, window, lo, commit, logits, ref, u, config):
        """The AR model as the copula: one cached pass per masked column from the first to the
        step's last committed one (over the batch: columns any row needs), left to right, each drawn
        from the AR's conditional tilted by p(x_j | x_t) / p(x_j | x_t^{<j}); the step keeps the
        committed ones. A text's first column has no character before it for the AR: it draws from
        the diffusion model."""
        B = commit.size(0)
        visit = self.drawn(window, lo, commit)
        cache = StaticKVCache(self.ar.config, B, window.device, self.cache_dtype)
        work, chars, prob, combined = window.clone(), *drawn_buffers(logits)
        filled = 0
        for p in visit.any(0).nonzero().flatten().tolist():  # host sync: the columns
            c, at = lo + p, commit[:, p]
            tilted = logits[:, p]  # column 0: no context for the AR
            if c:
                ar_logits = self.ar(work[:, filled:c], cache=cache.at(cache.columns[filled:c]), pos=cache.pos)
                lp, filled = ar_logits[:, -1].float().log_softmax(-1), c
                self.cost.passes += 1
                tilted = logits[:, p] + lp - ref[:, p]
            ch, pr = draw_characters(tilted, config.temperature, config.top_k, config.top_p, u[:, p])
            work[:, c] = torch.where(visit[:, p], ch, work[:, c])
            chars[at, p], prob[at, p], combined[at, p] = ch[at], pr[at], tilted[at]
        return chars, prob, combined


def drawn_buffers(logits):
    """(chars, prob, combined) to fill at the committed positions: combined starts as the plain
    logits, so a position the copula does not draw keeps them."""
    B, n, _ = logits.shape
    return (torch.zeros(B, n, dtype=torch.long, device=logits.device),
            torch.zeros(B, n, device=logits.device), logits.clone())
