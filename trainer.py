"""
Training as a library: the Trainer, one optimisation step (what bench.py times), evaluation
with checkpointing, progress lines, and the loop that ties them together, on CPU, CUDA (bf16,
torch.compile, DDP) or MPS. Its config and rules are train_config.py's, the objectives
objectives.py's; distillation (distill.Distillation) plugs in at a few hooks.
"""

import gc
import math
import os
import signal
import sys
import time
from dataclasses import asdict, fields, replace

import torch
import torch.distributed as dist

from checkpoint import check_training_state, read_checkpoint, respelled, save_checkpoint
from cli import Progress, UserError
from corpus import ROOT, encode_splits, load_text
from devices import autocast, pick_device
from diffusion import Shard, evaluate, format_eval
from distill import Distillation, NoDistillation
from dmmd import DMMDistillation
from memory import check_training_fits
from model import ModelConfig, Transformer
from objectives import OBJECTIVES
from optim import EMA, lr_factor, make_optimizers
from run_folder import RunLock, RunLog, cut_log, fresh_run_files, no_run_to_resume
from train_config import TrainConfig, train_config_problems


# -----------------------------------------------------------------------------
# Data

def get_batch(data, batch_size, length, generator):
    """Random windows of `length` characters (contiguous, so .view works on any device)."""
    starts = torch.randint(len(data) - length + 1, (batch_size,), generator=generator, device=data.device)
    return data[starts[:, None] + torch.arange(length, device=data.device)]


def run_evaluation(model, val, tc, shard=Shard()):
    """(val NLL or NELBO in nats/char, standard error) under tc's evaluation settings."""
    return evaluate(model, val, tc.eval_context, tc.eval_mc, tc.eval_seed, shard)


# -----------------------------------------------------------------------------
# The run

def setup_distributed(tc):
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: NCCL on CUDA, gloo on CPU."""
    if "RANK" not in os.environ:
        return 0, 1, pick_device(tc.device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if tc.device in ("auto", "cuda") and torch.cuda.is_available():
        n_gpus = torch.cuda.device_count()
        if local >= n_gpus:  # else an opaque CUDA error from one rank only
            raise UserError(f"torchrun process {local} of this host has no GPU: it has {n_gpus} CUDA GPU(s), "
                            f"so use --nproc_per_node {n_gpus} or fewer")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = pick_device("cpu" if tc.device == "auto" else tc.device)
        dist.init_process_group("gloo")
    if tc.batch_size % world:
        raise UserError(f"--batch_size {tc.batch_size} is not divisible by {world} processes")
    return rank, world, device


def shutdown_distributed():
    """Called after train() has returned, so its DDP wrapper is freed first: a process group that
    DDP still holds outlives destroy_process_group() until interpreter exit, where gloo's worker
    threads can abort the process (seen as a rare SIGABRT of one rank on CPU)."""
    if dist.is_initialized():
        gc.collect()  # module reference cycles
        dist.barrier()  # rank 0 may still be writing a checkpoint
        dist.destroy_process_group()


def format_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def load_resume_state(mc, tc, explicit_flags):
    """(checkpoint, TrainConfig) of the run in tc.out_dir: its own settings, except the training
    flags this command line sets (e.g. a longer --max_steps)."""
    path = os.path.join(tc.out_dir, "last.pt")
    if not os.path.exists(path):
        raise UserError(no_run_to_resume(tc.out_dir))
    ckpt = read_checkpoint(path)
    check_training_state(ckpt, path)
    changed = [f"--{f.name} {getattr(mc, f.name)} (the run's is {ckpt['config'].get(f.name)})"
               for f in fields(ModelConfig)
               if f.name in explicit_flags and getattr(mc, f.name) != ckpt["config"].get(f.name)]
    if changed:
        raise UserError(f"--resume keeps the run's model ({path}): {', '.join(changed)}; drop "
                        f"{'it' if len(changed) == 1 else 'them'}")
    given = {k: getattr(tc, k) for k in explicit_flags if k in {f.name for f in fields(TrainConfig)}}
    if "optimizer" in given and given["optimizer"] != ckpt["train_config"].get("optimizer"):
        raise UserError(f"--resume keeps the run's optimizer ({ckpt['train_config'].get('optimizer')}); "
                        f"drop --optimizer")
    given.update(resume=True, out_dir=tc.out_dir, data=tc.data, device=tc.device, progress=tc.progress)  # this machine's
    known = {f.name for f in fields(TrainConfig)}
    saved = {k: v for k, v in ckpt["train_config"].items() if k in known}
    tc = replace(TrainConfig(**saved), **given)
    problems = train_config_problems(tc)
    if problems:
        raise UserError(f"{path}: {respelled(problems, 'train_config.')}")
    return ckpt, tc


def distill_source(path, mc, explicit_flags, method="sdtt"):
    """(checkpoint, ModelConfig) of the model to distil: its config, with the dropout flags
    this command line gives (the student may train with other dropout than its teacher did)
    and --noise_dim (a D-MMD student's noise input)."""
    source = read_checkpoint(path)
    if not OBJECTIVES[source["config"]["objective"]].distillable:
        raise UserError(f"--distill_from {path} is a model of objective {source['config']['objective']}; "
                        f"distillation needs a diffusion model")
    if method == "dmmd" and source["config"].get("noise_dim"):  # its teacher and auxiliary have no noise input
        raise UserError(f"--distill_from {path} is a D-MMD student (it has a noise input); --distill_method dmmd "
                        f"distils a model without one")
    dropouts = {k: getattr(mc, k) for k in ("dropout", "attn_dropout", "embd_dropout", "noise_dim")
                if k in explicit_flags}
    return source, replace(ModelConfig(**source["config"]), **dropouts)


class Trainer:
    """The run's state and its pieces: one optimisation step (also what bench.py times),
    evaluation with checkpointing, progress lines, and the loop that ties them together."""

    def __init__(self, mc, tc, explicit_flags=frozenset()):
        self.rank, self.world, self.device = setup_distributed(tc)
        self.master = self.rank == 0
        self.lock = RunLock(tc.out_dir, enabled=self.master)  # one process writes the folder
        self.log_file = None
        if tc.resume:  # before last.pt is read: a run still going there would overwrite what we continue
            self.lock.acquire()
        try:
            self.build(mc, tc, explicit_flags)
        except BaseException:
            self.lock.release()
            raise

    def build(self, mc, tc, explicit_flags):
        """The model, optimisers, data and state of the run (restored from last.pt with --resume)."""
        torch.manual_seed(tc.seed + self.rank)
        self.bf16 = tc.precision == "bf16" or (tc.precision == "auto" and self.device.type == "cuda")
        torch.backends.cuda.matmul.allow_tf32 = self.bf16  # the plain fp32 path stays plain
        torch.backends.cudnn.allow_tf32 = self.bf16

        text = load_text(tc.data)
        ckpt = source = None
        if tc.resume:
            ckpt, tc = load_resume_state(mc, tc, explicit_flags)
            chars, mc = ckpt["chars"], ModelConfig(**ckpt["config"])
        elif tc.distill_from:
            source, mc = distill_source(tc.distill_from, mc, explicit_flags, tc.distill_method)
            chars = source["chars"]
        else:
            chars = sorted(set(text))
            mc = replace(mc, vocab_size=len(chars) + 1)
        if tc.distill_from:  # the run's length is its rounds
            tc = replace(tc, max_steps=tc.distill_rounds * tc.distill_round_steps)
        self.mc, self.tc, self.chars = mc, tc, chars
        check_training_fits(mc, tc, self.device, self.world, self.bf16)  # before anything is allocated
        self.train_ids, self.val_ids = encode_splits(text, chars, self.device, mc.block_size + 2)

        self.model = Transformer(mc).to(self.device)
        if source:  # a D-MMD student's noise input keeps its own small start, the rest is the teacher's
            self.model.load_state_dict({**self.model.state_dict(), **source["model"]})
        self.optimizers = make_optimizers(self.model, tc, fused=self.bf16 and self.device.type == "cuda")
        self.ema = EMA(self.model, tc.ema) if tc.ema else None
        self.step, self.best_val, self.elapsed_before = 0, float("inf"), 0.0
        self.best_step, self.evals_since_best = 0, 0  # --patience: early stopping
        self.saved_step = ckpt["step"] if ckpt else None  # the step of the last.pt to fall back on
        self.gen = torch.Generator(device=self.device).manual_seed(tc.seed + 1000 * self.rank)  # batches, masks
        self.use_compile = tc.compile == "on" or (tc.compile == "auto" and self.device.type == "cuda")
        self.objective = OBJECTIVES[mc.objective]
        self.distill = self.distillation()
        if ckpt:
            self.restore(ckpt)
        self.fwd_model = self.compiled(self.model)
        if self.world > 1:
            self.fwd_model = torch.nn.parallel.DistributedDataParallel(
                self.fwd_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.objective.one_process and self.world > 1:  # DDP's gradient hooks allow one forward per backward
            raise UserError(f"--objective {mc.objective} runs in one process (two forward passes per step)")
        self.seq_len = mc.block_size + self.distill.extra_len
        self.local_batch = tc.batch_size // self.world
        self.tokens_per_step = tc.batch_size * mc.block_size

    def distillation(self):
        """The hooks of the run's loss: a plain objective's, SDTT's or D-MMD's (--distill_method)."""
        if not self.tc.distill_from:
            return NoDistillation(self.objective)
        if self.tc.distill_method == "dmmd":
            return DMMDistillation(self.model, self.tc, self.compiled, self.optimizers)
        return Distillation(self.model, self.tc, self.compiled)

    def compiled(self, model):
        return torch.compile(model) if self.use_compile else model

    @property
    def eval_model(self):
        """What is evaluated and saved as best.pt: the EMA copy if there is one."""
        return self.ema.model if self.ema else self.model

    def log(self, *args, **kwargs):
        if self.master:
            print(*args, **kwargs, flush=True)

    # --- state -----------------------------------------------------------------
    def restore(self, ckpt):
        """The run's state from its last.pt (each field's type checked by checkpoint's
        check_training_state); a state that does not fit this run (another optimizer's groups,
        a random state of another size) is one line, not a traceback."""
        path = os.path.join(self.tc.out_dir, "last.pt")
        if len(ckpt["optimizer"]) != len(self.optimizers):
            raise UserError(f"{path}: optimizer holds {len(ckpt['optimizer'])} state(s); the run's "
                            f"{self.tc.optimizer} has {len(self.optimizers)}")
        try:
            self.restore_state(ckpt)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            reason = f"{e.args[0]!r} missing" if isinstance(e, KeyError) and e.args else \
                (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise UserError(f"{path}: its training state does not fit this run ({reason})") from None

    def restore_state(self, ckpt):
        self.model.load_state_dict(ckpt["model"])
        for opt, state in zip(self.optimizers, ckpt["optimizer"]):
            opt.load_state_dict(state)
        if self.ema:  # a run resumed with --ema for the first time starts its average here
            self.ema.model.load_state_dict(ckpt.get("ema", ckpt["model"]))
        self.step, self.best_val = ckpt["step"], ckpt["best_val"]
        self.best_step, self.evals_since_best = ckpt.get("best_step", 0), ckpt.get("evals_since_best", 0)
        self.distill.restore(ckpt)
        self.elapsed_before = ckpt.get("elapsed", 0.0)
        if self.world == 1 and ckpt["world"] == 1:  # bit-exact continuation
            self.gen.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["rng"]["cpu"])
            if self.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        else:
            self.gen.manual_seed(self.tc.seed + 1000 * self.rank + self.step)

    def save(self, name, **extra):
        """best.pt holds the weights that were evaluated (the EMA copy if there is one)."""
        if not self.master:
            return
        model = self.model if name == "last.pt" else self.eval_model
        save_checkpoint(os.path.join(self.tc.out_dir, name), model, self.chars, step=self.step,
                        best_val=self.best_val, train_config=portable(asdict(self.tc)), world=self.world,
                        **extra)

    def save_last(self):
        """last.pt: the whole state after a whole step. The log is flushed first, so it holds
        every row up to that step (rows past it, resume cuts)."""
        self.saved_step, self.saved_at = self.step, time.time()
        if self.log_file:
            self.log_file.flush()
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        extra = {"ema": {k: v.detach().cpu() for k, v in self.ema.model.state_dict().items()}} if self.ema else {}
        extra.update(self.distill.state())
        self.save("last.pt", optimizer=[opt.state_dict() for opt in self.optimizers], generator=self.gen.get_state(),
                  rng=rng, elapsed=self.elapsed(), best_step=self.best_step,
                  evals_since_best=self.evals_since_best, **extra)

    def elapsed(self):
        return self.elapsed_before + time.time() - self.t_start

    def stopped_early(self):
        """--patience evaluations in a row brought no new best: the run has passed its best."""
        return 0 < self.tc.patience <= self.evals_since_best

    def progress(self):
        """Fraction of the run done: steps, or wall time under --time_budget, whichever is
        further. The wall time is read after every step with one process; with several, at each
        progress line and evaluation (the ranks must agree, which takes a broadcast)."""
        return max(self.step / self.tc.max_steps, self.time_progress)

    def refresh_time_progress(self):
        if self.tc.time_budget:
            p = self.elapsed() / (60 * self.tc.time_budget)
            if self.world > 1:  # every rank stops at the same step
                p = torch.tensor([p], device=self.device)
                dist.broadcast(p, 0)
                p = p.item()
            self.time_progress = p

    # --- one step --------------------------------------------------------------
    def loss(self, x):
        """The batch's loss: the objective's, or distillation's (a frozen teacher's targets)."""
        return self.distill.loss(self.fwd_model, x, self.mc, self.tc, self.gen)

    def train_step(self, lr_mult):
        """One optimiser step on a fresh batch. Returns the loss as a device tensor (no sync)."""
        self.distill.end_rounds(self)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * lr_mult
        x = get_batch(self.train_ids, self.local_batch, self.seq_len, self.gen)
        with autocast(self.device, "bf16" if self.bf16 else "fp32"):
            loss = self.loss(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema:
            self.ema.update(self.model, self.step)
        return loss.detach()

    # --- evaluation and checkpoints ----------------------------------------------
    def evaluate_and_save(self):
        t0 = time.time()
        row = {"step": self.step}
        if self.ema:  # the raw weights too, so the EMA's effect is measured in every run
            row["val_raw"], row["val_raw_se"] = self.evaluation(self.model, "evaluating the raw weights")
        val, se = self.evaluation(self.eval_model, "evaluating" + (" the EMA weights" if self.ema else ""))
        if not math.isfinite(val):
            raise DivergedError(f"the validation loss is {val} at step {self.step}")
        improved = val < self.best_val
        self.best_val = min(self.best_val, val)
        self.best_step, self.evals_since_best = (self.step, 0) if improved else (self.best_step, self.evals_since_best + 1)
        best = self.distill.best_extra(improved)  # None: keep the best.pt there is
        if best is not None:
            self.save("best.pt", val=val, val_se=se, **best)
        if self.log_file:  # before last.pt (which flushes it): a kill between them leaves a row resume cuts
            row.update(val=val, val_se=se, time=self.elapsed())
            self.log_file.write(row)
        self.save_last()
        raw = f" (raw weights {row['val_raw']:.4f})" if self.ema else ""
        self.log(f"eval  {self.step:>6} | {format_eval(val, se, self.mc.causal)}{raw}"
                 f"{' | new best, saved' if improved else ''} | {time.time() - t0:.1f}s")

    def evaluation(self, model, label):
        """run_evaluation with a progress line on rank 0's terminal (--eval_mc 1024 takes
        minutes), erased before the evaluation's own line is printed."""
        progress = Progress(f"{label} at step {self.step}: batch", enabled=self.master and self.tc.progress)
        try:
            return run_evaluation(model, self.val_ids, self.tc, Shard(self.rank, self.world, progress))
        finally:
            progress.clear()

    def progress_line(self, loss, lr_mult, steps, seconds):
        """Progress, with the run's length and ETA from whichever limit ends it."""
        by_steps = self.step / self.tc.max_steps
        if self.time_progress > by_steps:  # the time budget ends the run: ~ its step count
            total = f"~{round(self.step / self.time_progress)}"
            eta = 60 * self.tc.time_budget - self.elapsed()
        else:
            total, eta = f"{self.tc.max_steps}", (self.tc.max_steps - self.step) * seconds / steps
        tok_s = steps * self.tokens_per_step / seconds
        return (f"step {self.step:>6}/{total} | {self.distill.note()}loss {loss:.4f} | lr {self.tc.lr * lr_mult:.2e} | "
                f"{tok_s / 1e3:,.1f}k tok/s | ETA {format_time(max(eta, 0))}")

    # --- the loop ----------------------------------------------------------------
    def run(self):
        """Train to the run's end or a signal, holding the run folder's lock throughout."""
        tc, mc = self.tc, self.mc
        try:
            self.t_start = time.time()
            self.time_progress = 0.0
            self.refresh_time_progress()  # a resumed run continues its schedule where it was
            if self.progress() >= 1 or self.stopped_early():
                self.log(f"{tc.out_dir}/last.pt: this run already finished at step {self.step} "
                         + ("(stopped early: raise --patience to train on)" if self.stopped_early() else
                            "(raise --max_steps or --time_budget to train on)"))
                return
            self.log_file = self.open_log()
            self.log(self.header())
            self.train_loop()
            if self.stopped_early():
                self.log(f"stopped early at step {self.step}: {tc.patience} evaluations without a new best "
                         f"(the best at step {self.best_step})")
            self.distill.end_rounds(self)  # the last round's student
        finally:
            self.lock.release()
        name = "NLL" if mc.causal else "NELBO"
        self.log(f"done: {self.step} steps in {format_time(self.elapsed())}; best val {name} "
                 f"{self.best_val:.4f} nats/char -> {tc.out_dir}/best.pt")

    def train_loop(self):
        tc = self.tc
        t_last, step_last = time.time(), self.step
        self.saved_at = time.time()
        loss_sum = torch.zeros((), device=self.device)
        self.model.train()
        # Ctrl-C and schedulers' SIGTERM stop the run at the end of the step in progress, so the
        # saved state is that of a whole step wherever the signal lands (a second signal stops at
        # once and saves nothing). Set for SIGINT too: a process started in the background
        # inherits SIGINT ignored, and Python then installs no handler of its own.
        stop = StopRequest()
        previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.progress() < 1 and not stop.requested and not self.stopped_early():
                lr_mult = lr_factor(self.step, self.progress(), tc)
                loss_sum += self.train_step(lr_mult)
                # the clock: after every step with one process (no sync), so the budget is kept to
                # the step; at progress lines with several (the ranks agree through a broadcast)
                if self.world == 1 or self.step % tc.log_interval == 0:
                    self.refresh_time_progress()
                if self.step % tc.log_interval == 0:
                    now = time.time()
                    self.log_progress(loss_sum, lr_mult, self.step - step_last, now - t_last)
                    t_last, step_last = now, self.step
                if self.step % tc.eval_interval == 0 or self.progress() >= 1:
                    self.evaluate_and_save()
                    self.refresh_time_progress()  # a slow evaluation may use up the budget
                    t_last = time.time()  # keep evaluation out of tokens/s
                elif self.save_due(loss_sum):
                    self.save_last()
            if stop.requested:
                self.save_last()  # a whole step: resuming continues bit for bit
                self.log(f"\ninterrupted at step {self.step}: saved {tc.out_dir}/last.pt "
                         f"(continue with --resume --out_dir {tc.out_dir})")
                sys.exit(130)
        except KeyboardInterrupt:  # the second signal: the step in progress is lost, last.pt is the last saved
            self.log(f"\nstopped during step {self.step + 1}; {tc.out_dir}/last.pt is the last saved state")
            sys.exit(130)
        except DivergedError as e:
            saved = "nothing was saved" if self.saved_step is None else \
                f"{tc.out_dir}/last.pt holds step {self.saved_step}, the last saved"
            raise UserError(f"{e}: the run diverged ({saved}); lower --lr or --muon_lr, or check --grad_clip") from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.log_file:
                self.log_file.close()
                self.log_file = None

    def save_due(self, loss_sum):
        """Whether to save last.pt between evaluations: every --save_interval seconds (rank 0's
        clock: only it writes), so a kill -9 loses at most that much; never a state that has
        diverged (the next progress line reports it, with last.pt the last good state)."""
        if not (self.master and self.tc.save_interval and time.time() - self.saved_at >= self.tc.save_interval):
            return False
        return math.isfinite(loss_sum.item()) and all(bool(p.isfinite().all()) for p in self.model.parameters())

    def header(self):
        tc, mc = self.tc, self.mc
        return (f"{mc.objective} model: {self.model.num_params() / 1e6:.2f}M parameters, {mc.n_layer} layers, "
                f"width {mc.n_embd}, context {mc.block_size} | device {self.device} x{self.world}, compile "
                f"{self.use_compile}, {'bf16' if self.bf16 else 'fp32'}, {tc.optimizer}"
                f"{f', EMA {tc.ema}' if tc.ema else ''} | batch {tc.batch_size} x {mc.block_size} = "
                f"{self.tokens_per_step:,} tokens/step | train {len(self.train_ids):,} chars, "
                f"val {len(self.val_ids):,} chars" + (f" | resuming at step {self.step}" if tc.resume else ""))

    def log_progress(self, loss_sum, lr_mult, steps, seconds):
        """The progress line and log row for the last `steps` steps (loss_sum: their summed
        losses, zeroed here); the one host sync of the loop (beside save_due's)."""
        if self.world > 1:
            dist.all_reduce(loss_sum)
        loss = loss_sum.item() / (steps * self.world)
        if not math.isfinite(loss):
            raise DivergedError(f"the training loss became {loss} between steps {self.step - steps + 1} "
                                f"and {self.step}")
        self.log(self.progress_line(loss, lr_mult, steps, seconds))
        if self.log_file:
            self.log_file.write({"step": self.step, "train_loss": loss, "lr": self.tc.lr * lr_mult,
                                 "time": self.elapsed()})
        loss_sum.zero_()

    def open_log(self):
        """log.jsonl (rank 0's), once the folder is locked: on resume, cut back to last.pt's step
        and appended to; a fresh run starts it anew, where run_folder.fresh_run_files allows
        (--overwrite removes the run there first)."""
        tc = self.tc
        path = os.path.join(tc.out_dir, "log.jsonl")
        if self.master:
            try:
                os.makedirs(tc.out_dir, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot write to --out_dir {tc.out_dir}: {e.strerror}") from None
            self.lock.acquire()
            if self.lock.note:
                self.log(self.lock.note)
        removed = [] if tc.resume else fresh_run_files(tc.out_dir, tc.overwrite)
        for old in removed if self.master else []:
            os.remove(old)
        if self.world > 1:  # every rank has looked before rank 0 writes (else a rank finds its log)
            dist.barrier()
        if not self.master:
            return None
        if tc.resume:
            dropped = cut_log(path, self.step)
            if dropped:
                self.log(f"{path}: {dropped} line(s) past step {self.step}, written after last.pt was saved, dropped")
            return RunLog(path, "a")
        if os.path.exists(path):  # a log without checkpoints: its run saved nothing to continue
            self.log(f"{path}: the log of a run that saved no checkpoint, replaced")
        return RunLog(path, "w")


class StopRequest:
    """The first SIGINT/SIGTERM asks the loop to stop after the step in progress; the second
    raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False

    def handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class DivergedError(Exception):
    """A loss that is NaN or infinite: the run stops, keeping the last good checkpoint."""


def portable(train_config):
    """The stored training config without this machine's absolute paths: paths inside the repo
    become relative to it, others keep only their file name."""
    root = ROOT
    out = dict(train_config)
    for key in ("data", "out_dir", "distill_from"):
        path = out.get(key)
        if path and os.path.isabs(path):
            rel = os.path.relpath(path, root)
            out[key] = rel if not rel.startswith("..") else os.path.basename(path)
    return out
