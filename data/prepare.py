"""
Fetch Tiny Shakespeare (Karpathy's char-rnn corpus) into data/tiny_shakespeare.txt.

    python data/prepare.py                 # download from the canonical char-rnn URL
    python data/prepare.py --from FILE     # use a local copy instead (checked the same way)

The file is verified against its sha256 before it is written (--out's folder is created if
missing). train.py uses the first 90% of it for training and the last 10% for validation.
Standard library only: it runs before torch is installed. Ctrl-C exits 130 without a traceback
and leaves no file.
"""

if __name__ == "__main__":  # Ctrl-C from the first statement on: exit 130, no traceback (cli.run_entry_point)
    import os, signal
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import argparse
import hashlib
import os
import signal
import sys
import urllib.request

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_shakespeare.txt")


class ArgumentParser(argparse.ArgumentParser):
    """cli.py's one-line errors, without importing torch: a bad flag is one line, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def verify(data, source):
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise ValueError(f"{source}: sha256 {digest[:16]}... does not match Tiny Shakespeare "
                         f"({SHA256[:16]}...); get the original file from {URL}")


def shown(path):
    """A path as the user can read it (cli.shown's rule): relative to the current folder when it
    lies inside it, a file of the repo given as an absolute path (the default --out) relative
    to the repo, any other path as given."""
    rel = os.path.relpath(os.path.abspath(path))
    if not rel.startswith(".."):
        return rel
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    in_repo = os.path.relpath(os.path.abspath(path), repo)
    return in_repo if os.path.isabs(path) and not in_repo.startswith("..") else path


def fetch(url, timeout=60):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except OSError as e:
        raise ValueError(f"cannot download {url} ({getattr(e, 'reason', e)}); if you are offline, "
                         f"copy the file here and run: python data/prepare.py --from PATH") from None


def write(data, path):
    """Through a temporary file, so a failed write never leaves a partial file at path."""
    tmp, folder = path + ".tmp", os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except FileExistsError:  # makedirs: the folder's path is a file
        raise ValueError(f"cannot write {path}: {folder} is a file, not a folder") from None
    except OSError as e:  # read-only folder, a file where a folder should be, disk full
        raise ValueError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="src", metavar="PATH", help="local copy of input.txt instead of downloading")
    p.add_argument("--out", default=DEFAULT_OUT, help="where to write (default: data/tiny_shakespeare.txt in the repo)")
    args = p.parse_args(argv)
    try:
        if args.src:
            try:
                with open(args.src, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ValueError(f"cannot read {args.src}: {e.strerror}") from None
        else:
            print(f"downloading {URL}", file=sys.stderr)
            data = fetch(URL)
        verify(data, args.src or URL)
        write(data, args.out)
    except ValueError as e:
        sys.exit(f"prepare.py: error: {e}")
    except KeyboardInterrupt:  # during a download (write's temp file is removed on the way out)
        sys.exit(130)
    n = len(data.decode("utf-8"))
    print(f"wrote {shown(args.out)}: {n:,} characters, sha256 verified (corpus.split_text holds out the last 10%)")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C a KeyboardInterrupt again, for main
    main()
