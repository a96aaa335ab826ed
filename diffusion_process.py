"""
Watch tiny-diffusion denoise: every frame is one step of the same sampler sample.py uses.

    python diffusion_process.py                          # a matplotlib window
    python diffusion_process.py --save denoise.gif       # headless GIF (drawn with Pillow)
    python diffusion_process.py --terminal               # in-place terminal animation (ANSI)
    python diffusion_process.py --prompt "JULIET:" --threshold 0.9 --seed 3
    python diffusion_process.py --compare --save compare.gif  # beside the autoregressive baseline

Masked positions are drawn as a shaded block; characters committed in the current step are
highlighted, and so are characters re-opened this step by --remask. A GIF holds the starting
canvas, one frame per step, and --hold seconds of the final text. Takes the
prompt/length/steps/threshold/seed flags of sample.py. Progress goes to stderr; Ctrl-C exits
quietly with status 130.

--compare runs the autoregressive baseline (weights/ar_baseline.pt) on the same prompt and
length, and shows both on one clock: frame i is each model after i forward passes. The AR
model writes one character per pass, the diffusion model many; each side shows its count.
"""

import argparse
import os
import signal
import sys
import tempfile
import time

if __name__ == "__main__":  # Ctrl-C while torch loads: exit quietly (main() handles it later);
    # os._exit, not sys.exit: an exception raised inside torch's C++ import code aborts the process
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

from checkpoint import DEFAULT_AR, load_model, mask_id_of
from cli import ArgumentParser, UserError
from sampler import (add_sampling_flags, generate_ar_steps, generate_steps, load_for_sampling, make_canvas,
                     sampling_config)

SCREEN_MASK = "░"  # how a masked position looks on screen
WRAP = 80          # columns before a long line wraps


def progress(what, unit, stream=sys.stderr):
    """report(i, n): 'what: i/n unit (elapsed)' on stderr, redrawn in place on a terminal; in a
    pipe or a log, a line a second and the last one."""
    start = last = time.time()
    tty = stream.isatty()

    def report(i, n):
        nonlocal last
        now = time.time()
        if tty or i == n or now - last >= 1:
            last = now
            line = f"{what}: {i}/{n} {unit} ({now - start:.1f} s)"
            stream.write((f"\r{line}" + ("\n" if i == n else "")) if tty else line + "\n")
            stream.flush()
    return report


def collect_frames(states, canvas, chars, report=None):
    """[(text, is_masked, is_new, is_reopened, step, nfe)] for the start and every state a
    sampler yields (generate_steps or generate_ar_steps); one sample. is_reopened: written
    before, masked again this step (--remask). report(written, to_write)."""
    mask_id = mask_id_of(chars)

    def frame(ids, new, reopened, step, nfe):
        text = "".join(chars[i] if i != mask_id else SCREEN_MASK for i in ids)
        return text, [i == mask_id for i in ids], new, reopened, step, nfe

    none = [False] * canvas.size(1)
    frames = [frame(canvas[0].tolist(), none, none, 0, 0)]
    for step, state in enumerate(states, start=1):
        frames.append(frame(state["canvas"][0].tolist(), state["committed"][0].tolist(),
                            state["reopened"][0].tolist(), step, state["nfe"]))
        if report:
            report(sum(frames[0][1]) - sum(frames[-1][1]), sum(frames[0][1]))
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


def cells(text, is_masked, is_new, is_reopened):
    """(row, col, character shown, style) of every visible character; style 0 plain text,
    1 mask, 2 newly committed, 3 re-opened."""
    for (r, c), ch, m, n, o in zip(layout(text), text, is_masked, is_new, is_reopened):
        shown = "↵" if ch == "\n" and (m or n) else ("" if ch == "\n" else ch)
        if shown.strip():
            yield r, c, shown, 3 if o else 2 if n else 1 if m else 0


# -----------------------------------------------------------------------------
# Images for the GIF and the window, drawn with Pillow one visible character at a time: about
# 0.02 s a frame, where a matplotlib figure redrew every glyph and space of every frame, twice (0.4 s).

FONT_PX, TITLE_PX = 14, 15               # 10 pt and 11 pt at 100 dpi
CELL_PX, LINE_PX = 8, 17                 # a whole-pixel column (no seams between mask blocks), 1.2 lines
MARGIN, TEXT_TOP = 18, 55                # pixels: left margin, first text line
COLORS = ("#111111", "#9aa5b1", "#d62728", "#ff9f1c")  # text, mask, new, re-opened


def title(frame, total, label="tiny-diffusion"):
    text, masked, new, reopened, step, nfe = frame
    return (f"{label} | step {step}/{total} | NFE {nfe} | committed now {sum(new)}"
            f"{reopened_note(reopened)} | still masked {sum(masked)}")


def on_one_clock(*frame_lists):
    """Frame lists padded to one length: frame i of each is that model after i forward passes;
    a side that has finished holds its last frame (with nothing newly committed)."""
    n = max(len(frames) for frames in frame_lists)

    def held(frame):
        text, masked, new, reopened, step, nfe = frame
        return text, masked, [False] * len(new), [False] * len(reopened), step, nfe
    return [frames + [held(frames[-1])] * (n - len(frames)) for frames in frame_lists]


def load_fonts():
    """DejaVu Sans Mono (regular for text, bold for new characters) and DejaVu Sans for the
    title: matplotlib ships them, so they are there wherever matplotlib is."""
    from matplotlib import font_manager
    from PIL import ImageFont

    def font(family, px, weight="normal"):
        props = font_manager.FontProperties(family=family, weight=weight)
        return ImageFont.truetype(font_manager.findfont(props), px)

    mono = font("DejaVu Sans Mono", FONT_PX)
    return (mono, mono, font("DejaVu Sans Mono", FONT_PX, "bold"), mono), font("DejaVu Sans", TITLE_PX)


def render(frames, report=None, label="tiny-diffusion", total=None):
    """One RGB image (PIL) per frame, all the same size; report(done, total) after each."""
    from PIL import Image, ImageDraw
    fonts, title_font = load_fonts()
    n_rows = max(layout(f[0])[-1][0] + 1 for f in frames)
    size = (900, TEXT_TOP + LINE_PX * n_rows + 20)
    images = []
    for i, frame in enumerate(frames, start=1):
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        draw.text((MARGIN, 12), title(frame, total or len(frames) - 1, label), font=title_font, fill="black")
        for row, col, ch, style in cells(*frame[:4]):
            xy = (MARGIN + col * CELL_PX, TEXT_TOP + row * LINE_PX)
            draw.text(xy, ch, font=fonts[style], fill=COLORS[style])
        images.append(image)
        if report:
            report(i, len(frames))
    return images


def save_gif(images, path, fps, hold):
    """The frames, the last one held --hold seconds longer; written to a temporary file, then
    renamed, so an interrupted run leaves no half-written GIF."""
    from PIL import Image
    ms = 1000 / fps
    durations = [round(ms)] * (len(images) - 1) + [round(ms * (1 + round(hold * fps)))]
    # a palette per frame: the fast octree keeps all ~100 colours (antialiased text) and takes
    # 4 ms a frame, where Pillow's default median cut takes 35
    images = [im.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE) for im in images]
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_writable(path):
    """Fail before the work, not after it: create the GIF's folder if missing, then write a probe."""
    if os.path.isdir(path):
        raise UserError(f"--save {path} is a folder: give a .gif file path")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:  # makedirs: the folder's path is a file
        raise UserError(f"cannot write {path}: {folder} is a file, not a folder") from None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e} ({folder})") from None


def check_display():
    import matplotlib.pyplot as plt
    backend = plt.get_backend().lower()
    if backend in ("agg", "pdf", "ps", "svg", "cairo", "pgf", "template"):
        raise UserError(f"no display for a window (matplotlib backend {backend}): "
                        "use --save out.gif or --terminal")


def show_window(images, fps, hold):
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation
    width, height = images[0].size
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    shown = ax.imshow(images[0])
    order = list(range(len(images))) + [len(images) - 1] * int(round(hold * fps))

    def draw(i):
        shown.set_data(images[order[i]])
        return [shown]

    anim = FuncAnimation(fig, draw, frames=len(order), interval=1000 / fps, blit=True)
    plt.show()  # anim must stay referenced until the window closes
    return anim


def stack(image_lists):
    """Frame-wise, the images of each list one under another (one list: unchanged)."""
    from PIL import Image
    if len(image_lists) == 1:
        return image_lists[0]
    out = []
    for row in zip(*image_lists):
        canvas = Image.new("RGB", (max(im.width for im in row), sum(im.height for im in row)), "white")
        y = 0
        for im in row:
            canvas.paste(im, (0, y))
            y += im.height
        out.append(canvas)
    return out


def load_ar_baseline(args, canvas, chars, device):
    """The autoregressive model for --compare, checked before any sampling starts."""
    ar, ar_chars, _ = load_model(args.compare, device)
    if not ar.config.causal or ar_chars != chars:
        raise UserError(f"{args.compare} is not an autoregressive model with the diffusion model's vocabulary")
    if canvas[0, 0] == mask_id_of(chars):
        raise UserError("--compare needs a prompt: the autoregressive model cannot write the first character")
    return ar


def compare_frames(ar, config, seed, canvas, chars):
    """The autoregressive baseline's frames on the same canvas: one character per pass, with the
    same temperature, top-k/top-p and precision."""
    states = generate_ar_steps(ar, canvas, config, seed)
    return collect_frames(states, canvas, chars, progress("sampling (autoregressive)", "characters"))


# -----------------------------------------------------------------------------
# Terminal: ANSI escape codes, redrawn in place; works over ssh and in a pipe

DIM, NEW, REOPENED, RESET = "\x1b[2m", "\x1b[1;32m", "\x1b[33m", "\x1b[0m"


def ansi_frame(text, is_masked, is_new, is_reopened, step, total, nfe, label="tiny-diffusion"):
    out = [f"{label} | step {step}/{total} | NFE {nfe}{reopened_note(is_reopened)} | "
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


def play_terminal(panels, fps, hold, stream=sys.stdout):
    """panels: [(label, frames, steps)], all frame lists of one length, shown one under another."""
    stream.write("\x1b[?25l")  # hide the cursor
    try:
        for i in range(len(panels[0][1])):
            text = "\n\n".join(ansi_frame(*frames[i][:5], steps, frames[i][5], label) for label, frames, steps in panels)
            stream.write("\x1b[H\x1b[2J" + text)
            stream.flush()
            time.sleep(1 / fps)
        time.sleep(hold)
    finally:  # Ctrl-C too
        stream.write(RESET + "\x1b[?25h\n")  # colours off, cursor back
        stream.flush()


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_flags(p, cuda_graph=False)  # the animation needs every step's state
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--save", metavar="OUT.gif",
                      help="write a GIF instead of opening a window (its folder is created if missing)")
    mode.add_argument("--terminal", action="store_true", help="animate in this terminal")
    p.add_argument("--compare", nargs="?", const=DEFAULT_AR, default=None, metavar="AR_CKPT",
                   help="also run the autoregressive baseline (default weights/ar_baseline.pt) on the same "
                        "prompt, on one clock of forward passes")
    p.add_argument("--fps", type=float, default=None, help="frames per second (default 8, 24 with --compare)")
    p.add_argument("--hold", type=float, default=2.0, help="seconds to hold the final text (default %(default)s)")
    args = p.parse_args(argv)
    try:
        config, seed = sampling_config(args)
        if args.fps is None:
            args.fps = 24.0 if args.compare else 8.0
        if not 0 < args.fps <= 100 or not 0 <= args.hold <= 60:
            raise UserError("--fps must be in (0, 100] and --hold in [0, 60]")
        if args.save and not args.save.lower().endswith(".gif"):
            raise UserError(f"--save writes a GIF: give a .gif path, got {args.save!r}")
        if args.save:
            check_writable(args.save)
        elif not args.terminal:
            check_display()
        device, model, chars, config = load_for_sampling(args, config)
        canvas = make_canvas(args.prompt, args.length, chars, 1, device)
        ar = load_ar_baseline(args, canvas, chars, device) if args.compare else None
        states = generate_steps(model, canvas, config, seed)
        frames = collect_frames(states, canvas, chars, progress("sampling", "characters"))
        panels = [("tiny-diffusion", frames, len(frames) - 1)]  # (label, frames, steps)
        if args.compare:
            ar_frames = compare_frames(ar, config, seed, canvas, chars)
            diffusion, ar = on_one_clock(frames, ar_frames)
            panels = [("diffusion", diffusion, len(frames) - 1), ("autoregressive", ar, len(ar_frames) - 1)]
        if args.terminal:
            play_terminal(panels, args.fps, args.hold)
            return
        images = stack([render(f, progress("rendering" + (f" {label}" if args.compare else ""), "frames"), label, steps)
                        for label, f, steps in panels])
        frames = panels[0][1]
        if args.save:
            save_gif(images, args.save, args.fps, args.hold)
            print(f"wrote {args.save}: {len(images)} frames ({len(frames) - 1} steps, NFE {frames[-1][5]}), "
                  f"the last held {args.hold:g} s longer", file=sys.stderr)
        else:
            show_window(images, args.fps, args.hold)
    except UserError as e:
        sys.exit(f"diffusion_process.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C is KeyboardInterrupt again
    main()
