"""
Plot val NELBO (NLL for the AR model) against block length from evaluate.py's outputs: the
spectrum from the autoregressive model (L' = 1) through block diffusion to the diffusion model
(L' = the context), one line per --context, standard errors as bars.

    python evaluate.py --ckpt out/bd_4/best.pt --context 0 > bd_4_eval0.txt   # one file per model and context
    python dev/plot_spectrum.py 1=bd_ar_eval0.txt 4=bd_4_eval0.txt ... 1=bd_ar_eval128.txt ... --out spectrum.png

Each argument is L'=FILE, FILE an evaluate.py output; its first result line (the --ckpt model)
is plotted at its context. A dev/gpu_plan_arms.sh score file (eval_NAME.txt) gives one point per
context, its NELBO sections':

    python dev/plot_spectrum.py 1=OUT/eval_ar_s1.txt 4=OUT/eval_b4_s1.txt ... 256=OUT/eval_full_s1.txt

The runs of RESULTS.md's 2026-12-01 entry kept their evaluations in one file
(assets/runs/bd_eval_h200.txt), not one per model: there is no figure of them.
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cli import ArgumentParser, UserError, shown, run_entry_point  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_table import parse_scores  # noqa: E402  (dev/gpu_plan_arms.sh's score files)

RESULT = re.compile(r"val (?:NLL|NELBO) ([0-9.]+) ± ([0-9.]+) nats/char .*\[context (\d+):")


def read_points(arg):
    """[(L', context, mean, se)] from one L'=FILE argument: its first result line, or the first
    of each NELBO section (--order any) of a score file."""
    length, sep, path = arg.partition("=")
    if not sep or not length.isdigit() or int(length) < 1:
        raise UserError(f"expected L'=FILE with L' >= 1, got {arg!r}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not an evaluate.py output (not UTF-8 text)") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    scores = parse_scores(lines)
    if scores:  # a score file: each context's NELBO (NLL for the AR run) section
        points = [(int(length), ctx, v, se) for (proto, ctx), (v, se, _) in sorted(scores.items()) if proto == "NELBO"]
    else:
        found = next((m for m in map(RESULT.search, lines) if m), None)
        points = [] if found is None else [(int(length), int(found[3]), float(found[1]), float(found[2]))]
    if not points:
        raise UserError(f"{path} has no evaluate.py result line")
    return points


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points", nargs="+", metavar="L'=FILE", help="block length and an evaluate.py output")
    p.add_argument("--out", default=os.path.join(ROOT, "assets", "block_spectrum.png"),
                   help="image to write, its extension the format (default: assets/block_spectrum.png); "
                        "an existing folder: FOLDER/block_spectrum.png")
    p.add_argument("--title", default="Block diffusion on Tiny Shakespeare: val NELBO vs block length")
    args = p.parse_args(argv)
    try:
        points = [point for a in args.points for point in read_points(a)]
        out = os.path.join(args.out, "block_spectrum.png") if os.path.isdir(args.out) else args.out
        fig = plot(points, args.title)
        try:
            fig.savefig(out, dpi=120)
        except (OSError, ValueError) as e:  # ValueError: an unknown image format
            raise UserError(f"cannot write {shown(out)}: {getattr(e, 'strerror', None) or e}") from None
    except UserError as e:
        sys.exit(f"plot_spectrum.py: error: {e}")
    print(f"wrote {shown(out)} ({len(points)} points)")


def plot(points, title):
    """The figure: one line per context, L' on a log axis, standard errors as bars."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for context in sorted({c for _, c, _, _ in points}):
        row = sorted((L, m, s) for L, c, m, s in points if c == context)
        ax.errorbar([r[0] for r in row], [r[1] for r in row], yerr=[r[2] for r in row], marker="o", capsize=3,
                    label="isolated windows" if context == 0 else f"context {context}")
        for L, m, _ in row:
            ax.annotate(f"{m:.3f}", (L, m), textcoords="offset points", xytext=(4, 6), fontsize=8)
    lengths = sorted({L for L, _, _, _ in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [("1 (AR)" if L == 1 else f"{L} (diffusion)" if L == max(lengths) else str(L))
                            for L in lengths])
    ax.set_xlabel("block length L'")
    ax.set_ylabel("val NLL / NELBO (nats/char)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    run_entry_point(main)
