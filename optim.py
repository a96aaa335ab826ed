"""
The optimisers: AdamW, or Muon (momentum orthogonalised by Newton-Schulz, as in modded-nanogpt
and nanochat) for the blocks' matrices with AdamW for the embedding and the head; the
learning-rate schedule; an exponential moving average of the weights.
"""

import copy
import math

import torch


# -----------------------------------------------------------------------------
# Optimisers, schedule, EMA

def zeropower_via_newtonschulz5(G, steps=5):
    """Orthogonalise G (the nearest semi-orthogonal matrix, roughly) by a quintic Newton-Schulz
    iteration, as in modded-nanogpt and nanochat. Works on batches of matrices."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    transpose = G.size(-2) > G.size(-1)
    if transpose:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if transpose else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz (Keller Jordan): SGD-Nesterov whose update of
    each weight matrix is orthogonalised. For the hidden matrices only; a fused qkv matrix is
    treated as three square ones."""

    def __init__(self, params, lr=0.02, momentum=0.95, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p.grad)
                buf = state["momentum"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"])  # Nesterov
                rows, cols = g.shape
                if rows == 3 * cols:  # c_qkv: q, k and v each get their own orthogonalisation
                    g = zeropower_via_newtonschulz5(g.view(3, cols, cols)).view(rows, cols)
                else:
                    g = zeropower_via_newtonschulz5(g)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(g, alpha=-group["lr"] * max(1, g.size(0) / g.size(1)) ** 0.5)


def make_optimizers(model, tc, fused):
    """AdamW for everything, or Muon for the blocks' matrices and AdamW for embedding and head.
    Weight decay on matrices, not on the embedding. Each group remembers its peak rate."""
    is_block_matrix = lambda n, p: p.dim() == 2 and n.startswith("blocks.")
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2 and not n.startswith("wte")]
    no_decay = [p for n, p in named if not (p.dim() >= 2 and not n.startswith("wte"))]
    optimizers = []
    if tc.optimizer == "muon":
        optimizers.append(Muon([p for n, p in named if is_block_matrix(n, p)], lr=tc.muon_lr,
                               weight_decay=tc.weight_decay * tc.lr / tc.muon_lr))
        muon_ids = {id(p) for p in optimizers[0].param_groups[0]["params"]}
        decay = [p for p in decay if id(p) not in muon_ids]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizers.append(torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, tc.beta2), fused=fused))
    for opt in optimizers:
        for group in opt.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def lr_factor(step, progress, tc):
    """Multiplier of every peak rate: linear warm-up over warmup_steps, then cosine decay over
    progress in [0, 1], or (wsd) constant until the last `cooldown` of progress, then linear."""
    if step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    if tc.schedule == "wsd":
        decay = min(max((progress - (1 - tc.cooldown)) / max(tc.cooldown, 1e-9), 0.0), 1.0)
        return 1 - (1 - tc.min_lr_ratio) * decay
    return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """An exponential moving average of the weights, in its own model (what gets evaluated and
    shipped). The decay ramps up as (1 + step) / (10 + step) so early weights fade fast."""

    def __init__(self, model, decay):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model, step):
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - d)
