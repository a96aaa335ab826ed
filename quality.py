"""
Score generated text against real held-out text, for several sampler settings at once.

    python quality.py                                  # the default grid, 32 prompts
    python quality.py --prompts 64 --settings steps=256 steps=64 threshold=0.9,temperature=1.0
    python quality.py --prompts 64 --seeds 0,1,2 --jsonl out/grid.jsonl   # mean ± standard error
    python quality.py --frontier out/grid*.jsonl --out assets/frontier.png  # best per pass count

Every prompt is the first --prompt-chars characters of a window of the validation split
(never seen in training); the model writes the rest of the window. Each row reports:
  AR NLL     mean -log p of the generated characters under the autoregressive baseline
             (weights/ar_baseline.pt), given the prompt and what precedes them: lower reads
             more like Shakespeare to a second model, but very low often means repetitive
  words      % of generated words that occur in the training text
  distinct   distinct word bigrams / all word bigrams (repetition: lower = more repeats)
  entropy    entropy of the character distribution of the output, bits
  runs       % of samples with a word repeated three or more times in a row ("the the the")
  NFE        forward passes; chars/s for the whole batch on this device
The first row scores the real continuation the same way: good text sits in a band around it
on every column at once, not at the lowest AR NLL; the last column names the columns outside
the band (BAND below). With several --seeds every figure is the mean over seeds, ± its
standard error over seeds. Settings start from sample.py's defaults
("default" is them unchanged) and override any sampler option: steps, threshold, temperature,
top_k, top_p, schedule, order, remask, remask_by, block, cache, refresh, precision; a name stands
for its fields (sampler.NAMED_SETTINGS: fast32, the 32-pass setting in band; sparse2, the sparse
cache nearest the band; more fields may follow: "fast32,cache=sparse"). A setting that
starts with "ar" ("ar", "ar,temperature=1.0") has the --ar model write the same continuations
with its own sampler (one character per pass) and the same sampling rules: the other side of
a diffusion-vs-AR comparison, scored the same way (its AR NLL is its own, so low by design).
A setting with a copula ("steps=16,copula=ar", copula.py) adds the copula's passes to its NFE
cell: "16 +238 ar +12 ref" is 16 diffusion passes, 238 AR passes and 12 more full passes for the
left readings, per sample; such rows stay out of --frontier. With copula=ar the AR NLL column is
the copula's own judgement of its text: low by design, as for "ar".
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import json
import math
import os
import re
import sys
import time
from collections import Counter

import torch
import torch.nn.functional as F

from ar_sampler import generate_ar
from copula import CopulaCost, check_copula_vocabulary, generate_with_cost
from checkpoint import DEFAULT_AR, DEFAULT_CKPT, load_model_of_kind
from cli import ArgumentParser, Progress, UserError, add_progress_flag, parse_fields, read_jsonl, run_entry_point
from corpus import DATA_DEFAULT, decode, encode, load_text, split_text
from devices import autocast, pick_device
from sampler import ENGINE_FIELDS, NAMED_SETTINGS, SamplerConfig, check_for_model, expand_setting, generate

DEFAULT_SETTINGS = ["default", "steps=256", "steps=32", "threshold=0.9", "temperature=1.0", "temperature=0.6",
                    "order=noisy", "remask=1.0", "top_p=0.9", "block=32", "block=32,cache=prefix",
                    "block=32,cache=dual", "block=64,cache=dual", "block=16,cache=dual"]
MAX_PROMPTS = 1024  # prompts are one batch: this bounds its memory
SEED_RANGE = 2 ** 31  # as sample.py: prompt i of seed s draws with s + i, hashed as 32 bits
# Real text's band: generated text is "in band" when every column is inside it at once.
BAND_WORDS = 0.91      # at least this fraction of real words (real text: ~0.92)
BAND_DISTINCT = 0.85   # at least this fraction of distinct word bigrams
BAND_AR_NLL = 0.10     # AR NLL within this fraction of real text's, either side
BAND_ENTROPY = 0.15    # character entropy within this many bits of real text's
BAND_RUNS = 0.05       # at most this fraction of samples with runs more than real text has


def parse_setting(text, checkpoint_defaults=None):
    """'steps=64,temperature=0.8' -> a SamplerConfig: sample.py's defaults for this checkpoint
    (`checkpoint_defaults`: model.sampler_defaults) with these changed (a leading 'ar' is the AR
    sampler's marker, read by is_ar; a name of sampler.NAMED_SETTINGS stands for its fields)."""
    parts = expand_setting(text).split(",")
    if "ar" in parts[1:]:
        raise UserError(f"'ar' comes first in a setting, got {text!r}")
    rest = [p for p in parts if p != "ar"]
    given = parse_fields(",".join(rest), SamplerConfig, ENGINE_FIELDS) if rest else {}
    try:
        return SamplerConfig.from_options(checkpoint_defaults, **given)
    except ValueError as e:
        raise UserError(f"setting {text!r}: {e}") from None


@torch.no_grad()
def ar_nll(ar_model, ids, start):
    """Mean NLL (nats/char) of ids[:, start:] under the autoregressive model."""
    with autocast(ids.device):
        logits = ar_model(ids[:, :-1])
    nll = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
    return nll[:, start - 1:].mean().item()


def text_stats(texts, vocabulary):
    words = [w for t in texts for w in re.findall(r"[A-Za-z']+", t)]
    known = sum(w.lower() in vocabulary for w in words) / max(len(words), 1)
    bigrams = [tuple(ws[i:i + 2]) for t in texts for ws in [re.findall(r"[A-Za-z']+", t)] for i in range(len(ws) - 1)]
    distinct = len(set(bigrams)) / max(len(bigrams), 1)
    counts = Counter("".join(texts))
    total = sum(counts.values())
    entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
    runs = sum(has_run(t) for t in texts) / max(len(texts), 1)
    return known, distinct, entropy, runs


def parse_seeds(text):
    """'0,1,2' -> [0, 1, 2], each in the sampler's seed range."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds must be a comma list of integers, got {text!r}") from None
    bad = [s for s in seeds if not 0 <= s < SEED_RANGE - MAX_PROMPTS]
    if bad:
        raise UserError(f"--seeds must be in 0..{SEED_RANGE - MAX_PROMPTS - 1}, got {bad[0]}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds lists a seed twice: {text!r}")
    return seeds


def outside_band(stats, real):
    """The names of the columns where `stats` is outside real text's band (BAND_*)."""
    checks = {"words": stats["words"] >= BAND_WORDS,
              "distinct": stats["distinct"] >= BAND_DISTINCT,
              "AR NLL": abs(stats["ar_nll"] - real["ar_nll"]) <= BAND_AR_NLL * real["ar_nll"],
              "entropy": abs(stats["entropy"] - real["entropy"]) <= BAND_ENTROPY,
              "runs": stats["runs"] <= real["runs"] + BAND_RUNS}
    return [name for name, ok in checks.items() if not ok]


def mean_se(values):
    """(mean, standard error of the mean); the error is 0 for a single value."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def has_run(text, length=3):
    """True if some word appears `length` or more times in a row (case-insensitive)."""
    words = [w.lower() for w in re.findall(r"[A-Za-z']+", text)]
    return any(len(set(words[i:i + length])) == 1 for i in range(len(words) - length + 1))


def quality_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="diffusion model to score (default: weights/model.pt)")
    p.add_argument("--ar", default=DEFAULT_AR, help="autoregressive scorer (default: weights/ar_baseline.pt)")
    p.add_argument("--data", default=DATA_DEFAULT, help="the text; prompts come from its validation split")
    p.add_argument("--prompts", type=int, default=32, help=f"number of prompts, one batch, 1..{MAX_PROMPTS} (default %(default)s)")
    p.add_argument("--prompt-chars", type=int, default=32,
                   help="characters of each prompt, 1 .. the model's context - 1; the model writes the rest of the "
                        "window (default %(default)s)")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                   help="sampler settings to score, each 'default' or field=value[,field=value] over "
                        f"SamplerConfig's fields, or a name, {', '.join(NAMED_SETTINGS)} (sampler.NAMED_SETTINGS), "
                        "fields may follow (default: a grid of 14)")
    p.add_argument("--seeds", "--seed", default="0",
                   help=f"sampler seeds, a comma list (e.g. 0,1,2), each in 0..{SEED_RANGE - MAX_PROMPTS - 1}: each setting is scored once per seed and "
                        "reported as mean ± standard error; prompt i of seed s uses s + i (default %(default)s)")
    p.add_argument("--jsonl", default=None, metavar="PATH",
                   help="also append one JSON row per setting (every statistic, per seed and mean) to PATH")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    add_progress_flag(p)
    return p


def is_ar(setting):
    return setting.split(",")[0] == "ar"


def check_settings(settings, model, chars):
    """Each diffusion setting against the checkpoint (a block model's rules, a copula's
    vocabulary): one UserError naming the setting."""
    for name, config in (s for s in settings if not is_ar(s[0])):
        try:
            check_for_model(model, config)
            check_copula_vocabulary(model, config, chars)
        except (ValueError, UserError) as e:
            raise UserError(f"setting {name!r}: {e}") from None


def timed_generations(model, real, P, config, seeds, sample=generate, progress=None):
    """For each seed, the model's continuations of real's first P characters written by
    sample (generate, or ar_sampler.generate_ar); and the seconds they took (a warm-up
    generation first, untimed). progress: updated once per seed."""
    outs, seconds, nfe = [], 0.0, 0
    sync = torch.cuda.synchronize if real.device.type == "cuda" else (lambda: None)
    for seed in seeds:
        canvas = real.clone()
        canvas[:, P:] = model.config.mask_id
        sample(model, canvas[:1], config, seed)  # warm-up
        sync()
        t0 = time.time()
        out, nfe = sample(model, canvas, config, seed)
        sync()
        seconds += time.time() - t0
        outs.append(out)
        if progress:
            progress.update()
    return outs, seconds, nfe


def frontier_rows(paths):
    """{passes: (best row, rows at that count)} from --jsonl files: the best is the setting with
    the most real words among those whose diversity (entropy, distinct bigrams) is in band, so
    that repeating a few safe words cannot win, and of those in band on every column if any
    are (more real words than real text, at too low an AR NLL, is too safe); None where no
    setting keeps its diversity."""
    by_nfe, real = {}, None
    for path in paths:
        for r in read_jsonl(path, "--frontier"):
            if not isinstance(r, dict) or "mean" not in r:
                raise UserError(f"--frontier {path}: not a quality.py --jsonl file")
            if r["setting"] == "real validation text":
                real = r
            elif not r["setting"].startswith("ar") and r.get("copula", "none") == "none":  # diffusion passes only
                by_nfe.setdefault(r["nfe"], []).append(r)
    if real is None or not by_nfe:
        raise UserError("--frontier: no real-text row or no diffusion settings in " + ", ".join(paths))
    frontier = {}
    for nfe, rows in sorted(by_nfe.items()):
        diverse = [r for r in rows if not {"entropy", "distinct"} & set(r["outside_band"])]
        frontier[nfe] = (max(diverse, key=lambda r: (not r["outside_band"], r["mean"]["words"])) if diverse else None, rows)
    return frontier, real


def frontier_report(argv):
    """The best setting per pass count (frontier_rows) as a table, and words % and entropy
    against passes as a PNG, real text's band drawn."""
    p = ArgumentParser(prog="quality.py --frontier", description="the quality-vs-passes frontier of quality.py grids")
    p.add_argument("--frontier", nargs="+", required=True, help="JSONL files written by quality.py --jsonl")
    p.add_argument("--out", default="assets/frontier.png", help="PNG to write (default %(default)s)")
    args = p.parse_args(argv)
    try:
        if not args.out.endswith(".png") or not os.path.isdir(os.path.dirname(args.out) or "."):
            raise UserError(f"--out must be a .png in an existing folder, got {args.out!r}")
        frontier, real = frontier_rows(args.frontier)
    except UserError as e:
        sys.exit(f"quality.py: error: {e}")
    print("| passes | best setting | words % | distinct % | entropy (bits) | AR NLL | outside the band | settings |")
    print("|---|---|---|---|---|---|---|---|")
    for nfe, (best, rows) in frontier.items():
        if best is None:
            print(f"| {nfe} | none keeps entropy and distinct in band | | | | | | {len(rows)} |")
            continue
        m, se = best["mean"], best["se"]
        print(f"| {nfe} | {best['setting']} | {100 * m['words']:.1f} ± {100 * se['words']:.1f} | "
              f"{100 * m['distinct']:.1f} | {m['entropy']:.3f} ± {se['entropy']:.3f} | {m['ar_nll']:.3f} | "
              f"{', '.join(best['outside_band']) or 'in band'} | {len(rows)} |")
    plot_frontier(frontier, real, args.out)
    print(f"wrote {args.out}")


def plot_frontier(frontier, real, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points = [(n, b) for n, (b, _) in frontier.items() if b is not None]
    fig, (words, entropy) = plt.subplots(1, 2, figsize=(10, 4))
    passes = [n for n, _ in points]
    words.errorbar(passes, [100 * b["mean"]["words"] for _, b in points],
                   yerr=[100 * b["se"]["words"] for _, b in points], marker="o", label="best setting")
    words.axhline(100 * BAND_WORDS, color="gray", ls="--", label=f"band: ≥ {100 * BAND_WORDS:.0f}%")
    words.axhline(100 * real["mean"]["words"], color="green", ls=":", label="real text")
    words.set(xlabel="forward passes", ylabel="real words %", title="Real words against passes")
    e = real["mean"]["entropy"]
    entropy.errorbar(passes, [b["mean"]["entropy"] for _, b in points],
                     yerr=[b["se"]["entropy"] for _, b in points], marker="o", label="best setting")
    entropy.axhspan(e - BAND_ENTROPY, e + BAND_ENTROPY, color="gray", alpha=0.2, label="band")
    entropy.axhline(e, color="green", ls=":", label="real text")
    entropy.set(xlabel="forward passes", ylabel="character entropy (bits)", title="Entropy of the best setting")
    for ax in (words, entropy):
        ax.set_xscale("log", base=2)
        ax.set_xticks(passes, [str(n) for n in passes])
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out)


def save_png(fig, out):
    """Write the figure through a temporary file: a failed write leaves no partial PNG."""
    tmp = out + ".tmp.png"
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        sys.exit(f"quality.py: error: cannot write {out}: {e.strerror}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--frontier" in argv:
        return frontier_report(argv)
    args = quality_parser().parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        if args.jsonl:  # a path we cannot write fails now, not after the grid
            try:
                open(args.jsonl, "a").close()
            except OSError as e:
                raise UserError(f"cannot write {args.jsonl}: {e.strerror}") from None
        device = pick_device(args.device)
        model, chars, _ = load_model_of_kind(args.ckpt, device, causal=False)
        ar_model, ar_chars, _ = load_model_of_kind(args.ar, device, causal=True)
        if ar_chars != chars:
            raise UserError(f"{args.ar} is not an autoregressive model with the same vocabulary")
        settings = [(s, parse_setting(s, model.sampler_defaults)) for s in args.settings]
        check_settings(settings, model, chars)
        T = model.config.block_size
        if not 0 < args.prompt_chars < T:
            raise UserError(f"--prompt-chars must be in 1..{T - 1}, got {args.prompt_chars}")
        if not 1 <= args.prompts <= MAX_PROMPTS:
            raise UserError(f"--prompts must be in 1..{MAX_PROMPTS} (one batch), got {args.prompts}")
        train_text, val = split_text(load_text(args.data))
        if len(val) - T < args.prompts:  # every prompt its own window
            raise UserError(f"{args.data}: its validation split has {len(val):,} characters, too few for "
                            f"{args.prompts} windows of {T} (--prompts, --data)")
        encode(val, chars)  # every validation character must be in the model's vocabulary (one error if not)
        vocabulary = {w.lower() for w in re.findall(r"[A-Za-z']+", train_text)}
        stride = (len(val) - T) // args.prompts
        windows = [val[i * stride:i * stride + T] for i in range(args.prompts)]
        real = torch.tensor([encode(w, chars) for w in windows], device=device)  # one error for unknown characters
    except UserError as e:
        sys.exit(f"quality.py: error: {e}")

    P = args.prompt_chars
    print(f"{args.prompts} prompts of {P} chars from the validation split, {T - P} chars generated each; "
          f"seeds {args.seeds}; device {device}")
    print("| setting | AR NLL (nats/char) | words in train % | distinct bigrams % | char entropy (bits) | runs % "
          "| NFE | chars/s | outside the band |")
    print("|---|---|---|---|---|---|---|---|---|")

    def stats_of(ids):
        texts = [decode(r[P:], chars) for r in ids.tolist()]
        known, distinct, entropy, runs = text_stats(texts, vocabulary)
        return {"ar_nll": ar_nll(ar_model, ids, P), "words": known, "distinct": distinct, "entropy": entropy,
                "runs": runs}

    real_stats = stats_of(real)
    report(args, "real validation text", [real_stats], real_stats, 0, 0)
    # a grid of 14 settings x 3 seeds runs for an hour on a CPU: a line on the terminal says how far
    progress = Progress("generating: setting x seed", len(settings) * len(seeds), enabled=args.progress)
    for name, config in settings:
        writer, sample, costs = sampler_for(name, config, model, ar_model)
        outs, seconds, nfe = timed_generations(writer, real, P, config, seeds, sample, progress)
        speed = args.prompts * (T - P) * len(seeds) / seconds
        progress.clear()  # the table row goes to the same terminal
        report(args, name, [stats_of(out) for out in outs], real_stats, nfe, speed, mean_cost(costs[1::2]))


def sampler_for(name, config, model, ar_model):
    """(model, sample function, costs) that write a setting: the AR model with its own sampler for
    "ar", generate for the others, appending to costs what a copula cost each generation."""
    costs = []
    if is_ar(name):
        return ar_model, generate_ar, costs
    if config.copula == "none":
        return model, generate, costs

    def sample(model, canvas, config, seed):
        out, nfe, cost = generate_with_cost(model, canvas, config, seed)
        costs.append(cost)
        return out, nfe
    return model, sample, costs


def mean_cost(costs):
    """The timed generations' copula costs (not the warm-ups'), averaged over seeds; None without."""
    if not costs:
        return None
    return CopulaCost(costs[0].copula, round(sum(c.passes for c in costs) / len(costs)),
                      sum(c.reference for c in costs) / len(costs))


def report(args, name, per_seed, real, nfe, speed, cost=None):
    """One table row (mean ± se over seeds; the words, distinct and runs columns in %), and
    one JSON row with --jsonl."""
    summary = {key: mean_se([s[key] for s in per_seed]) for key in per_seed[0]}

    def cell(key, scale=1.0, digits=1):
        m, se = summary[key]
        return f"{scale * m:.{digits}f}" + (f" ± {scale * se:.{digits}f}" if len(per_seed) > 1 else "")

    mean = {key: m for key, (m, _) in summary.items()}
    outside = outside_band(mean, real) if per_seed[0] is not real else []
    passes = f"{nfe or '-'}" + (f" {cost}" if cost else "")  # the copula's passes beside the diffusion passes
    print(f"| {name} | {cell('ar_nll', digits=3)} | {cell('words', 100)} | {cell('distinct', 100)} | "
          f"{cell('entropy', digits=3)} | {cell('runs', 100)} | {passes} | {f'{speed:,.0f}' if speed else '-'} | "
          f"{', '.join(outside) if outside else '-' if per_seed[0] is real else 'in band'} |", flush=True)
    if args.jsonl:
        row = {"setting": name, "ckpt": os.path.basename(args.ckpt), "prompts": args.prompts, "seeds": args.seeds,
               "nfe": nfe, "chars_per_s": speed, "mean": mean, "se": {k: se for k, (_, se) in summary.items()},
               "per_seed": per_seed, "outside_band": outside}
        if cost:
            row.update(copula=cost.copula, copula_passes=cost.passes, reference_passes=cost.reference)
        try:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            sys.exit(f"quality.py: error: cannot write {args.jsonl}: {e.strerror}")


if __name__ == "__main__":
    run_entry_point(main)
