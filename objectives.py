"""
The training objectives, one table: OBJECTIVES[name] is what `train.py --objective name`
optimises (its loss), how long a training sequence is, the network's attention pattern, and
the rules its options obey. ModelConfig.objective stores the name; everything else is looked
up here. A new objective is one entry below plus its loss (diffusion.py holds the maths).
"""

from dataclasses import dataclass
from typing import Callable

from diffusion import MaskRate, autoregressive_loss, block_diffusion_loss, diffusion_loss, mixed_loss


def masked_diffusion(model, x, mc, tc, generator):
    """The NELBO of masked diffusion under the training levers (--t_dist, --loss_weights, ...)."""
    return diffusion_loss(model, x, mc.mask_id, tc.prefix_prob, generator, tc.block_prob,
                          MaskRate(tc.t_dist, tc.t_min, tc.t_max), tc.loss_weights)


def next_character(model, x, mc, tc, generator):
    return autoregressive_loss(model, x)


def block_diffusion(model, x, mc, tc, generator):
    return block_diffusion_loss(model, x, mc.mask_id, mc.block_len, tc.block_t_min, tc.block_t_max, generator)


def ar_and_diffusion(model, x, mc, tc, generator):
    """--ar_fraction of the rows (at least one, never all) AR-style, the rest by diffusion."""
    ar_rows = min(max(1, round(tc.ar_fraction * len(x))), len(x) - 1)
    return mixed_loss(model, x, ar_rows, lambda m, rows: masked_diffusion(m, rows, mc, tc, generator))


def block_problems(mc, tc):
    problems = []
    if not 1 <= mc.block_len <= mc.block_size or mc.block_size % mc.block_len:
        problems.append(f"--block_len must divide --block_size {mc.block_size} (1 .. {mc.block_size}), "
                        f"got {mc.block_len}")
    if not 0 <= tc.block_t_min < tc.block_t_max <= 1:
        problems.append("--block_t_min and --block_t_max must satisfy 0 <= MIN < MAX <= 1")
    if tc.block_prob:
        problems.append("--block_prob is for --objective diffusion (a block model is trained on blocks already)")
    return problems


def mixed_problems(mc, tc):
    # ar_and_diffusion keeps one row of each kind: a batch of one has no AR row (a NaN loss)
    if tc.batch_size < 2:
        return [f"--objective mixed needs --batch_size >= 2 (each batch trains at least one row AR-style and "
                f"one by diffusion), got {tc.batch_size}"]
    return []


@dataclass(frozen=True)
class Objective:
    loss: Callable             # (model, x, mc, tc, generator) -> the batch's scalar loss
    extra_len: int = 0         # characters per training sequence beyond block_size (the AR target)
    causal: bool = False       # the network's attention by default (a forward pass may override it)
    problems: Callable = lambda mc, tc: []  # (mc, tc) -> one-line complaints about its options
    one_process: bool = False  # two forward passes per step, which DDP's gradient hooks do not allow
    distillable: bool = False  # --distill_from may start from such a model


OBJECTIVES = {
    "diffusion": Objective(masked_diffusion, distillable=True),
    "ar": Objective(next_character, extra_len=1, causal=True),
    "mixed": Objective(ar_and_diffusion, extra_len=1, problems=mixed_problems, one_process=True, distillable=True),
    "block": Objective(block_diffusion, problems=block_problems),
}
