"""
Watch tiny-diffusion denoise: every frame is one step of the same sampler sample.py uses.

    python diffusion_process.py                          # a matplotlib window
    python diffusion_process.py --save denoise.gif       # headless GIF (Pillow writer)
    python diffusion_process.py --terminal               # in-place terminal animation (ANSI)
    python diffusion_process.py --prompt "JULIET:" --threshold 0.9 --seed 3

Masked positions are drawn as a shaded block; characters committed in the current step are
highlighted, and so are characters re-opened this step by --remask. A GIF holds the starting
canvas, one frame per step, and --hold seconds of the final text. Takes the
prompt/length/steps/threshold/seed flags of sample.py.
"""

import argparse
import sys
import time

from model import ArgumentParser, UserError, generate_steps
from sample import add_sampling_args, build_canvas, check_sampling_args, load_for_sampling, sampler_kwargs

SCREEN_MASK = "░"  # how a masked position looks on screen
WRAP = 80          # columns before a long line wraps


def collect_frames(model, canvas, chars, kwargs):
    """[(text, is_masked, is_new, is_reopened, step, nfe)] for the start and every step; one sample.
    is_reopened: written before, masked again this step (--remask)."""
    mask_id = len(chars)

    def frame(ids, new, reopened, step, nfe):
        text = "".join(chars[i] if i != mask_id else SCREEN_MASK for i in ids)
        return text, [i == mask_id for i in ids], new, reopened, step, nfe

    none = [False] * canvas.size(1)
    frames = [frame(canvas[0].tolist(), none, none, 0, 0)]
    for step, state in enumerate(generate_steps(model, canvas, **kwargs), start=1):
        frames.append(frame(state["canvas"][0].tolist(), state["committed"][0].tolist(),
                            state["reopened"][0].tolist(), step, state["nfe"]))
    return frames


def reopened_note(is_reopened):
    n = sum(is_reopened)
    return f" | re-opened {n}" if n else ""


def layout(text):
    """(row, col) of every character: newlines break lines, long lines wrap at WRAP."""
    pos, row, col = [], 0, 0
    for ch in text:
        pos.append((row, col))
        if ch == "\n" or col == WRAP - 1:
            row, col = row + 1, 0
        else:
            col += 1
    return pos


def layers(text, is_masked, is_new, is_reopened):
    """Four equally shaped monospace strings: plain text, masks, newly committed characters,
    re-opened masks."""
    pos = layout(text)
    rows = (pos[-1][0] + 1) if pos else 1
    grids = [[[" "] * WRAP for _ in range(rows)] for _ in range(4)]
    for (r, c), ch, m, n, o in zip(pos, text, is_masked, is_new, is_reopened):
        shown = "↵" if ch == "\n" and (m or n) else ("" if ch == "\n" else ch)
        if not shown:
            continue
        grids[3 if o else 2 if n else 1 if m else 0][r][c] = shown
    return ["\n".join("".join(line) for line in g) for g in grids]


# -----------------------------------------------------------------------------
# matplotlib: window and GIF

def make_animation(frames, fps, hold):
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    n_rows = max(layout(f[0])[-1][0] + 1 for f in frames)
    fig = plt.figure(figsize=(9, 0.9 + 0.19 * n_rows), dpi=100)
    fig.patch.set_facecolor("white")
    kw = dict(family="DejaVu Sans Mono", fontsize=10, va="top", ha="left", transform=fig.transFigure)
    top = 1 - 0.55 / fig.get_figheight()
    colors = ("#111111", "#9aa5b1", "#d62728", "#ff9f1c")  # text, mask, new, re-opened
    texts = [fig.text(0.02, top, "", color=color, **kw) for color in colors]
    texts[2].set_fontweight("bold")
    title = fig.text(0.02, 1 - 0.12 / fig.get_figheight(), "", fontsize=11, va="top", ha="left")
    n_hold = int(round(hold * fps))
    order = list(range(len(frames))) + [len(frames) - 1] * n_hold

    def draw(i):
        text, masked, new, reopened, step, nfe = frames[order[i]]
        for artist, s in zip(texts, layers(text, masked, new, reopened)):
            artist.set_text(s)
        title.set_text(f"tiny-diffusion | step {step}/{len(frames) - 1} | NFE {nfe} | "
                       f"committed now {sum(new)}{reopened_note(reopened)} | still masked {sum(masked)}")
        return texts + [title]

    anim = FuncAnimation(fig, draw, frames=len(order), interval=1000 / fps, blit=False, repeat=True)
    return fig, anim, len(order)


def save_gif(frames, path, fps, hold):
    import matplotlib
    matplotlib.use("Agg")  # headless
    from matplotlib.animation import PillowWriter
    fig, anim, n = make_animation(frames, fps, hold)
    anim.save(path, writer=PillowWriter(fps=fps))
    return n


def show_window(frames, fps, hold):
    import matplotlib.pyplot as plt
    backend = plt.get_backend().lower()
    if backend in ("agg", "pdf", "ps", "svg", "cairo", "pgf", "template"):
        raise UserError(f"no display for a window (matplotlib backend {backend}): "
                        "use --save out.gif or --terminal")
    fig, anim, _ = make_animation(frames, fps, hold)
    plt.show()


# -----------------------------------------------------------------------------
# Terminal: ANSI escape codes, redrawn in place; works over ssh and in a pipe

DIM, NEW, REOPENED, RESET = "\x1b[2m", "\x1b[1;32m", "\x1b[33m", "\x1b[0m"


def ansi_frame(text, is_masked, is_new, is_reopened, step, total, nfe):
    out = [f"tiny-diffusion | step {step}/{total} | NFE {nfe}{reopened_note(is_reopened)} | "
           f"still masked {sum(is_masked)}\n\n"]
    col = 0
    for ch, m, n, o in zip(text, is_masked, is_new, is_reopened):
        if ch == "\n" and not (m or n):
            out.append("\n")
            col = 0
            continue
        shown = "↵" if ch == "\n" else ch
        out.append(f"{REOPENED}{shown}{RESET}" if o else f"{DIM}{shown}{RESET}" if m
                   else f"{NEW}{shown}{RESET}" if n else shown)
        col += 1
        if ch == "\n" or col == WRAP:
            out.append("\n")
            col = 0
    return "".join(out)


def play_terminal(frames, fps, hold, stream=sys.stdout):
    stream.write("\x1b[?25l")  # hide the cursor
    try:
        for text, masked, new, reopened, step, nfe in frames:
            stream.write("\x1b[H\x1b[2J" + ansi_frame(text, masked, new, reopened, step, len(frames) - 1, nfe))
            stream.flush()
            time.sleep(1 / fps)
        time.sleep(hold)
    except KeyboardInterrupt:
        pass
    finally:
        stream.write(RESET + "\x1b[?25h\n")  # colours off, cursor back
        stream.flush()


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--save", metavar="OUT.gif", help="write a GIF instead of opening a window")
    mode.add_argument("--terminal", action="store_true", help="animate in this terminal")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second (default %(default)s)")
    p.add_argument("--hold", type=float, default=2.0, help="seconds to hold the final text (default %(default)s)")
    args = p.parse_args(argv)
    try:
        check_sampling_args(args)
        if not 0 < args.fps <= 100 or not 0 <= args.hold <= 60:
            raise UserError("--fps must be in (0, 100] and --hold in [0, 60]")
        if args.save and not args.save.lower().endswith(".gif"):
            raise UserError(f"--save writes a GIF: give a .gif path, got {args.save!r}")
        device, model, chars = load_for_sampling(args)
        canvas = build_canvas(args, chars, 1, device)
        frames = collect_frames(model, canvas, chars, sampler_kwargs(args))
        if args.save:
            n = save_gif(frames, args.save, args.fps, args.hold)
            print(f"wrote {args.save}: {n} frames ({len(frames) - 1} steps, NFE {frames[-1][5]})", file=sys.stderr)
        elif args.terminal:
            play_terminal(frames, args.fps, args.hold)
        else:
            show_window(frames, args.fps, args.hold)
    except UserError as e:
        sys.exit(f"diffusion_process.py: error: {e}")


if __name__ == "__main__":
    main()
