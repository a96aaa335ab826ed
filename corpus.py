"""
The text and its vocabulary: the data file, its fixed 90/10 split, and characters <-> ids
(the mask symbol is the id after the vocabulary's last character).
"""

import os

import torch

from cli import UserError, require_file, shown

ROOT = os.path.dirname(os.path.abspath(__file__))
MASK_GLYPH = "_"  # how a masked position is written in prompts and shown on screen


DATA_DEFAULT = os.path.join(ROOT, "data", "tiny_shakespeare.txt")
TRAIN_FRACTION = 0.9  # first 90% of the file trains, the last 10% is held out, always


def load_text(path):
    """The training text as a str; every problem is one UserError (naming the file as cli.shown
    writes it: the default data/tiny_shakespeare.txt, not this machine's path to it)."""
    name = require_file(path, "--data", "give the text file",
                        f"data file not found: {shown(path)} (run: python data/prepare.py)")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise UserError(f"{name} is not UTF-8 text (binary or another encoding)") from None
    except OSError as e:
        raise UserError(f"cannot read {name}: {e.strerror}") from None


def split_text(text):
    """(train, val): the first TRAIN_FRACTION of the text and the rest."""
    n = int(TRAIN_FRACTION * len(text))
    return text[:n], text[n:]


def encode_splits(text, chars, device, min_len):
    """(train, val) int64 id tensors on `device`; both must hold at least min_len characters."""
    index = {c: i for i, c in enumerate(chars)}
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise UserError(f"data has characters not in the checkpoint's vocabulary: {unknown[:10]}")
    train_text, val_text = split_text(text)
    if len(val_text) < min_len or len(train_text) < min_len:
        raise UserError(f"data too short: {len(train_text):,} training and {len(val_text):,} validation "
                        f"characters, each split needs at least {min_len} (the context + 1)")
    return tuple(torch.tensor([index[c] for c in t], dtype=torch.long, device=device)
                 for t in (train_text, val_text))


def mask_id_of(chars):
    """The mask symbol's id: the one after the vocabulary's characters (= ModelConfig.mask_id
    of a model built for this vocabulary). The one place that says so."""
    return len(chars)


def encode(text, chars, allow_mask=False):
    """Text -> list of ids. With allow_mask, MASK_GLYPH becomes the mask id (infilling)."""
    index = {c: i for i, c in enumerate(chars)}
    mask_id = mask_id_of(chars)
    unknown = sorted({c for c in text if c not in index and not (allow_mask and c == MASK_GLYPH)})
    if unknown:
        shown = " ".join(repr(c) for c in unknown)
        raise UserError(f"characters not in the model's vocabulary: {shown}")
    return [mask_id if c == MASK_GLYPH and allow_mask else index[c] for c in text]


def decode(ids, chars):
    """Ids -> text; the mask id shows as MASK_GLYPH."""
    mask_id = mask_id_of(chars)
    return "".join(MASK_GLYPH if i == mask_id else chars[i] for i in ids)
