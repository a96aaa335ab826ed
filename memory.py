"""
Will a training run fit in memory? An estimate made before anything is allocated, so that a
model or batch too large for the machine is one line saying what was asked, about how much it
needs and how much is free, not the allocator's "[enforce fail at alloc_cpu.cpp:127]" minutes
later (or the machine swapping until the kernel kills the run).
"""

import torch

from cli import UserError
from model import Transformer

# Bytes a training step keeps per token, layer and channel for the backward pass, measured on
# CPU in fp32 (torch 2.13, widths 256-512, contexts 128-256: 118-130; the attention's T x T
# scores are not kept) and halved under bf16 autocast. Per parameter: the weight, its gradient
# and AdamW's two moments in fp32 (Muon keeps one for matrices: this errs high), 4 more for an
# EMA copy, 4 for a distillation teacher and 16 more for D-MMD's auxiliary model (weights,
# gradients, moments).
ACTIVATION_BYTES = {"fp32": 130, "bf16": 65}
STATE_BYTES = 16


def free_bytes(device):
    """Memory a new allocation can take on `device`: CUDA's free memory, or on CPU the kernel's
    MemAvailable (what can be allocated without swapping); None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: no estimate to compare with
        return None


def count_params(mc):
    """The model's parameters, counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        return Transformer(mc).num_params()


def training_bytes(mc, tc, n_params, world=1, bf16=False):
    """About how much memory one process needs to train: its share of the batch's activations
    (a block model's sequences are two copies of the window) and the weights' training state."""
    seq = mc.block_size * (2 if mc.objective == "block" else 1)
    tokens = tc.batch_size // world * seq
    activations = tokens * mc.n_layer * mc.n_embd * ACTIVATION_BYTES["bf16" if bf16 else "fp32"]
    per_param = STATE_BYTES + (4 if tc.ema else 0) + (4 if tc.distill_from else 0) + \
        (STATE_BYTES if tc.distill_from and tc.distill_method == "dmmd" else 0)
    return activations + n_params * per_param


def check_training_fits(mc, tc, device, world=1, bf16=False):
    """A UserError when the estimate exceeds what `device` has free: what was asked (the model's
    size and the batch), about how much it needs, what is free, and what to lower."""
    free = free_bytes(device)
    if free is None:
        return
    n_params = count_params(mc)
    need = training_bytes(mc, tc, n_params, world, bf16)
    if need <= free:
        return
    batch = f"batches of {tc.batch_size // world} x {mc.block_size}" + (" per process" if world > 1 else "")
    raise UserError(f"training a {format_count(n_params)}-parameter model ({mc.n_layer} layers, width {mc.n_embd}) "
                    f"on {batch} needs about {format_bytes(need)} of memory; {device} has {format_bytes(free)} free: "
                    f"lower --batch_size, --block_size, --n_layer or --n_embd")


def format_bytes(n):
    """1.2 GB, 830 GB, 4.6 TB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def format_count(n):
    """10.7M, 51.5B."""
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"
