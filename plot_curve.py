"""
Plot training and validation curves from train.py's log.jsonl files.

    python plot_curve.py assets/train_log_gpu.jsonl assets/train_log_ar.jsonl --out assets/curve.png
"""

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"plot_curve.py: error: cannot read {path}: {e}")
    train = [(r["time"] / 60, r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["time"] / 60, r["val"]) for r in rows if "val" in r]
    if not val:
        sys.exit(f"plot_curve.py: error: {path} has no validation rows")
    return train, val


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help="log.jsonl files (label = file name)")
    p.add_argument("--labels", nargs="*", help="one label per log")
    p.add_argument("--out", default="curve.png")
    p.add_argument("--title", default="tiny-diffusion on Tiny Shakespeare (val = last 10%)")
    args = p.parse_args()
    labels = args.labels or args.logs
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for i, (path, label) in enumerate(zip(args.logs, labels)):
        train, val = read(path)
        color = f"C{i}"
        ax.plot(*zip(*train), color=color, alpha=0.35, lw=1, label=f"{label}: train")
        ax.plot(*zip(*val), "o-", color=color, ms=3, lw=1.5, label=f"{label}: val (best {min(v for _, v in val):.3f})")
    ax.set_xlabel("wall-clock minutes (includes compile and evaluation)")
    ax.set_ylabel("nats / char")
    ax.set_ylim(0.8, 2.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
