"""
The checkpoint file: config, vocabulary, weights and (for resuming) the training state;
written atomically, checksummed, loaded with weights_only=True.
"""

import glob
import hashlib
import os
import re
from dataclasses import asdict, fields

import torch

from cli import UserError, special_file
from corpus import ROOT
from model import ModelConfig, Transformer
from objectives import OBJECTIVES

CHECKPOINT_FORMAT = "tiny-diffusion/1"
DEFAULT_CKPT = os.path.join(ROOT, "weights", "model.pt")  # the shipped diffusion model
DEFAULT_AR = os.path.join(ROOT, "weights", "ar_baseline.pt")  # and its autoregressive baseline


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
    if special_file(path):
        raise UserError(f"checkpoint {path} is {special_file(path)}, not a file: give a .pt file")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path}: truncated, corrupt or not a PyTorch "
                        f"checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a tiny-diffusion checkpoint (expected format {CHECKPOINT_FORMAT})")
    ckpt["config"] = cfg = migrate_config(ckpt.get("config", {}), ckpt.get("train_config", {}))
    known = {f.name for f in fields(ModelConfig)}
    if set(cfg) - known:
        raise UserError(f"{path}: unknown config fields {sorted(set(cfg) - known)}")
    if cfg.get("objective") not in OBJECTIVES:
        raise UserError(f"{path}: unknown objective {cfg.get('objective')!r}")
    if "checksum" in ckpt and weights_checksum(ckpt.get("model", {})) != ckpt["checksum"]:
        raise UserError(f"{path}: the weights do not match their stored checksum (the file is corrupt)")
    if len(ckpt.get("chars", "")) + 1 != cfg.get("vocab_size"):
        raise UserError(f"{path}: vocabulary of {len(ckpt.get('chars', ''))} characters does not match vocab_size")
    return ckpt


def migrate_config(cfg, train_config):
    """A model config as ModelConfig stores it now. Checkpoints written before it had an
    `objective` (the shipped weights among them) said `causal` (the AR baseline) and
    `block_len` > 0 (a block model); a mixed run's last.pt names its objective in its
    training config. Only the config changes: the weights and their checksum do not."""
    if "causal" not in cfg:
        return cfg
    cfg = dict(cfg)
    if cfg.pop("causal"):
        cfg["objective"] = "ar"
    elif cfg.get("block_len"):
        cfg["objective"] = "block"
    else:
        cfg["objective"] = "mixed" if train_config.get("objective") == "mixed" else "diffusion"
    return cfg


def load_model(path, device="cpu"):
    """Rebuild the model of a checkpoint. Returns (model in eval mode, chars, ckpt)."""
    ckpt = read_checkpoint(path)
    model = Transformer(ModelConfig(**ckpt["config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match the stored config: {first[:120]}") from None
    bad = next((name for name, w in ckpt["model"].items() if w.is_floating_point() and not w.isfinite().all()), None)
    if bad:  # the checksum only says the bytes are as written: a diverged run's are NaN
        raise UserError(f"{path}: weights {bad} hold NaN or infinite values (a diverged run?)")
    return model.to(device).eval(), ckpt["chars"], ckpt


def load_model_of_kind(path, device, causal):
    """load_model, checked to be a diffusion model (causal=False) or an AR baseline (True)."""
    model, chars, ckpt = load_model(path, device)
    if model.config.causal != causal:
        kind = "an autoregressive baseline" if model.config.causal else "a diffusion model"
        want = "an autoregressive model" if causal else "a diffusion model"
        raise UserError(f"{path} is {kind}; this needs {want}")
    return model, chars, ckpt
