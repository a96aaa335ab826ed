"""
Plot training and validation curves from train.py's log.jsonl files.

    python plot_curve.py assets/runs/e_wsd.jsonl assets/runs/ar_c.jsonl --out assets/curve.png

The y-range follows the data, so every curve given is fully visible. --out: a file (its
extension picks the format; none: .png is added), or an existing folder to write curve.png
into; the path written is printed.
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cli import ArgumentParser, UserError, run_entry_point  # noqa: E402


def read(path):
    """([(minutes, train loss)], [(minutes, val)]) of one log; any problem is one UserError."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    train, val, dropped = [], [], 0
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            minutes = float(row["time"]) / 60
            points = [(series, float(row[key])) for series, key in ((train, "train_loss"), (val, "val")) if key in row]
        except (ValueError, KeyError, TypeError):  # not JSON, no time, not numbers
            raise UserError(f"{path} line {n} is not a train.py log row: {line.strip()[:60]!r}") from None
        for series, value in points:  # a diverged step (NaN/inf) is not a point of the curve
            if math.isfinite(value) and math.isfinite(minutes):
                series.append((minutes, value))
            else:
                dropped += 1
    if dropped:
        print(f"plot_curve.py: {path}: {dropped} NaN/inf value(s) left out", file=sys.stderr)
    if not val:
        raise UserError(f"{path} has no (finite) validation rows")
    return train, val


def plot(logs, labels=None, title=""):
    """The figure and its axes; the y-range is matplotlib's autoscale over every curve drawn
    (a fixed range cut off the AR baseline's rising validation curve)."""
    labels = labels or logs
    if len(labels) != len(logs):
        raise UserError(f"--labels: {len(labels)} labels for {len(logs)} logs")
    curves = [read(path) for path in logs]  # all read first: a bad file fails before any plotting
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for i, ((train, val), label) in enumerate(zip(curves, labels)):
        color = f"C{i}"
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.35, lw=1, label=f"{label}: train")
        best = min(v for _, v in val)
        ax.plot(*zip(*val), "o-", color=color, ms=3, lw=1.5, label=f"{label}: val (best {best:.3f})")
    ax.set_xlabel("wall-clock minutes (includes compile and evaluation)")
    ax.set_ylabel("nats / char")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig, ax


def out_path(out):
    """The file --out names: inside a folder (an existing one, or one ending with a slash),
    curve.png; without an extension, .png added (as matplotlib would, silently)."""
    if not out.strip():
        raise UserError("--out is empty: give an image file or a folder")
    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        return os.path.join(out, "curve.png")
    return out if os.path.splitext(out)[1] not in ("", ".") else out.rstrip(".") + ".png"


def save_atomically(fig, out):
    """Write the figure to a temp file, then rename: a full disk leaves no empty image behind."""
    fmt = os.path.splitext(out)[1].lstrip(".").lower()
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        fig.savefig(tmp, format=fmt)
        os.replace(tmp, out)
    except BaseException as e:  # Ctrl-C too: no half image left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        if not isinstance(e, (OSError, ValueError)):  # ValueError: an unknown image format
            raise
        raise UserError(f"cannot write {out}: {getattr(e, 'strerror', None) or e}") from None


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help="log.jsonl files (label = file name)")
    p.add_argument("--labels", nargs="*", help="one label per log")
    p.add_argument("--out", default="curve.png",
                   help="image to write (default %(default)s; its extension picks the format, none: .png); "
                        "an existing folder: FOLDER/curve.png")
    p.add_argument("--title", default="tiny-diffusion on Tiny Shakespeare (val = last 10%)")
    args = p.parse_args(argv)
    try:
        out = out_path(args.out)
        fig, _ = plot(args.logs, args.labels, args.title)
        save_atomically(fig, out)
    except UserError as e:
        sys.exit(f"plot_curve.py: error: {e}")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_entry_point(main)
