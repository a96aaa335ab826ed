"""
Strip a training checkpoint down to what sampling needs, with bf16 weights (half the size).

    python tools/export_weights.py out/gpu/best.pt weights/model.pt
    python tools/export_weights.py out/gpu/best.pt weights/      # a folder: weights/best.pt
    python tools/export_weights.py out/dmmd/student16.pt weights/student16.pt \
        --sampler steps=16,order=spread,remask=0,temperature=0.95,schedule=linear

--sampler stores the setting the model was measured in band at (quality.py's field=value form);
sample.py, bench.py --sample and quality.py's 'default' use it wherever their flags are silent.

Refused, with one line saying why and nothing written: weights that are not finite (NaN or
inf, also after rounding to bf16), a target that is the source itself, a target folder that
cannot be written to.
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from checkpoint import read_checkpoint, write_checkpoint  # noqa: E402
from cli import ArgumentParser, UserError, parse_fields, run_entry_point  # noqa: E402
from distill import Distillation  # noqa: E402
from dmmd import DMMDistillation  # noqa: E402
from sampler import ENGINE_FIELDS, SamplerConfig  # noqa: E402


def target(src, dst):
    """The file to write: dst, or inside it under the source's file name when dst is a folder
    (or ends with a slash); never the source itself."""
    if os.path.isdir(dst) or dst.endswith(("/", os.sep)):
        dst = os.path.join(dst, os.path.basename(src))
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise UserError(f"{dst} is the source checkpoint itself: give another target (it would lose "
                        "the training state)")
    return dst


def check_writable(dst):
    """Create the target's folder if missing and write a probe there, so that the failure is
    one plain line (torch.save's own error carries '[enforce fail at ...]')."""
    folder = os.path.dirname(os.path.abspath(dst))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:  # makedirs: a file is in the folder's place
        raise UserError(f"cannot write {dst}: {folder} is a file, not a folder") from None
    except OSError as e:
        raise UserError(f"cannot write {dst}: {e.strerror or e} ({folder})") from None


def check_finite(weights, src):
    for name, v in weights.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            bad = (~torch.isfinite(v)).sum().item()
            raise UserError(f"{src}: tensor {name} has {bad} NaN/inf values of {v.numel()} (in bf16): "
                            "not exporting a model that cannot sample")


def sampler_setting(text):
    """--sampler's {field: value}, checked by the sampler's own rules."""
    setting = parse_fields(text, SamplerConfig, ENGINE_FIELDS)
    try:
        SamplerConfig.check_stored(setting)
    except ValueError as e:
        raise UserError(f"--sampler {text!r}: {e}") from None
    return setting


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="training checkpoint (best.pt or last.pt)")
    p.add_argument("dst", help="where to write the sampling checkpoint: a file, or a folder to write it into "
                               "under the source's file name")
    p.add_argument("--sampler", default=None, metavar="SETTING",
                   help="the sampler setting to store, field=value[,field=value] over sampler.SamplerConfig's "
                        "fields, replacing the checkpoint's (default: keep the checkpoint's, e.g. a student's steps)")
    args = p.parse_args(argv)
    try:
        setting = None if args.sampler is None else sampler_setting(args.sampler)  # wrong: said before reading
        ckpt = read_checkpoint(args.src, finite=False)  # check_finite below says how many, in bf16
        dst = target(args.src, args.dst)
        for training_only in ("optimizer", "generator", "elapsed", "rng", "ema", *Distillation.state_keys,
                              *DMMDistillation.state_keys):
            ckpt.pop(training_only, None)
        if args.sampler is not None:
            ckpt["sampler"] = setting
        ckpt["model"] = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
        check_finite(ckpt["model"], args.src)
        check_writable(dst)
        write_checkpoint(ckpt, dst)  # removes its temp file and torch's C++ location on failure
    except UserError as e:
        sys.exit(f"export_weights.py: error: {e}")
    print(f"{args.src} -> {dst}: step {ckpt.get('step')}, val {ckpt.get('val')}, sampler {ckpt.get('sampler', {})}")


if __name__ == "__main__":
    run_entry_point(main)
