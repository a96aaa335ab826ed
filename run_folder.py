"""
The run folder (--out_dir): which files make a run that a fresh one must not overwrite, what
--resume says where there is none, the lock that keeps a second process out while a run is
live, and log.jsonl, cut back to last.pt's step when a run resumes.
"""

import json
import os

try:
    import fcntl
except ImportError:  # Windows: no lock, so two runs in one folder are not refused there
    fcntl = None

from cli import UserError

LOCK_NAME = ".lock"  # holds the pid of the process running in the folder


# -----------------------------------------------------------------------------
# What is in the folder

def fresh_run_files(folder, overwrite):
    """The files a fresh run in `folder` removes first (with --overwrite). A folder with
    checkpoints is refused without --overwrite; one with only a log (a run killed before its
    first save: nothing to continue) is reused, its log replaced, as --resume says."""
    ckpts = [name for name in ("last.pt", "best.pt") if os.path.exists(os.path.join(folder, name))]
    if ckpts and not overwrite:
        if "last.pt" in ckpts:
            raise UserError(f"{folder} holds a run ({', '.join(ckpts)}): continue it with --resume, "
                            f"replace it with --overwrite, or choose another --out_dir")
        raise UserError(f"{folder} holds a run that cannot be continued (best.pt, no last.pt): "
                        f"replace it with --overwrite, or choose another --out_dir")
    if not overwrite:
        return []
    return [path for path in (os.path.join(folder, name) for name in ("last.pt", "best.pt", "log.jsonl"))
            if os.path.exists(path)]


def no_run_to_resume(folder):
    """--resume's one line for a folder without last.pt: what there is, and what to do instead
    (the same verdict as fresh_run_files', so neither sends the user to the other in a circle)."""
    if os.path.exists(os.path.join(folder, "best.pt")):
        return (f"--resume: {folder} has best.pt but no last.pt, so its run cannot be continued: "
                f"start afresh with --overwrite, or choose another --out_dir")
    if os.path.exists(os.path.join(folder, "log.jsonl")):
        return (f"--resume: {folder} has no last.pt: its run stopped before its first save, so there "
                f"is nothing to continue; start it afresh without --resume (its log is replaced)")
    return f"--resume: no run in {folder} (no last.pt): start one without --resume"


# -----------------------------------------------------------------------------
# The lock

class RunLock:
    """An exclusive flock on FOLDER/.lock for the run's life: a second train.py in the folder
    (two --resume at once interleaved every log row) fails with one line. The kernel drops the
    lock when its process dies, even by kill -9, so a stale file never blocks a run. Where the
    file system cannot lock (some network mounts), the run goes on with `note` set."""

    def __init__(self, folder, enabled=True):
        self.folder, self.path = folder, os.path.join(folder, LOCK_NAME)
        self.enabled = enabled and fcntl is not None
        self.file, self.note = None, None

    def acquire(self):
        if not self.enabled or self.file or not os.path.isdir(self.folder):
            return  # no folder: nothing in it to read or overwrite yet
        while self.file is None:
            try:
                f = open(self.path, "a+")
            except OSError as e:
                raise UserError(f"cannot write to --out_dir {self.folder}: {e.strerror}") from None
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                pid = f.read().strip() or "unknown"
                f.close()
                raise UserError(f"run folder {self.folder} is in use by another process (pid {pid})") from None
            except OSError as e:
                f.close()
                self.note = f"note: cannot lock {self.path} ({e.strerror}): a second run here would not be refused"
                return
            self.file = f if same_file(f, self.path) else f.close()  # else a releaser removed it: again
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self):
        """Remove the file, then unlock: one that opened it before the removal sees, once it
        holds the lock, that the path is no longer its file, and takes the new one."""
        if self.file:
            try:
                os.remove(self.path)
            except OSError:
                pass
            self.file.close()
            self.file = None


def same_file(f, path):
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


# -----------------------------------------------------------------------------
# log.jsonl

def cut_log(path, step):
    """Drop the log's rows past `step` (last.pt's): a kill -9 after the log's buffer flushed,
    or a second Ctrl-C, leaves rows the resumed run writes again. A torn last line goes too;
    other lines that are not rows are kept (not ours to judge). The file is replaced
    atomically. Returns how many lines were dropped."""
    if not os.path.exists(path):
        return 0
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    keep = [line for i, line in enumerate(lines) if keeps(line, step, torn=i == len(lines) - 1
                                                          and not line.endswith("\n"))]
    if len(keep) < len(lines):
        write_atomically(path, "".join(keep))
    return len(lines) - len(keep)


def keeps(line, step, torn):
    try:
        row = json.loads(line)
    except ValueError:
        return not torn
    return not (isinstance(row, dict) and isinstance(row.get("step"), (int, float)) and row["step"] > step)


def write_atomically(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"cannot rewrite {path}: {e.strerror} (it is unchanged)") from None


class RunLog:
    """log.jsonl open for appending; a failed write (a full disk) is one UserError."""

    def __init__(self, path, mode="a"):
        self.path = path
        self.file = self.guarded(open, path, mode)

    def guarded(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}") from None

    def write(self, row):
        self.guarded(self.file.write, json.dumps(row) + "\n")

    def flush(self):
        self.guarded(self.file.flush)

    def close(self):
        if not self.file.closed:
            self.guarded(self.file.close)
