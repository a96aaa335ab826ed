"""
What every script shares besides the network: the checkpoint file (config, vocabulary,
weights, training state; written atomically, checksummed, loaded with weights_only=True),
the vocabulary, the data and its split, and the device and precision.
"""

import glob
import hashlib
import os
import re
from dataclasses import asdict, fields

import torch

from cli import UserError
from model import ModelConfig, Transformer

MASK_GLYPH = "_"  # how a masked position is written in prompts and shown on screen
CHECKPOINT_FORMAT = "tiny-diffusion/1"
ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CKPT = os.path.join(ROOT, "weights", "model.pt")  # the shipped diffusion model
DEFAULT_AR = os.path.join(ROOT, "weights", "ar_baseline.pt")  # and its autoregressive baseline


# -----------------------------------------------------------------------------
# Data and vocabulary

DATA_DEFAULT = os.path.join(ROOT, "data", "tiny_shakespeare.txt")
TRAIN_FRACTION = 0.9  # first 90% of the file trains, the last 10% is held out, always


def load_text(path):
    """The training text as a str; every problem is one UserError."""
    if os.path.isdir(path):
        raise UserError(f"--data {path} is a folder: give the text file")
    if not os.path.isfile(path):
        raise UserError(f"data file not found: {path} (run: python data/prepare.py)")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (binary or another encoding)") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


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


# -----------------------------------------------------------------------------
# Devices

def pick_device(name="auto"):
    """'auto' picks cuda, then mps, then cpu; an explicit device that is not there is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} is not available: PyTorch sees no CUDA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} is not available: {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    return dev


def native_bf16(device):
    """True where bf16 matmuls run natively: CUDA, and CPUs with AVX-512 BF16 or AMX. Elsewhere
    bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":  # torch.cpu's probes are private: a missing one counts as no
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def sampling_precision(precision, device):
    """The samplers' "auto": bf16 where it is native (`native_bf16`), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device, precision="auto"):
    """bf16 autocast for precision "bf16", and for "auto" on CUDA; "fp32" is full precision.
    (On CPUs with bf16 instructions, "bf16" makes a forward pass almost twice as fast.)"""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16 and device.type in ("cuda", "cpu"))


# -----------------------------------------------------------------------------
# Checkpoints: one file with the config, the vocabulary, the weights and (for resuming)
# the training state. Only tensors and plain Python types, so weights_only=True loads it.

def save_checkpoint(path, model, chars, **extra):
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.config),
        "chars": "".join(chars),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    write_checkpoint(ckpt, path)


def weights_checksum(state_dict):
    """sha256 of every weight tensor's bytes, in name order: flipped bytes fail the load."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_checkpoint(ckpt, path):
    """Stamp the weights' checksum and write the checkpoint atomically (a temp file, then a
    rename): a crash never leaves a half-written checkpoint. Temp files that killed processes
    left beside `path` are removed first; a failed write removes its own."""
    if os.path.isdir(path):
        raise UserError(f"cannot write checkpoint {path}: it is a folder (give a file path)")
    ckpt["checksum"] = weights_checksum(ckpt["model"])
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temp_files(path)
        with open(tmp, "wb") as f:  # opened here, so a folder we may not write to is a plain OSError
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save raises RuntimeError when the disk is full
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror
        else:  # torch's own text, without its C++ location ("[enforce fail at inline_container.cc:664] .")
            reason = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(e).splitlines()[0])[:120] or "the write failed"
        raise UserError(f"cannot write checkpoint {path}: {reason}") from None


def remove_stale_temp_files(path):
    for tmp in glob.glob(glob.escape(path) + ".tmp*"):
        pid = tmp.rsplit(".tmp", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            os.remove(tmp)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def read_checkpoint(path):
    """Load and validate a checkpoint dict; every failure is one UserError naming the file."""
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path} is a folder: give a .pt file")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path}: truncated, corrupt or not a PyTorch "
                        f"checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a tiny-diffusion checkpoint (expected format {CHECKPOINT_FORMAT})")
    known = {f.name for f in fields(ModelConfig)}
    cfg = ckpt.get("config", {})
    if set(cfg) - known:
        raise UserError(f"{path}: unknown config fields {sorted(set(cfg) - known)}")
    if "checksum" in ckpt and weights_checksum(ckpt.get("model", {})) != ckpt["checksum"]:
        raise UserError(f"{path}: the weights do not match their stored checksum (the file is corrupt)")
    if len(ckpt.get("chars", "")) + 1 != cfg.get("vocab_size"):
        raise UserError(f"{path}: vocabulary of {len(ckpt.get('chars', ''))} characters does not match vocab_size")
    return ckpt


def load_model(path, device="cpu"):
    """Rebuild the model of a checkpoint. Returns (model in eval mode, chars, ckpt)."""
    ckpt = read_checkpoint(path)
    model = Transformer(ModelConfig(**ckpt["config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match the stored config: {first[:120]}") from None
    return model.to(device).eval(), ckpt["chars"], ckpt


def load_model_of_kind(path, device, causal):
    """load_model, checked to be a diffusion model (causal=False) or an AR baseline (True)."""
    model, chars, ckpt = load_model(path, device)
    if model.config.causal != causal:
        kind = "an autoregressive baseline" if model.config.causal else "a diffusion model"
        want = "an autoregressive model" if causal else "a diffusion model"
        raise UserError(f"{path} is {kind}; this needs {want}")
    return model, chars, ckpt
