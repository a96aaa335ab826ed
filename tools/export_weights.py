"""Strip a training checkpoint down to what sampling needs, weights in bf16 (half the size).

    python tools/export_weights.py out/gpu/best.pt weights/model.pt
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from model import read_checkpoint

src, dst = sys.argv[1], sys.argv[2]
ckpt = read_checkpoint(src)
ckpt.pop("optimizer", None)
ckpt.pop("generator", None)
ckpt["model"] = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
tmp = dst + ".tmp"
torch.save(ckpt, tmp)

import os
os.replace(tmp, dst)
print(f"{src} -> {dst}: step {ckpt.get('step')}, val {ckpt.get('val')}")
