"""
Device and precision: which device to run on, and where bf16 is worth using.
"""

import torch

from cli import UserError


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


def sampling_precision(precision, device):
    """The samplers' "auto": bf16 where it is native (`native_bf16`), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device, precision="auto"):
    """bf16 autocast for precision "bf16", and for "auto" on CUDA; "fp32" is full precision.
    (On CPUs with bf16 instructions, "bf16" makes a forward pass almost twice as fast.)"""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16 and device.type in ("cuda", "cpu"))


def capture_graph(fn, warmups=1):
    """Capture fn() as one CUDA graph: `warmups` runs on a side stream first (allocations and
    compilation happen there, as torch.cuda.graph wants), then the capture. Returns (graph,
    what the captured call returned): replaying the graph rewrites those tensors in place."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
