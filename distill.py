"""
Self-distillation through time (SDTT; Deschenaux & Gulcehre, arXiv 2410.21035, code
jdeschena/sdtt): teach the network to take in one pass the step that a frozen copy of itself
(the teacher) takes in two, then let the student become the teacher and double the step
again: 64 -> 32 -> 16 -> 8 passes. The loss of `train.py --distill_from CKPT`, and its rounds
(Distillation: the hooks trainer.Trainer calls); the loop and the checkpoints are the Trainer's.

A training sequence is masked as in training (x_t); the teacher takes two sampler steps of
size dt = 1 / passes from x_t (the sampler's own step, denoise.denoise_step, and its random
numbers): a forward pass, a character drawn at every masked position from its distribution,
and T * dt of them committed (in random order, MDLM's ancestral
sampler, or in the sampler's spread order). A position's target is the teacher's distribution
at the step that committed it; still masked after both, the second step's. The student, in
one pass from x_t, matches the targets on the masked positions.
"""

import copy

import torch

from denoise import Noise, Pass, StepState, block_priority, denoise_step
from diffusion import training_masks
from optim import EMA
from sampler import SamplerConfig, StepCounts

DISTILL_METHODS = ("sdtt", "dmmd")  # this file's, and dmmd.py's
DIVERGENCES = ("kl", "fkl", "tvd", "mse")
DISTILL_ORDERS = ("random", "spread")


def teacher_passes(start_passes, round_index):
    """The teacher's passes in round `round_index` (0-based): its student learns half as many."""
    return start_passes // 2 ** round_index


@torch.no_grad()
def teacher_targets(teacher, x_t, mask_id, passes, order, generator):
    """(B, T, V) log-probabilities: the teacher's distribution for every position at the step
    of its two that committed it, the second step's where neither did. Each step is the
    sampler's own (denoise.denoise_step over the window, temperature 1, no remasking) and
    commits round(T / passes) masked positions per row (at least one); its random numbers are
    the sampler's (Noise), seeded from `generator`."""
    B, T = x_t.shape
    config = SamplerConfig(temperature=1.0, order=order, remask=0.0, remask_by="prob")
    noise = Noise(torch.randint(2 ** 31, (), generator=generator, device=x_t.device), B, x_t.device)
    keys = noise.keys(2)
    priority = block_priority(order, noise, T)  # spread: the sampler's order over the window
    counts = StepCounts(*torch.tensor([max(1, round(T / passes)), 0.0, 0.0], device=x_t.device))
    generated, no_scores = x_t == mask_id, torch.zeros(B, T, device=x_t.device)
    x, steps = x_t, []
    for key in keys:
        state = StepState(x, generated, no_scores, key, counts, priority)
        steps.append(denoise_step(teacher, Pass(x, None, 0, 0, T), state, config))
        x = steps[-1].region
    first, second = (step.logits.float().log_softmax(-1) for step in steps)
    return torch.where(steps[0].commit[..., None], first, second)


def divergence(student_logp, teacher_logp, kind):
    """Per-position divergence (..., V) -> (...). kl: KL(student || teacher), the paper's choice
    (mode-seeking: the student commits to one of the teacher's options); fkl: KL(teacher ||
    student); tvd: total variation; mse: squared error of the log-probabilities."""
    s, t = student_logp, teacher_logp
    if kind == "kl":
        return (s.exp() * (s - t)).sum(-1)
    if kind == "fkl":
        return (t.exp() * (t - s)).sum(-1)
    if kind == "tvd":
        return 0.5 * (s.exp() - t.exp()).abs().sum(-1)
    if kind == "mse":
        return (s - t).square().mean(-1)
    raise ValueError(f"unknown divergence {kind!r}")


def distill_loss(student, teacher, x, mask_id, passes, tc, generator):
    """The SDTT loss of a batch x (B, T): the divergence tc.divergence of the student's one pass
    from the teacher's two-step targets, averaged over every masked position of the batch.
    x_t is drawn as training draws it (tc.prefix_prob, tc.block_prob)."""
    hidden, _, _ = training_masks(x, tc.prefix_prob, generator, tc.block_prob)
    x_t = x.masked_fill(hidden, mask_id)
    target = teacher_targets(teacher, x_t, mask_id, passes, tc.distill_order, generator)
    per_position = divergence(student(x_t).float().log_softmax(-1), target, tc.divergence)
    return (per_position * hidden).sum() / hidden.sum()


# -----------------------------------------------------------------------------
# The rounds: what trainer.Trainer calls at its hooks

class Distillation:
    """An SDTT run's teacher and rounds. The Trainer calls: loss (every step), end_rounds
    (before every step and at the run's end), state/restore (last.pt), best_extra (what
    best.pt records) and note (the progress line)."""

    state_keys = ("teacher", "teacher_round")  # last.pt only: tools/export_weights.py drops them
    extra_len = 0  # the student reads diffusion's windows of block_size

    def __init__(self, model, tc, compile_model):
        self.tc = tc
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)  # frozen; last.pt restores it
        self.fwd_teacher = compile_model(self.teacher)
        self.round = 0

    def teacher_passes(self):
        return teacher_passes(self.tc.distill_start_passes, self.round)

    def student_passes(self):
        """The passes the student is learning to sample with: half its teacher's."""
        return self.teacher_passes() // 2

    def loss(self, student, x, mc, tc, generator):
        return distill_loss(student, self.fwd_teacher, x, mc.mask_id, self.teacher_passes(), tc, generator)

    def end_rounds(self, trainer):
        """At each round's end (every distill_round_steps steps, and when the run ends): save
        the student as student<passes>.pt, with the step count it was distilled for as its
        sampler default, and make it the teacher. Keyed on the teacher's round, not the step,
        so a resumed run never repeats a round's end."""
        while self.round < trainer.step // self.tc.distill_round_steps:
            name = f"student{self.student_passes()}.pt"
            trainer.save(name, sampler={"steps": self.student_passes()})
            if self.tc.distill_ema:  # the average becomes student and teacher, and restarts
                trainer.model.load_state_dict(trainer.ema.model.state_dict())
                trainer.ema = EMA(trainer.model, self.tc.ema)
            self.teacher.load_state_dict(trainer.model.state_dict())
            self.round += 1
            trainer.log(f"round {self.round} done at step {trainer.step}: saved {self.tc.out_dir}/{name}; "
                        f"the teacher now takes {2 * self.student_passes()} passes")

    def state(self):
        return {"teacher": {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()},
                "teacher_round": self.round}

    def restore(self, ckpt):
        self.teacher.load_state_dict(ckpt["teacher"])
        self.round = ckpt["teacher_round"]

    def best_extra(self, improved):
        """best.pt is always the latest student (its NELBO may rise; quality.py judges)."""
        return {"sampler": {"steps": self.student_passes()}}

    def note(self):
        return (f"round {self.round + 1}/{self.tc.distill_rounds}, passes "
                f"{2 * self.student_passes()} -> {self.student_passes()} | ")


class NoDistillation:
    """The hooks of a plain run: the objective's loss; best.pt only when validation improves."""

    state_keys = ()

    def __init__(self, objective):
        self.loss, self.extra_len = objective.loss, objective.extra_len

    def end_rounds(self, trainer):
        pass

    def state(self):
        return {}

    def restore(self, ckpt):
        pass

    def best_extra(self, improved):
        return {} if improved else None

    def note(self):
        return ""
