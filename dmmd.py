"""
Discrete moment matching distillation (D-MMD; Hoogeboom, Ruhe, Heek, Mensink & Salimans,
"Beyond Single Tokens: Distilling Discrete Diffusion Models via Discrete MMD", arXiv 2603.20155;
the discrete form of Salimans et al. 2024, "Multistep Distillation of Diffusion Models via Moment
Matching", arXiv 2406.04103). `train.py --distill_from CKPT --distill_method dmmd`: the loss and
the hooks trainer.Trainer calls (the same as distill.Distillation's; SDTT is the other method).

Three copies of the network: the teacher (frozen), the student (the generator being trained) and
an auxiliary model (trained beside it, its own optimiser). Every step (the paper's Algorithm 1,
with the generator's and the auxiliary's updates on the same draws instead of alternate ones):
  1. a training sequence is masked as in training: z_t;
  2. the student takes one sampler step from z_t (the step of a K-pass sampler, K its passes):
     its probabilities p = p_student(z_t) (and its noise input, if it has one, below), a
     character drawn from p at every masked position,
     and c ~ U{1..round(T / K)} of them committed (Delta t ~ U(0, 1/K)), in random or spread
     order: z_s. No gradient flows through the draw;
  3. on the positions still masked in z_s, the auxiliary model learns what the student's
     step leads to, kept near the teacher: L_aux = CE(p | aux(z_s)) + CE(teacher(z_s) | aux(z_s))
     (p as a soft target, the paper's choice for masked diffusion), so aux -> (E[p | z_s] +
     teacher(z_s)) / 2;
  4. the student moves along sg(log aux(z_s) - log teacher(z_s)) . p on the same positions:
     the gradient of CE(p | teacher) - CE(p | aux), the paper's generator loss. Where the
     student's step leads somewhere the teacher would not predict, the auxiliary's prediction
     there exceeds the teacher's and the student's probability of it is pushed down.
The min-max value, max over the auxiliary of E[L(x, teacher) - L(x, aux) - L(teacher, aux)],
is 2 KL(m || teacher) - H(teacher) with m = (E[p | z_s] + teacher) / 2: zero divergence exactly
when the student's step matches the teacher's conditional expectations (its moments) at every
z_s. The loss this returns (what the progress line shows) is the estimate of that divergence
at the current auxiliary: the mean of (p + teacher) . (log aux - log teacher) over the positions,
a lower bound that is tight when the auxiliary is optimal; it starts at 0 (aux = teacher),
rises while the auxiliary learns the student's step and falls as the student learns.
The noise input (--noise_dim D, the paper's Table 6: it matters for masked diffusion): a
factorised step draws every position independently given z_t, so it cannot commit correlated
characters, and its moments cannot all match the teacher's; with N(0, 1) noise of width D added
(through a learned projection) to its masked positions' input, one pass can pick a joint option
per draw. The sampler feeds it from its own random numbers (denoise.gaussian).
Not built: the paper's temperature / top-p targets. The auxiliary model learns faster than the
student (--dmmd_aux_lr_mult, 4 by default, as a GAN's critic does).
"""

from dataclasses import replace

import torch
import torch.distributed as dist

from cli import UserError
from denoise import commit_positions, draw_characters, rank_for_commit, spread_priority
from diffusion import training_masks
from distill import teacher_passes
from model import Transformer
from optim import make_optimizers


def student_step(logits, x_t, mask_id, max_commit, order, generator):
    """z_s (B, T): one step of the sampler from x_t with the student's logits (temperature 1):
    a character drawn at every masked position, c ~ U{1..max_commit} of them committed per row
    (at most all but one of its masked positions) in `order` (random: MDLM's ancestral order;
    spread: the sampler's, one rotation per row)."""
    B, T = x_t.shape
    dev = x_t.device
    masked = x_t == mask_id
    u = torch.rand(B, T, generator=generator, device=dev)
    chars, _ = draw_characters(logits.detach(), 1.0, None, None, u)
    count = torch.randint(1, max_commit + 1, (B, 1), generator=generator, device=dev)
    count = torch.minimum(count, masked.sum(1, keepdim=True) - 1)
    ranks = torch.rand(B, T, generator=generator, device=dev)
    offset = (torch.rand(B, generator=generator, device=dev) * T).long()
    priority = spread_priority(T, offset) if order == "spread" else None
    commit = commit_positions(rank_for_commit(None, order, None, ranks, priority), masked, count, None)
    return torch.where(commit, chars, x_t)


def without_noise_input(model):
    """A copy of `model` without its noise input (config.noise_dim 0): the teacher's and the
    auxiliary model's shape, whatever the student's."""
    twin = Transformer(replace(model.config, noise_dim=0)).to(next(model.parameters()).device)
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("noise_proj.")})
    return twin


def student_forward(student, x_t, generator):
    """The student's logits at x_t; a student with a noise input (noise_dim > 0) gets N(0, 1)
    noise drawn from `generator`."""
    dim = student.config.noise_dim
    if not dim:
        return student(x_t)
    return student(x_t, noise=torch.randn(*x_t.shape, dim, generator=generator, device=x_t.device))


def dmmd_terms(student, teacher, aux, x, passes, tc, generator):
    """(generator loss, auxiliary loss) of a batch x (B, T), each a mean over the positions still
    masked after the student's step; the generator loss's gradient reaches the student only
    (through p), the auxiliary loss's the auxiliary only."""
    mask_id = teacher.config.mask_id
    hidden, _, _ = training_masks(x, tc.prefix_prob, generator, tc.block_prob)
    x_t = x.masked_fill(hidden, mask_id)
    logp = student_forward(student, x_t, generator).float().log_softmax(-1)
    z_s = student_step(logp, x_t, mask_id, max(1, round(x.size(1) / passes)), tc.distill_order, generator)
    scored = (z_s == mask_id).float()
    with torch.no_grad():
        teacher_logp = teacher(z_s).float().log_softmax(-1)
    aux_logp = aux(z_s).float().log_softmax(-1)
    p, teacher_p = logp.exp(), teacher_logp.exp()
    n = scored.sum().clamp_min(1)
    aux_ce = -((p.detach() + teacher_p) * aux_logp).sum(-1)
    gap = aux_logp.detach() - teacher_logp
    generator_value = ((p + teacher_p) * gap).sum(-1)
    return (generator_value * scored).sum() / n, (aux_ce * scored).sum() / n


def moment_gap(student, teacher, aux, x, passes, tc, generator):
    """The D-MMD divergence estimate of batch x at the auxiliary model as it is (no update)."""
    with torch.no_grad():
        return dmmd_terms(student, teacher, aux, x, passes, tc, generator)[0]


# -----------------------------------------------------------------------------
# The rounds: what trainer.Trainer calls at its hooks

class DMMDistillation:
    """A D-MMD run's teacher, auxiliary model and rounds, behind distill.Distillation's hooks:
    loss (every step: it also takes the auxiliary's optimiser step), end_rounds, state/restore
    (last.pt), best_extra and note. Round r's student learns distill_start_passes / 2^(r+1)
    passes (the SDTT rounds' student counts: 64 -> 32 -> 16 -> 8); the teacher stays the
    distilled checkpoint, the auxiliary model and the student carry on from round to round."""

    state_keys = ("teacher", "teacher_round", "aux", "aux_optimizer")  # last.pt only
    extra_len = 0

    def __init__(self, model, tc, compile_model, student_optimizers):
        if dist.is_initialized() and dist.get_world_size() > 1:  # the auxiliary's gradients are not reduced
            raise UserError("--distill_method dmmd runs in one process")
        self.tc = tc
        self.teacher = without_noise_input(model).eval().requires_grad_(False)
        self.aux = without_noise_input(model).eval()  # trained without dropout: its predictions are the signal
        self.fwd_teacher, self.fwd_aux = compile_model(self.teacher), compile_model(self.aux)
        on_cuda = next(model.parameters()).is_cuda
        self.aux_optimizers = make_optimizers(self.aux, tc, fused=on_cuda)
        self.student_optimizers = student_optimizers  # the aux follows their learning-rate schedule
        self.round = 0
        self.aux_loss_sum, self.aux_losses = 0.0, 0

    def student_passes(self):
        return teacher_passes(self.tc.distill_start_passes, self.round) // 2

    def loss(self, student, x, mc, tc, generator):
        """The generator loss of batch x (the Trainer's backward and step follow), after the
        auxiliary model's own step on the same draws."""
        gen, aux_loss = dmmd_terms(student, self.fwd_teacher, self.fwd_aux, x, self.student_passes(), tc, generator)
        self.aux_step(aux_loss)
        return gen

    def aux_step(self, aux_loss):
        """The auxiliary model's optimiser step: the student's current learning-rate multiplier
        (its schedule) times --dmmd_aux_lr_mult, outside the Trainer's autocast."""
        group = self.student_optimizers[-1].param_groups[0]
        mult = group["lr"] / group["peak_lr"] * self.tc.dmmd_aux_lr_mult
        with torch.autocast(aux_loss.device.type, enabled=False):
            aux_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.aux.parameters(), self.tc.grad_clip)
            for opt in self.aux_optimizers:
                for g in opt.param_groups:
                    g["lr"] = g["peak_lr"] * mult
                opt.step()
                opt.zero_grad(set_to_none=True)
        self.aux_loss_sum = self.aux_loss_sum + aux_loss.detach()
        self.aux_losses += 1

    def end_rounds(self, trainer):
        """At each round's end (every distill_round_steps steps, and when the run ends) save the
        student as student<passes>.pt with its passes as sampler default; the next round's
        student learns half as many. Keyed on the round, not the step (resume never repeats one)."""
        while self.round < trainer.step // self.tc.distill_round_steps:
            name = f"student{self.student_passes()}.pt"
            trainer.save(name, sampler={"steps": self.student_passes()})
            self.round += 1
            trainer.log(f"round {self.round} done at step {trainer.step}: saved {self.tc.out_dir}/{name}"
                        + (f"; the student now learns {self.student_passes()} passes"
                           if self.round < self.tc.distill_rounds else ""))

    def state(self):
        cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}
        return {"teacher": cpu(self.teacher.state_dict()), "teacher_round": self.round,
                "aux": cpu(self.aux.state_dict()), "aux_optimizer": [opt.state_dict() for opt in self.aux_optimizers]}

    def restore(self, ckpt):
        self.teacher.load_state_dict(ckpt["teacher"])
        self.aux.load_state_dict(ckpt["aux"])
        for opt, state in zip(self.aux_optimizers, ckpt["aux_optimizer"]):
            opt.load_state_dict(state)
        self.round = ckpt["teacher_round"]

    def best_extra(self, improved):
        """best.pt is always the latest student (its NELBO may rise; quality.py judges)."""
        return {"sampler": {"steps": self.student_passes()}}

    def note(self):
        """The progress line's part: the round, the passes and the auxiliary's mean loss since
        the last line (one host sync, at progress lines only)."""
        aux = float(self.aux_loss_sum) / max(self.aux_losses, 1)
        self.aux_loss_sum, self.aux_losses = 0.0, 0
        return (f"dmmd round {self.round + 1}/{self.tc.distill_rounds}, {self.student_passes()} passes, "
                f"aux loss {aux:.4f} | ")
