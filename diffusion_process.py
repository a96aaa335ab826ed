"""
Watch tiny-diffusion denoise: every frame is one step of the same sampler sample.py uses.

    python diffusion_process.py                          # a matplotlib window
    python diffusion_process.py --save denoise.gif       # headless GIF (drawn with Pillow)
    python diffusion_process.py --terminal               # in-place terminal animation (ANSI)
    python diffusion_process.py --prompt "JULIET:" --threshold 0.9 --seed 3
    python diffusion_process.py --compare --save compare.gif  # beside the autoregressive baseline

Masked positions are drawn as a shaded block; characters committed in the current step are
highlighted, and so are characters re-opened this step by --remask. A GIF holds the starting
canvas, one frame per step, and --hold seconds of the final text. Takes the sampling flags of
sample.py. Progress goes to stderr when it is a terminal (--no-progress: none); Ctrl-C exits
quietly with status 130.

Long texts: at most 40 rows are drawn (20 per side with --compare; in a terminal, as many as
the screen has, up to that), a window that follows the block being written; a note says which
characters are in view. Frames are drawn and written one at a time: memory does not grow with
their number (--length 100000: 782 frames).

--compare runs the autoregressive baseline (weights/ar_baseline.pt) on the same prompt and
length, on one clock: frame i is each model after i forward passes (the AR model writes one
character per pass, the diffusion model many). Without --prompt it starts from "ROMEO:" (the
AR model cannot write the first character).

--terminal redraws in place with ANSI escape codes, also over ssh and through a pipe (read it
with `less -R`). With TERM=dumb (Emacs' shell, some CI logs) it prints plain frames one after
another, without escape codes.
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import io
import os
import shutil
import struct
import sys
import tempfile
import time
from array import array
from typing import NamedTuple

from ar_sampler import generate_ar_steps
from checkpoint import DEFAULT_AR, load_model
from cli import ArgumentParser, Progress, UserError, add_progress_flag, run_entry_point
from corpus import mask_id_of
from sampler import add_sampling_flags, generate_steps, load_for_sampling, make_canvas, sampling_seed

SCREEN_MASK = "░"  # how a masked position looks on screen
WRAP = 80          # columns before a long line wraps
VIEW_ROWS = 40     # the most rows of text drawn, shared by the panels of --compare (20 each)
COMPARE_PROMPT = "ROMEO:"  # --compare without --prompt: the autoregressive model needs a first character
MIN_FPS, MAX_FPS, MAX_HOLD = 0.1, 100.0, 60.0  # a GIF frame lasts at most 655 s: 1 / MIN_FPS + MAX_HOLD fits


def progress(what, enabled=True, stream=None):
    """report(i, n) after each piece of work: cli.Progress's line ('what i/n (pct) elapsed, ETA')
    on a terminal, erased when i reaches n (the animation or the summary line follows)."""
    line = Progress(what, enabled=enabled, stream=stream)

    def report(i, n):
        line.total = n
        line.update(i - line.done)
        if i >= n:
            line.clear()
    return report


# -----------------------------------------------------------------------------
# A sampler's run, kept as what each step changed, and played back one frame at a time

def step_fields(state):
    """(canvas, committed, reopened, nfe, block) of the first sample of one step the sampler
    yields (generate_steps and generate_ar_steps alike): the one place that reads a step."""
    return state.canvas[0], state.committed[0], state.reopened[0], int(state.nfe), state.block


class Text:
    """One sample's canvas as it is being written: ids, the number still masked, and which
    positions hold a newline (a bytearray, so finding a line's start is a C search)."""

    def __init__(self, ids, chars):
        self.ids, self.chars, self.mask_id = list(ids), chars, mask_id_of(chars)
        self.newline = chars.index("\n") if "\n" in chars else -1
        self.breaks = bytearray(i == self.newline for i in self.ids)
        self.masked = self.ids.count(self.mask_id)

    def set(self, pos, new):
        self.masked += (new == self.mask_id) - (self.ids[pos] == self.mask_id)
        self.ids[pos], self.breaks[pos] = new, new == self.newline

    def layout(self, top, n_rows):
        """(position, row, col) from position `top` (a row's first) through row n_rows - 1:
        newlines end a line, a long line wraps at WRAP. Rows count from `top`."""
        row = col = 0
        for pos in range(top, len(self.ids)):
            yield pos, row, col
            if self.breaks[pos] or col == WRAP - 1:
                row, col = row + 1, 0
                if row == n_rows:
                    return
            else:
                col += 1

    def row_start(self, pos):
        """The first position of the row that holds `pos` (in the layout from position 0)."""
        line = self.breaks.rfind(1, 0, pos) + 1
        return line + (pos - line) // WRAP * WRAP

    def rows(self, cap):
        """Rows the whole text takes, counted up to `cap` (so at most cap * WRAP characters are read)."""
        return max((row for _, row, _ in self.layout(0, cap)), default=0) + 1


class Frame(NamedTuple):
    text: Text
    new: frozenset       # positions written this step
    reopened: frozenset  # positions masked again this step (--remask)
    step: int
    nfe: int
    focus: tuple         # (start, end) of the block this step wrote


class Recording:
    """One sample's run through a sampler, kept as what each step changed (the positions written
    or re-opened, their ids and flags: 1 written, 2 re-opened), the passes so far and the block
    it wrote: memory grows with the characters changed, not with steps x length (as it would if
    every frame's text were kept). len(): the steps; report(written, to_write) after each."""

    def __init__(self, states, canvas, chars, report=None):
        self.canvas, self.chars, self.steps, self.nfe = canvas[0].tolist(), chars, [], 0
        self.text = Text(self.canvas, chars)  # the latest state, for progress and the rows
        self.max_rows = self.text.rows(VIEW_ROWS + 1)  # the most rows any frame takes, up to VIEW_ROWS + 1
        prev, to_write = canvas[0].clone(), self.text.masked
        for state in states:
            canvas, committed, reopened, self.nfe, block = step_fields(state)
            changed = (committed | reopened | (canvas != prev)).nonzero().flatten()
            prev.copy_(canvas)
            pos, ids = changed.tolist(), canvas[changed].tolist()
            flags = (committed[changed].long() + 2 * reopened[changed].long()).tolist()
            self.steps.append((array("q", pos), array("q", ids), array("b", flags), self.nfe, tuple(block)))
            for p, i in zip(pos, ids):
                self.text.set(p, i)
            if self.max_rows <= VIEW_ROWS:
                self.max_rows = max(self.max_rows, self.text.rows(VIEW_ROWS + 1))
            if report:
                report(to_write - self.text.masked, to_write)

    def __len__(self):
        return len(self.steps)

    def frames(self):
        """A Frame for the start and after every step. One Text is updated in place: use a
        frame before asking for the next."""
        text = Text(self.canvas, self.chars)
        yield Frame(text, frozenset(), frozenset(), 0, 0, (0, 0))
        for step, (pos, ids, flags, nfe, focus) in enumerate(self.steps, start=1):
            for p, i in zip(pos, ids):
                text.set(p, i)
            new = {p for p, f in zip(pos, flags) if f & 1}
            yield Frame(text, new, {p for p, f in zip(pos, flags) if f & 2}, step, nfe, focus)


def n_frames(recordings):
    return max(len(rec) for rec in recordings) + 1


def on_one_clock(recordings):
    """Frame i of every recording together: each model after i forward passes; a side that has
    finished holds its last frame (with nothing newly committed). Yields lists of frames."""
    streams = [rec.frames() for rec in recordings]
    frames = [None] * len(streams)
    for _ in range(n_frames(recordings)):
        for j, stream in enumerate(streams):
            frame = next(stream, None)
            frames[j] = frame or frames[j]._replace(new=frozenset(), reopened=frozenset())
        yield frames


class View:
    """Which rows of a panel are drawn: all of them when the text fits in n_rows rows (scroll
    False); else a window of n_rows rows that follows the block being written: when the block's
    last row would fall into the window's last quarter (or out of it), the window scrolls down
    until that row is just above it, so the rows written before stay in view above the block."""

    def __init__(self, n_rows, scroll):
        self.n_rows, self.scroll, self.top = n_rows, scroll, 0

    def place(self, frame):
        """[(position, row, col)] of the frame's text in view; scrolls first if needed."""
        text, (b0, b1) = frame.text, frame.focus
        keep = self.n_rows - 1 - self.n_rows // 4  # the lowest row for the block's last one
        cells = list(text.layout(self.top, self.n_rows))
        if self.scroll and b1 > b0:
            last_row = next((row for pos, row, _ in cells if pos >= b1 - 1), None)  # None: below the window
            if b0 < self.top or last_row is None or last_row > keep:
                top = text.row_start(b1 - 1)
                for _ in range(keep):
                    if top == 0:
                        break
                    top = text.row_start(top - 1)
                self.top = min(top, text.row_start(b0))  # a block taller than the window: its first rows
                cells = list(text.layout(self.top, self.n_rows))
        return cells

    def show(self, frame):
        """(note, [(row, col, character, style)]) of the frame's text in view (see `style`); the
        note says which characters are in view when some are not, else it is ''."""
        cells = self.place(frame)
        note = "" if not self.scroll else (
            f"characters {self.top + 1}-{cells[-1][0] + 1 if cells else self.top} of {len(frame.text.ids)} "
            f"(at most {self.n_rows} rows are shown: those around the block being written)")
        return note, [(row, col, *style(frame, pos)) for pos, row, col in cells]


def views(recordings, budget=VIEW_ROWS):
    """A View per panel: each text's most rows, at most budget / panels rows (then scrolling)."""
    per = max(1, budget // len(recordings))
    return [View(min(rec.max_rows, per), rec.max_rows > per) for rec in recordings]


def header(frame, total, label, committed_now=True):
    """A panel's title: 'label | step 3/64 | NFE 3 | committed now 5 | still masked 200'
    (the terminal's leaves out 'committed now'), with ' | re-opened n' in a step that has some."""
    now = f" | committed now {len(frame.new)}" if committed_now else ""
    reopened = f" | re-opened {len(frame.reopened)}" if frame.reopened else ""
    return f"{label} | step {frame.step}/{total} | NFE {frame.nfe}{now}{reopened} | still masked {frame.text.masked}"


def style(frame, pos):
    """What a position shows and how: (character, style); style 0 plain text, 1 mask, 2 newly
    committed, 3 re-opened. A newline is '↵' in the step that writes it, else it only ends a row."""
    text, new = frame.text, pos in frame.new
    ch = SCREEN_MASK if text.ids[pos] == text.mask_id else text.chars[text.ids[pos]]
    if ch == "\n":
        ch = "↵" if new else ""
    return ch, 3 if pos in frame.reopened else 2 if new else 1 if ch == SCREEN_MASK else 0


# -----------------------------------------------------------------------------
# Images, one renderer for the GIF and the window

FONT_PX, TITLE_PX, NOTE_PX = 14, 15, 12  # 10 pt, 11 pt and 9 pt at 100 dpi
CELL_PX, LINE_PX = 8, 17                 # a whole-pixel column (no seams between mask blocks), 1.2 lines
MARGIN, TEXT_TOP = 18, 55                # pixels: left margin, first text line
COLORS = ("#111111", "#9aa5b1", "#d62728", "#ff9f1c")  # text, mask, new, re-opened
WIDTH = 900


def font(family, px, weight="normal"):
    """A Pillow font of DejaVu Sans (Mono): matplotlib ships it, so it is there wherever matplotlib is."""
    from matplotlib import font_manager
    from PIL import ImageFont
    return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family=family, weight=weight)), px)


class Renderer:
    """Draws the panels [(label, Recording)] of one clock tick, one under another, into an RGB
    image with Pillow (which matplotlib needs), one visible character at a time: each (character,
    style) is drawn once into a tile that later frames paste, 0.02 s a frame, where a matplotlib
    figure redrew every glyph and space of every frame, twice (0.4 s)."""

    def __init__(self, panels):
        self.panels, self.recordings = panels, [rec for _, rec in panels]
        self.views, self.n_frames = views(self.recordings), n_frames(self.recordings)
        self.heights = [TEXT_TOP + LINE_PX * view.n_rows + 20 for view in self.views]
        self.size = (WIDTH, sum(self.heights))
        mono = font("DejaVu Sans Mono", FONT_PX)
        self.fonts = (mono, mono, font("DejaVu Sans Mono", FONT_PX, "bold"), mono)  # by style: new is bold
        self.title_font, self.note_font = font("DejaVu Sans", TITLE_PX), font("DejaVu Sans", NOTE_PX)
        self.tiles = {}

    def tile(self, ch, style):
        """(mask, (dx, dy)): the glyph as draw.text draws it at (0, 0), offset by (dx, dy)."""
        if (ch, style) not in self.tiles:
            from PIL import Image, ImageDraw
            face = self.fonts[style]
            left, top, right, bottom = face.getbbox(ch)
            dx, dy = min(0, left), min(0, top)
            mask = Image.new("L", (max(1, right - dx), max(1, bottom - dy)), 0)
            ImageDraw.Draw(mask).text((-dx, -dy), ch, font=face, fill=255)
            self.tiles[ch, style] = mask, (dx, dy)
        return self.tiles[ch, style]

    def draw(self, frames):
        from PIL import Image, ImageDraw
        image = Image.new("RGB", self.size, "white")
        draw = ImageDraw.Draw(image)
        y = 0
        for frame, (label, rec), view, height in zip(frames, self.panels, self.views, self.heights):
            draw.text((MARGIN, y + 12), header(frame, len(rec), label), font=self.title_font, fill="black")
            note, cells = view.show(frame)
            if note:
                draw.text((MARGIN, y + 34), note, font=self.note_font, fill="#666666")
            for row, col, ch, s in cells:
                if ch.strip():
                    mask, (dx, dy) = self.tile(ch, s)
                    x0, y0 = MARGIN + col * CELL_PX + dx, y + TEXT_TOP + row * LINE_PX + dy
                    image.paste(COLORS[s], (x0, y0, x0 + mask.width, y0 + mask.height), mask)
            y += height
        return image

    def images(self, report=None):
        """One image per clock tick, drawn as it is asked for (each call from the start, the view
        scrolled back to the top); report(done, total) after each."""
        self.views = [View(view.n_rows, view.scroll) for view in self.views]
        for i, frames in enumerate(on_one_clock(self.recordings), start=1):
            yield self.draw(frames)
            if report:
                report(i, self.n_frames)


# -----------------------------------------------------------------------------
# GIF, written frame by frame: Pillow's save_all keeps every frame until the end

MAX_FRAME_MS = 655_000  # a GIF stores a frame's duration in 16 bits of centiseconds


class GifWriter:
    """A looping GIF89a. Each frame is the rectangle that changed since the one before (kept,
    not disposed), its unchanged pixels transparent, with its own palette; a frame identical to
    the one before lengthens that one instead, as Pillow does."""

    def __init__(self, fp):
        self.fp, self.prev, self.pending = fp, None, None  # pending: the last frame, its duration still growing

    def add(self, image, ms):
        from PIL import ImageChops
        if self.prev is None:  # the header: no global palette (each frame has one), loop forever
            self.fp.write(b"GIF89a" + struct.pack("<HHBBB", *image.size, 0x70, 0, 0)
                          + b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00")
            box, unchanged = (0, 0, *image.size), None
        else:
            diff = ImageChops.difference(image, self.prev)
            box = diff.getbbox()
            if box is None and self.pending[-1] + ms <= MAX_FRAME_MS:
                self.pending[-1] += ms
                return
            box = box or (0, 0, 1, 1)  # a frame lasts at most MAX_FRAME_MS: the rest is one more frame
            r, g, b = diff.crop(box).split()
            unchanged = ImageChops.lighter(ImageChops.lighter(r, g), b).point([255] + [0] * 255, "1")
        self.flush()
        self.prev, self.pending = image, [image.crop(box), box[:2], unchanged, ms]

    def flush(self):
        if self.pending:
            self.fp.write(gif_frame(*self.pending))
            self.pending = None

    def close(self):
        self.flush()
        self.fp.write(b";")


def gif_frame(image, offset, unchanged, ms):
    """One GIF frame of `image` placed at `offset`, shown ms, kept (disposal 1), with its own
    palette; unchanged: a mask of the pixels left transparent. Cut out of Pillow's one-frame GIF
    of it: the graphic control extension, then the image with Pillow's global palette made local.
    A palette per frame: the fast octree keeps all ~100 colours (antialiased text), and is far
    quicker than Pillow's default median cut."""
    from PIL import Image
    frame = image.quantize(255, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)  # 255: free
    palette = frame.getpalette()[:255 * 3]
    for i in range(0, len(palette), 3):  # the octree's mean of white and its faintest antialiasing
        if min(palette[i:i + 3]) >= 250:  # (253, 253, 254), say: white, or rectangles of other frames
            palette[i:i + 3] = [255, 255, 255]  # would show as faint patches
    frame.putpalette(palette + [0] * (768 - len(palette)))
    params = {} if unchanged is None else {"transparency": 255}
    if unchanged is not None:
        frame.paste(255, mask=unchanged)
    buf = io.BytesIO()  # Pillow writes the delay in whole centiseconds, rounded down
    frame.save(buf, format="GIF", interlace=False, duration=round(ms / 10) * 10, disposal=1, **params)
    data = buf.getvalue()
    bits = data[10] & 7
    i = 13 + (3 << (bits + 1))  # past the global palette: the extension (8 bytes), the image descriptor
    if data[i:i + 2] != b"!\xf9" or data[i + 8] != 0x2C or data[i + 17] or data[-1] != 0x3B:
        raise ValueError("unexpected GIF from Pillow")
    descriptor = b"," + struct.pack("<HH", *offset) + data[i + 13:i + 17] + bytes([0x80 | bits])  # a local palette
    return data[i:i + 8] + descriptor + data[13:i] + data[i + 18:-1]


def save_gif(panels, path, fps, hold, show_progress=True):
    """Draw the frames and write them one at a time; to a temporary file, then renamed, so an
    interrupted run leaves no half-written GIF. Returns the number of frames."""
    renderer, tmp = Renderer(panels), f"{path}.tmp{os.getpid()}"
    ms = 1000 / fps  # a frame's duration; the last one is held --hold seconds longer
    try:
        with open(tmp, "wb") as f:
            gif = GifWriter(f)
            for i, image in enumerate(renderer.images(progress("rendering: frame", show_progress)), start=1):
                gif.add(image, round(ms * (1 + round(hold * fps))) if i == renderer.n_frames else round(ms))
            gif.close()
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return renderer.n_frames


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


# -----------------------------------------------------------------------------
# The matplotlib window: the renderer's images, shown as they are drawn

def show_window(panels, fps, hold):
    """The frames drawn as they are shown (again on every loop), the last held --hold seconds."""
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation
    from PIL import Image
    renderer = Renderer(panels)
    width, height = renderer.size
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    shown = ax.imshow(Image.new("RGB", renderer.size, "white"))

    def frames():  # the images, the last one again for --hold seconds
        image = None
        for image in renderer.images():
            yield image
        yield from [image] * int(round(hold * fps))

    def draw(image):
        shown.set_data(image)
        return [shown]

    anim = FuncAnimation(fig, draw, frames=frames, init_func=lambda: [shown], interval=1000 / fps, blit=True,
                         cache_frame_data=False)
    plt.show()  # anim must stay referenced until the window closes
    return anim


# -----------------------------------------------------------------------------
# Terminal: ANSI escape codes, redrawn in place; works over ssh and in a pipe. TERM=dumb: plain
# frames one after another, no escapes.

ANSI_STYLES = ("", "\x1b[2m", "\x1b[1;32m", "\x1b[33m")  # by style: plain, dim masks, bold green new, yellow
RESET = "\x1b[0m"


def text_frame(frame, view, total, label, plain=False):
    """One panel of one frame as terminal text: a header, a blank line, the rows in view."""
    note, cells = view.show(frame)
    rows = [""] * (cells[-1][0] + 1 if cells else 0)
    for row, _, ch, s in cells:
        rows[row] += ch if plain or not s else f"{ANSI_STYLES[s]}{ch}{RESET}"
    return "\n".join([header(frame, total, label, committed_now=False) + (f" | {note}" if note else ""), "", *rows])


def play_terminal(panels, fps, hold, stream=None, plain=None):
    """panels shown one under another on one clock. plain (default: when TERM is dumb): the
    frames one after another, without escape codes."""
    stream = stream or sys.stdout
    plain = os.environ.get("TERM") == "dumb" if plain is None else plain
    recordings, rows = [rec for _, rec in panels], VIEW_ROWS // len(panels)
    if stream.isatty():  # as many rows as the screen has, up to VIEW_ROWS
        rows = min(VIEW_ROWS, max(3, shutil.get_terminal_size().lines // len(panels) - 4))
    shown = views(recordings, rows * len(panels))
    if not plain:
        stream.write("\x1b[?25l")  # hide the cursor
    try:
        for frames in on_one_clock(recordings):
            text = "\n\n".join(text_frame(frame, view, len(rec), label, plain)
                               for frame, view, (label, rec) in zip(frames, shown, panels))
            stream.write(text + "\n\n" if plain else "\x1b[H\x1b[2J" + text)
            stream.flush()
            time.sleep(1 / fps)
        time.sleep(hold)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())  # no second error when Python flushes it
        plain = True  # nothing to restore
    finally:  # Ctrl-C too
        if not plain:
            stream.write(RESET + "\x1b[?25h\n")  # colours off, cursor back
            stream.flush()


# -----------------------------------------------------------------------------
# The command line

def parse_args(argv):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_flags(p, cuda_graph=False)  # the animation needs every step's state
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--save", metavar="OUT.gif",
                      help="write a GIF instead of opening a window (its folder is created if missing)")
    mode.add_argument("--terminal", action="store_true",
                      help="animate in this terminal (ANSI; with TERM=dumb, plain frames one after another)")
    p.add_argument("--compare", nargs="?", const=DEFAULT_AR, default=None, metavar="AR_CKPT",
                   help="also run the autoregressive baseline (default weights/ar_baseline.pt) on the same "
                        f"prompt, on one clock of forward passes; without --prompt the prompt is {COMPARE_PROMPT!r} "
                        "(the autoregressive model needs a first character)")
    p.add_argument("--fps", type=float, default=None,
                   help=f"frames per second, {MIN_FPS:g}..{MAX_FPS:g} (default 8, 24 with --compare)")
    p.add_argument("--hold", type=float, default=2.0,
                   help=f"seconds to hold the final text, 0..{MAX_HOLD:g} (default %(default)s)")
    add_progress_flag(p)
    args = p.parse_args(argv)
    if args.compare and not args.prompt:
        args.prompt = COMPARE_PROMPT
    if args.fps is None:
        args.fps = 24.0 if args.compare else 8.0
    return args


def check_output(args):
    """Fail before any work: the playback flags, then the GIF's path or a display for the window."""
    # a GIF stores a frame's duration in 16 bits of centiseconds (655 s), and a terminal sleeps
    # 1/fps: 0.0015 fps overflowed the one, 1e-300 the other
    if not MIN_FPS <= args.fps <= MAX_FPS:
        raise UserError(f"--fps must be in [{MIN_FPS:g}, {MAX_FPS:g}], got {args.fps:g}")
    if not 0 <= args.hold <= MAX_HOLD:
        raise UserError(f"--hold must be in [0, {MAX_HOLD:g}] seconds, got {args.hold:g}")
    if args.save and not args.save.lower().endswith(".gif"):
        raise UserError(f"--save writes a GIF: give a .gif path, got {args.save!r}")
    if args.save:
        check_writable(args.save)
    elif not args.terminal:
        import matplotlib.pyplot as plt
        backend = plt.get_backend().lower()
        if backend in ("agg", "pdf", "ps", "svg", "cairo", "pgf", "template"):
            raise UserError(f"no display for a window (matplotlib backend {backend}): use --save out.gif or --terminal")


def load_ar_baseline(path, canvas, chars, device):
    """The autoregressive model for --compare, checked before any sampling starts."""
    ar, ar_chars, _ = load_model(path, device)
    if not ar.config.causal or ar_chars != chars:
        raise UserError(f"{path} is not an autoregressive model with the diffusion model's vocabulary")
    if canvas[0, 0] == mask_id_of(chars):
        raise UserError("--compare needs a prompt: the autoregressive model cannot write the first character")
    return ar


def record_panels(args, seed):
    """[(label, Recording)]: the diffusion model's run and, with --compare, the autoregressive
    baseline's on the same canvas (the same temperature, top-k/top-p and precision)."""
    device, model, chars, config = load_for_sampling(args)
    canvas = make_canvas(args.prompt, args.length, chars, 1, device)
    ar = load_ar_baseline(args.compare, canvas, chars, device) if args.compare else None
    diffusion = Recording(generate_steps(model, canvas, config, seed), canvas, chars,
                          progress("sampling: character", args.progress))
    if ar is None:
        return [("tiny-diffusion", diffusion)]
    baseline = Recording(generate_ar_steps(ar, canvas, config, seed), canvas, chars,
                         progress("sampling (autoregressive): character", args.progress))
    return [("diffusion", diffusion), ("autoregressive", baseline)]


def summary(panels):
    """'256 steps, NFE 64'; with --compare 'diffusion: 256 steps, NFE 64; autoregressive: 200 passes'."""
    counts = [f"{len(rec)} passes" if label == "autoregressive" else f"{len(rec)} steps, NFE {rec.nfe}"
              for label, rec in panels]
    return counts[0] if len(panels) == 1 else "; ".join(f"{label}: {c}" for (label, _), c in zip(panels, counts))


def main(argv=None):
    args = parse_args(argv)
    try:
        seed = sampling_seed(args)
        check_output(args)
        panels = record_panels(args, seed)
        if args.terminal:
            play_terminal(panels, args.fps, args.hold)
        elif args.save:
            n = save_gif(panels, args.save, args.fps, args.hold, args.progress)
            print(f"wrote {args.save}: {n} frames ({summary(panels)}), the last held {args.hold:g} s longer",
                  file=sys.stderr)
        else:
            show_window(panels, args.fps, args.hold)
    except UserError as e:
        sys.exit(f"diffusion_process.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run_entry_point(main)
