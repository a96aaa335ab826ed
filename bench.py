"""
Time the training step of the full model: the fast path (bf16 autocast, torch.compile,
fused AdamW, TF32) against the plain path (fp32, eager) of the same model, in one run.

    python bench.py                      # full config, 30 timed steps per path (CUDA)
    python bench.py --steps 3 --batch_size 8     # quick look on a CPU

Prints tokens/s, MFU (model FLOPs over 989 TFLOP/s, an H100's dense bf16 peak) and the
speed-up. Any train.py flag (e.g. --block_size, --n_layer) also works here.
"""

import sys

import torch

import train
from model import UserError


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    steps = 30
    if "--steps" in argv:
        i = argv.index("--steps")
        steps = int(argv[i + 1])
        del argv[i:i + 2]
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return
    try:
        rows = []
        for name, extra in (("fast: bf16 + compile + fused AdamW", ["--precision", "auto", "--compile", "auto"]),
                            ("plain: fp32 eager", ["--precision", "fp32", "--compile", "off"])):
            mc, tc, _, _ = train.parse_args(["--preset", "gpu"] + argv + extra)
            train.check_config(mc, tc)
            print(f"timing {name} ...", flush=True)
            tok_s, mfu = train.train(mc, tc, bench_steps=steps)
            rows.append((name, tok_s, mfu))
            torch._dynamo.reset()
    except UserError as e:
        sys.exit(f"bench.py: error: {e}")
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\n{steps} steps of batch {tc.batch_size} x {mc.block_size}, device {device}")
    if not torch.cuda.is_available():
        print("(no CUDA: the 'fast' path falls back to fp32 eager here, so the two rows time the same code)")
    for name, tok_s, mfu in rows:
        print(f"{name:<36} {tok_s:>12,.0f} tokens/s" + (f"   MFU {mfu:6.1%}" if mfu is not None else ""))
    print(f"speed-up of the fast path: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
