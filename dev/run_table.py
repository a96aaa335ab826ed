"""
The run table of dev/gpu_plan_arms.sh: one row per run (steps, minutes, best step, val at each
context under each protocol, paired with the AR run of the same seed), then one row per arm over
its seeds (the mean paired difference, its standard error and the seed spread), as Markdown.

    python dev/run_table.py OUT                   # OUT as the plan wrote it: runs/, eval_*.txt, device.txt
    python dev/run_table.py OUT --save table.md

Columns, nats/char: "NELBO C" is the run's val NELBO (NLL for the AR run) at context C, "l2r C"
its exact left-to-right NLL (diffusion and mixed runs), "as AR C" a mixed run's network read as an
AR model; "− ar", "− full" the paired difference against the AR run, or the base recipe's run, of
the same seed on the same blocks, ± its standard error over blocks. Over seeds: the mean of the paired differences, ± sqrt(sum se²)/n, and the
seed spread (half the range between seeds).
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import glob
import math
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import ArgumentParser, UserError, read_jsonl, run_entry_point, shown  # noqa: E402

SECTION = re.compile(r"^== context (\d+) --(order any|order l2r|as-ar)\s*$")
RESULT = re.compile(r"val (?:NLL|NELBO|left-to-right NLL \(exact\)) ([0-9.]+) ± ([0-9.]+) nats/char")
PAIRED = re.compile(r"^paired difference .* - (\S+): ([+-][0-9.]+) ± ([0-9.]+) nats/char")
PROTOCOL = {"order any": "NELBO", "order l2r": "l2r", "as-ar": "as AR"}


def parse_scores(lines):
    """{(protocol, context): (value, se, {reference arm: (paired diff, its se)})} from the lines
    of a score file (eval_NAME.txt); the reference is the arm of the run the difference is taken
    against. Empty for lines without the plan's sections (a plain evaluate.py output)."""
    scores, key, found = {}, None, None
    for line in lines:
        if m := SECTION.match(line):
            key, found = (PROTOCOL[m[2]], int(m[1])), None
        elif key and found is None and (m := RESULT.search(line)):  # the section's first result: --ckpt
            found = scores[key] = (float(m[1]), float(m[2]), {})
        elif key and found and (m := PAIRED.match(line)):
            reference = split_name(os.path.basename(os.path.dirname(m[1])))[0]
            found[2][reference] = (float(m[2]), float(m[3]))
    return scores


def read_eval(path):
    """parse_scores of one eval_NAME.txt; a file without scores is one UserError."""
    with open(path, encoding="utf-8") as f:
        scores = parse_scores(f)
    if not scores:
        raise UserError(f"{shown(path)} has no dev/gpu_plan_arms.sh scores")
    return scores


def read_run(folder):
    """(steps, minutes, best step) of a run folder's log.jsonl."""
    rows = [r for r in read_jsonl(os.path.join(folder, "log.jsonl"), "run log") if isinstance(r, dict)]
    steps = max((r["step"] for r in rows if "step" in r), default=0)
    minutes = max((r["time"] for r in rows if "time" in r), default=0.0) / 60
    evals = [r for r in rows if "val" in r]
    best = min(evals, key=lambda r: r["val"])["step"] if evals else None
    return steps, minutes, best


def split_name(name):
    """('mixed', 2) from 'mixed_s2'."""
    arm, _, seed = name.rpartition("_s")
    return (arm, int(seed)) if arm and seed.isdigit() else (name, None)


def columns(runs):
    """[((protocol, context), [reference arms])] that any run has, in a fixed order: the AR run first."""
    keys = {}
    for _, _, scores in runs:
        for key, (_, _, paired) in scores.items():
            keys.setdefault(key, set()).update(paired)
    order = sorted(keys, key=lambda k: (["NELBO", "l2r", "as AR"].index(k[0]), k[1]))
    return [(k, sorted(keys[k], key=lambda r: (r != "ar", r))) for k in order]


def fmt(x, se=None, sign=False):
    if x is None:
        return ""
    s = f"{x:+.4f}" if sign else f"{x:.4f}"
    return s if se is None else f"{s} ± {se:.4f}"


def table(out):
    names = sorted((os.path.basename(p)[len("eval_"):-len(".txt")] for p in glob.glob(os.path.join(out, "eval_*.txt"))),
                   key=lambda n: (split_name(n)[0] not in ("ar", "full"), split_name(n)[0] != "ar", n))  # ar, full first
    if not names:
        raise UserError(f"{shown(out)} has no eval_*.txt: run dev/gpu_plan_arms.sh first")
    scores = {name: read_eval(os.path.join(out, f"eval_{name}.txt")) for name in names}
    runs = [(name, read_run(os.path.join(out, "runs", name)), scores[name]) for name in names]
    cols = columns(runs)
    head = ["run", "seed", "steps", "min", "best step"]
    for (proto, ctx), refs in cols:
        head += [f"{proto} C={ctx}"] + [f"− {ref} C={ctx}" for ref in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_arm = {}
    for name, (steps, minutes, best), scores in runs:
        arm, seed = split_name(name)
        cells = [arm, "" if seed is None else str(seed), f"{steps:,}", f"{minutes:.1f}", f"{best:,}" if best else ""]
        for key, refs in cols:
            v, se, paired = scores.get(key, (None, None, {}))
            cells.append(fmt(v, se))
            for ref in refs:
                cells.append(fmt(*paired.get(ref, (None, None)), sign=True))
                if ref in paired:
                    by_arm.setdefault((arm, key, ref), []).append(paired[ref])
        lines.append("| " + " | ".join(cells) + " |")
    if by_arm:
        lines += summary(names, cols, by_arm)
    device = os.path.join(out, "device.txt")
    if os.path.isfile(device):
        with open(device, encoding="utf-8") as f:
            lines += ["", "Device: " + "; ".join(line.strip() for line in f if line.strip())]
    return "\n".join(lines) + "\n"


def summary(names, cols, by_arm):
    """One row per arm: its paired differences over seeds."""
    pairs_of = [(key, ref) for key, refs in cols for ref in refs]
    lines = ["", "| arm | " + " | ".join(f"{p} − {ref} C={c}" for (p, c), ref in pairs_of) + " |",
             "|---|" + "---|" * len(pairs_of)]
    for arm in dict.fromkeys(split_name(n)[0] for n in names):
        cells = [arm]
        for key, ref in pairs_of:
            pairs = by_arm.get((arm, key, ref), [])
            if not pairs:
                cells.append("")
                continue
            mean = sum(d for d, _ in pairs) / len(pairs)
            se = math.sqrt(sum(s * s for _, s in pairs)) / len(pairs)
            spread = (max(d for d, _ in pairs) - min(d for d, _ in pairs)) / 2
            cells.append(f"{mean:+.4f} ± {se:.4f}" + (f" (n={len(pairs)}, spread {spread:.4f})" if len(pairs) > 1 else ""))
        if any(cells[1:]):
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the folder dev/gpu_plan_arms.sh wrote")
    p.add_argument("--save", metavar="FILE", help="also write the table to FILE")
    args = p.parse_args(argv)
    try:
        if not os.path.isdir(args.out):
            raise UserError(f"{shown(args.out)} is not a folder")
        text = table(args.out)
        if args.save:
            try:
                with open(args.save, "w", encoding="utf-8") as f:
                    f.write(text)
            except OSError as e:
                raise UserError(f"cannot write {shown(args.save)}: {e.strerror}") from None
    except UserError as e:
        sys.exit(f"run_table.py: error: {e}")
    print(text, end="")


if __name__ == "__main__":
    run_entry_point(main)
