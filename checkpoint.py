"""
The checkpoint file: config, vocabulary, weights and (for resuming) the training state;
written atomically, checksummed, loaded with weights_only=True.
"""

import errno
import glob
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, fields

import torch

from cli import UserError, require_file, shown
from corpus import ROOT
from model import ModelConfig, Transformer

CHECKPOINT_FORMAT = "tiny-diffusion/1"
DEFAULT_CKPT = os.path.join(ROOT, "weights", "model.pt")  # the shipped diffusion model (likelihood: evaluate.py)
# what sample.py, bench.py --sample and diffusion_process.py write with: the 16-pass D-MMD student
# of DEFAULT_CKPT, with its measured sampler setting stored (RESULTS.md, 2026-12-08)
DEFAULT_SAMPLER_CKPT = os.path.join(ROOT, "weights", "student16.pt")
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
    ckpt["fields_checksum"] = fields_checksum(ckpt)
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
        if disk_full(e):  # torch's "unexpected pos 9173312 vs 9173200" says only that a write fell short
            kept = "the previous checkpoint is intact" if os.path.exists(path) else "there was no earlier copy"
            raise UserError(f"no space left on device writing {path}; {kept}") from None
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror
        else:  # torch's own text, without its C++ location ("[enforce fail at inline_container.cc:664] .")
            reason = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(e).splitlines()[0])[:120] or "the write failed"
        raise UserError(f"cannot write checkpoint {path}: {reason}") from None


def disk_full(error):
    """Whether a failed torch.save ran out of space: an OSError ENOSPC (or EDQUOT, a quota)
    in the exception or the one it replaced (torch turns the file's OSError into a RuntimeError,
    and its close can turn it back), or torch's short-write check, which a full disk trips."""
    for _ in range(8):  # the chain, bounded
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        if isinstance(error, RuntimeError) and "unexpected pos" in str(error):
            return True
        error = error.__cause__ or error.__context__
        if error is None:
            return False
    return False


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


def read_checkpoint(path, finite=True):
    """Load and validate a checkpoint dict; every failure is one UserError naming the file (as
    cli.shown writes it: the default weights/model.pt, not this machine's path to it).
    finite=False leaves NaN weights to the caller (tools/export_weights.py counts them itself,
    after rounding to bf16)."""
    name = require_file(path, "checkpoint", "give a .pt file", f"checkpoint not found: {shown(path)}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {name}: truncated, corrupt or not a PyTorch "
                        f"checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{name} is not a tiny-diffusion checkpoint (expected format {CHECKPOINT_FORMAT})")
    if not isinstance(ckpt.get("config", {}), dict):
        raise UserError(f"{name}: config must be a dict of ModelConfig fields, got {ckpt['config']!r}")
    stored_config = ckpt.get("config", {})
    ckpt["config"] = cfg = migrate_config(stored_config, ckpt.get("train_config", {}))
    known = {f.name for f in fields(ModelConfig)}
    if set(cfg) - known:
        raise UserError(f"{name}: unknown config fields {sorted(set(cfg) - known)}")
    if not is_weights(ckpt.get("model")):  # before the checksum, which reads them (every reader, export too)
        raise UserError(f"{name}: model must be a dict of weight tensors")
    if "checksum" in ckpt and weights_checksum(ckpt["model"]) != ckpt["checksum"]:
        raise UserError(f"{name}: the weights do not match their stored checksum (the file is corrupt)")
    check_fields(ckpt, name)
    check_fields_checksum({**ckpt, "config": stored_config}, name)
    if finite:
        check_finite(ckpt, name)
    return ckpt


def check_finite(ckpt, name):
    """Weights that are all finite: the checksum only says the bytes are as written, and a
    diverged run's are NaN (it sampled newlines and evaluated to nan, exit 0). Every reader
    refuses them: sampling, evaluation, --resume, --distill_from's teacher."""
    bad = first_nonfinite(ckpt["model"])
    if bad:
        raise UserError(f"{name}: weights {bad} hold NaN or infinite values (a diverged run?)")


def first_nonfinite(weights):
    """The name of the first floating-point tensor of `weights` holding NaN or inf, else None."""
    return next((k for k, w in weights.items() if w.is_floating_point() and not w.isfinite().all()), None)


def is_int(value, low):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_random_state(value):
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8


def is_weights(value):
    return isinstance(value, dict) and all(isinstance(w, torch.Tensor) for w in value.values())


# What --resume reads from a run's last.pt beside the weights and the config, as train.py writes
# it: {field: (test, what it must be)}. train_config's values go through the flags' table
# (trainer.load_resume_state); ema and teacher only where the run has them.
TRAINING_STATE = {
    "step": (lambda v: is_int(v, 0), "an integer >= 0"),
    "best_val": (lambda v: is_number(v) and not math.isnan(v), "a number (inf before the first evaluation)"),
    "elapsed": (lambda v: is_number(v) and math.isfinite(v) and v >= 0, "a finite number of seconds >= 0"),
    "world": (lambda v: is_int(v, 1), "an integer >= 1 (the processes that trained)"),
    "train_config": (lambda v: isinstance(v, dict), "a dict of TrainConfig fields"),
    "optimizer": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(s, dict) for s in v),
                  "a list of optimizer state dicts"),
    "generator": (is_random_state, "a uint8 tensor (the batch generator's state)"),
    "rng": (lambda v: isinstance(v, dict) and is_random_state(v.get("cpu"))
            and (v.get("cuda") is None or is_random_state(v["cuda"])), "a dict of uint8 tensors ('cpu', 'cuda')"),
    "ema": (is_weights, "a dict of weight tensors"),
    "teacher": (is_weights, "a dict of weight tensors"),
    "teacher_round": (lambda v: is_int(v, 0), "an integer >= 0"),
    "aux": (is_weights, "a dict of weight tensors"),  # --distill_method dmmd's auxiliary model
    "aux_optimizer": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(s, dict) for s in v),
                      "a list of optimizer state dicts"),
    "best_step": (lambda v: is_int(v, 0), "an integer >= 0"),  # --patience
    "evals_since_best": (lambda v: is_int(v, 0), "an integer >= 0"),
}
OPTIONAL_STATE = ("elapsed", "ema", "teacher", "teacher_round", "aux", "aux_optimizer", "best_step", "evals_since_best")


def check_training_state(ckpt, path):
    """The training state of a run's last.pt, each field of the type and range train.py writes:
    a hand-edited or foreign file is one line naming the field (it was a traceback while the
    run was set up, or a negative step trained on), and NaN in the EMA or teacher weights is
    refused as in the model's."""
    missing = [k for k in TRAINING_STATE if k not in ckpt and k not in OPTIONAL_STATE]
    if missing:
        raise UserError(f"{path} has no training state ({', '.join(missing)} missing): not a last.pt as train.py "
                        f"writes it (a weights-only checkpoint?); --resume continues a run from its last.pt")
    for name, (test, what) in TRAINING_STATE.items():
        if name in ckpt and not test(ckpt[name]):
            shown_value = repr(ckpt[name]) if not isinstance(ckpt[name], (dict, list, torch.Tensor)) \
                else type(ckpt[name]).__name__
            raise UserError(f"{path}: {name} must be {what}, got {shown_value[:60]}")
    for name in ("ema", "teacher", "aux"):
        bad = first_nonfinite(ckpt.get(name, {}))
        if bad:
            raise UserError(f"{path}: {name} weights {bad} hold NaN or infinite values (a diverged run?)")


def respelled(problems, prefix):
    """train_config's and the sampler's complaints name flags (--n_head); about a checkpoint
    they name its fields (config.n_head)."""
    return "; ".join(re.sub(r"--(\w+)", prefix + r"\1", p) for p in problems)


def check_fields(ckpt, path):
    """Every field read from the checkpoint beside the weights, by the rules of the flags that
    set it: the model config by train_config's RANGES and rules, the sampler setting by
    SamplerConfig's, and a vocabulary of distinct characters that the config's size fits."""
    from sampler import ENGINE_FIELDS, SamplerConfig  # imported here: both modules import this one
    from train_config import model_problems
    problems = model_problems(ckpt["config"])
    if problems:
        raise UserError(f"{path}: {respelled(problems, 'config.')}")
    chars = ckpt.get("chars", "")
    if not isinstance(chars, str) or not chars:
        raise UserError(f"{path}: chars must be the vocabulary as a non-empty string, got {chars!r}")
    twice = next((c for i, c in enumerate(chars) if c in chars[:i]), None)
    if twice is not None:
        raise UserError(f"{path}: chars lists {twice!r} twice (each character of the vocabulary has one id)")
    if len(chars) + 1 != ckpt["config"].get("vocab_size", ModelConfig.vocab_size):
        raise UserError(f"{path}: vocabulary of {len(chars)} characters does not match config.vocab_size")
    sampler = ckpt.get("sampler", {})
    known = [f.name for f in fields(SamplerConfig) if f.name not in ENGINE_FIELDS]
    if not isinstance(sampler, dict) or set(sampler) - set(known):
        raise UserError(f"{path}: sampler must be a dict such as {{'steps': 16, 'temperature': 0.9}} (the setting "
                        f"a distilled student was measured at) over {', '.join(known)}; got {sampler!r}")
    try:
        SamplerConfig.check_stored(sampler)
    except ValueError as e:
        raise UserError(f"{path}: {respelled([str(e)], 'sampler.')}") from None


def fields_checksum(ckpt):
    """A short sha256 of every config field and of the vocabulary. The weights' checksum does
    not cover them, and an edited field that the weights still fit loads silently: block_size
    (the rotary tables are not saved), n_head, the objective, the soft-cap, the vocabulary's
    order. Changing one on purpose means writing the checkpoint again (write_checkpoint)."""
    values = {f"config.{k}": v for k, v in ckpt.get("config", {}).items()}
    values["chars"] = ckpt.get("chars", "")
    return {k: hashlib.sha256(json.dumps(v, default=repr).encode()).hexdigest()[:16]
            for k, v in sorted(values.items())}


def check_fields_checksum(ckpt, path):
    """The config and vocabulary as written (ckpt holds the stored config, before migration)."""
    stored = ckpt.get("fields_checksum")
    if stored is None:  # written before there was one: its fields are still checked (check_fields)
        return
    now = fields_checksum(ckpt)
    edited = sorted(k for k in set(now) | set(stored) if stored.get(k) != now.get(k)) \
        if isinstance(stored, dict) else ["fields_checksum"]
    if edited:
        raise UserError(f"{path}: {', '.join(edited)} and the weights do not match: edited after the "
                        f"checkpoint was written (the checksum of its fields differs; to keep an edit, "
                        f"save it with checkpoint.write_checkpoint)")


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
    """Rebuild the model of a checkpoint. Returns (model in eval mode, chars, ckpt); the model
    carries the checkpoint's sampler defaults (model.sampler_defaults), which generate honours."""
    ckpt = read_checkpoint(path)
    model = Transformer(ModelConfig(**ckpt["config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{shown(path)}: weights do not match the stored config: {first[:120]}") from None
    model.sampler_defaults = {k: v for k, v in ckpt.get("sampler", {}).items() if v is not None}
    return model.to(device).eval(), ckpt["chars"], ckpt


def load_model_of_kind(path, device, causal):
    """load_model, checked to be a diffusion model (causal=False) or an AR baseline (True)."""
    model, chars, ckpt = load_model(path, device)
    if model.config.causal != causal:
        kind = "an autoregressive baseline" if model.config.causal else "a diffusion model"
        want = "an autoregressive model" if causal else "a diffusion model"
        raise UserError(f"{shown(path)} is {kind}; this needs {want}")
    return model, chars, ckpt
