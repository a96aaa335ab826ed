"""
Command-line plumbing the entry points share: one-line errors, and flags built from a config
dataclass's fields (a field's default is the flag's default, one help line per field).
"""

import argparse
import json
import os
import signal
import stat
import sys
import time
import typing
from dataclasses import fields


def run_entry_point(main):
    """main(), with Ctrl-C a KeyboardInterrupt again (also for a process started in the
    background, which inherits SIGINT ignored), and exit 130 without a traceback on it.

    Before main, from its first statement, each entry point has Ctrl-C end the process at once
    with os._exit(130) (nothing is written yet): a KeyboardInterrupt while torch or this module
    is imported printed the import machinery's traceback, or aborted the process inside torch's
    C++ code. What Python runs before the script (its site module) stays out of reach.

    A Ctrl-C that library code turned into another exception is a Ctrl-C too: Python raises a
    RuntimeError from it when it lands in a class body's __set_name__ (torch._dynamo's
    dataclasses, imported lazily while the model is built)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if interrupted(e):
            sys.exit(130)
        raise


def interrupted(error):
    """Whether a KeyboardInterrupt is among the exceptions that led to `error` (its causes and
    contexts, a bounded walk)."""
    for _ in range(16):
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
        if error is None:
            return False
    return False


REPO = os.path.dirname(os.path.abspath(__file__))


def shown(path, repo=REPO):
    """A path as the user can read it, never this machine's layout: relative to the current
    folder when it lies inside it; a file of the repo given as an absolute path (the defaults:
    weights/model.pt) relative to the repo, as the README names it, from any folder; any other
    path as given (data/prepare.py, which runs on its own, has its copy)."""
    rel = os.path.relpath(os.path.abspath(path))
    if not rel.startswith(".."):
        return rel
    in_repo = os.path.relpath(os.path.abspath(path), repo)
    return in_repo if os.path.isabs(path) and not in_repo.startswith("..") else path


def special_file(path):
    """What `path` is, in words, when it exists but is neither a regular file nor a folder (a
    FIFO, a socket, a device: reading one blocks or yields no checkpoint); None otherwise."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((what for test, what in kinds if test(mode)), None)


def require_file(path, label, give, missing):
    """shown(path), or one UserError unless `path` is a regular file: a folder or a FIFO/socket/
    device says "{label} {name} is ...: {give}"; a path that does not exist says `missing`."""
    name = shown(path)
    if os.path.isdir(path):
        raise UserError(f"{label} {name} is a folder: {give}")
    if special_file(path):
        raise UserError(f"{label} {name} is {special_file(path)}, not a file: {give}")
    if not os.path.isfile(path):
        raise UserError(missing)
    return name


def read_jsonl(path, flag):
    """The records of a JSONL file (blank lines skipped); a file that cannot be read or is not
    JSON lines is one UserError naming the flag that gave it."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise UserError(f"{flag} {path}: {getattr(e, 'strerror', None) or e}") from None


class UserError(Exception):
    """A problem with the user's input: the CLIs print it as one line and exit non-zero."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def field_type(f):
    """The type a flag parses a field with: int for `int`, and for `Optional[int]` too."""
    args = [a for a in typing.get_args(f.type) if a is not type(None)]
    return args[0] if args else f.type


def add_config_flags(parser, cls, helps, choices=None, bare=None, defaults=None):
    """One flag per field of the dataclass `cls` that has a help line in `helps` (a help of
    None: no flag), spelled --name and, for names with underscores, --name-with-dashes. Every
    flag defaults to None, so `config_values` can tell what was given. choices: field ->
    allowed values; bare: field -> the value of the flag given without one (--compile);
    defaults: field -> the default shown in the help, where a preset changes it."""
    choices, bare, defaults = choices or {}, bare or {}, defaults or {}
    for f in fields(cls):
        if helps.get(f.name) is None:
            continue
        dashed = f"--{f.name.replace('_', '-')}"
        names = [f"--{f.name}"] + ([dashed] if "_" in f.name else [])
        default = defaults.get(f.name, f.default)
        text = helps[f.name] + ("" if default is None else f" (default {default})")
        kind = field_type(f)
        if kind is bool:  # --flag / --no-flag, in both spellings as every other flag
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        extra = {"nargs": "?", "const": bare[f.name]} if f.name in bare else {}
        metavar = None if f.name in choices else f.name.upper()  # argparse then lists the choices
        parser.add_argument(*names, dest=f.name, type=kind, default=None, choices=choices.get(f.name),
                            metavar=metavar, help=text, **extra)


def parse_fields(text, cls, exclude=()):
    """'steps=16,temperature=0.9' -> {field: value} over the fields of the dataclass `cls` but
    `exclude`, each value read as its field's type ('none': None; an entry 'default' adds
    nothing). Anything else is one UserError that quotes `text`."""
    types = {f.name: field_type(f) for f in fields(cls) if f.name not in exclude}
    given = {}
    for part in text.split(","):
        if part == "default":
            continue
        key, _, value = part.partition("=")
        if key not in types:
            raise UserError(f"unknown setting {key!r} in {text!r} (known: default, {', '.join(types)})")
        try:
            given[key] = None if value == "none" else types[key](value)
        except ValueError:
            raise UserError(f"bad value {value!r} for {key} in {text!r}") from None
    return given


def config_values(cls, args):
    """{field: value} of the flags the user gave (the others are None in `args`)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


class Progress:
    """A one-line progress report on stderr for work that can take more than a few seconds:
    `label done/total (pct) elapsed, ETA`, redrawn at most every `every` seconds. Off when stderr
    is not a terminal (logs and pipes stay clean) or enabled=False (the CLIs' --no-progress).
    The total may grow as the work learns its size (`progress.total += n`). clear() erases the
    line before anything else is printed to the terminal; the next update draws it again.

        progress = Progress("evaluating", total=len(blocks))
        for block in blocks:
            ...
            progress.update(1)
        progress.clear()
    """

    EVERY = 0.5  # seconds between redraws (the last update always draws)

    def __init__(self, label, total=0, enabled=True, every=None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = bool(enabled) and getattr(self.stream, "isatty", lambda: False)()
        self.label, self.total, self.every = label, total, self.EVERY if every is None else every
        self.done, self.t0, self.shown_at, self.width = 0, time.time(), 0.0, 0

    def update(self, n=1):
        self.done = min(self.done + n, self.total)
        now = time.time()
        if self.enabled and self.total > 0 and (now - self.shown_at >= self.every or self.done == self.total):
            self.shown_at = now
            self.draw(self.line(now - self.t0))

    def line(self, elapsed):
        frac = self.done / self.total
        eta = elapsed * (1 - frac) / frac if frac else None
        tail = f", ETA {format_seconds(eta)}" if eta is not None and self.done < self.total else ""
        return f"{self.label} {self.done:,}/{self.total:,} ({frac:.0%}) {format_seconds(elapsed)}{tail}"

    def draw(self, text):
        pad = max(0, self.width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self.width = len(text)

    def clear(self):
        """Erase the line, so what is printed next starts on a clean line."""
        if self.enabled and self.width:
            self.draw("")
            self.stream.write("\r")
            self.stream.flush()
            self.width = 0

    close = clear  # at the end of the work: the same erasure


def add_progress_flag(parser):
    """--progress / --no-progress: the progress line of long work on stderr, shown only when
    stderr is a terminal; --no-progress turns it off there too."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="a progress line with an ETA on stderr while long work runs, when stderr is a "
                             "terminal (never in pipes or logs); --no-progress: none (default on)")


def format_seconds(seconds):
    """12s, 3m05s, 1h02m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
