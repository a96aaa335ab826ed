"""checkpoint.py: a checkpoint written and read back (its round trip, atomic writes), and a
missing, truncated, foreign, corrupt or NaN file as one line naming it. Every field read from a
checkpoint goes through the flags' rules: hand-made checkpoints are one line naming the file and
the field, never a traceback or a silent load; so is a run's last.pt whose training state
(step, optimizer, random states, EMA) --resume cannot use."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import sample
import train
from checkpoint import fields_checksum, load_model, read_checkpoint, save_checkpoint, write_checkpoint
from cli import UserError
from conftest import TINY, assert_one_line_error, exit_message, read_log
from model import ModelConfig, Transformer


def test_best_checkpoint_round_trips(tiny_run):
    model, chars, ckpt = load_model(os.path.join(tiny_run, "best.pt"))
    assert len(chars) == 65 and chars[0] == "\n"
    assert ckpt["config"]["n_layer"] == 2 and ckpt["step"] in (400, 800)
    assert ckpt["val"] == min(r["val"] for r in read_log(tiny_run) if "val" in r)
    x = torch.randint(0, 65, (2, 32))
    again = Transformer(ModelConfig(**ckpt["config"]))
    again.load_state_dict(ckpt["model"])
    assert torch.equal(model(x), again.eval()(x))


def test_stale_temp_files_of_dead_processes_are_removed_at_the_next_save(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"best.pt.tmp{dead.pid}"
    stale.write_bytes(b"x" * 1000)
    mine = tmp_path / f"best.pt.tmp{os.getppid()}"  # a live process's temp file stays
    mine.write_bytes(b"y")
    save_checkpoint(str(tmp_path / "best.pt"), Transformer(ModelConfig(n_layer=1, n_embd=16, n_head=2)),
                    "".join(map(chr, range(33, 98))))  # 65 distinct characters: a duplicate is refused
    assert not stale.exists() and mine.exists()
    assert read_checkpoint(str(tmp_path / "best.pt"))["checksum"]


def test_a_missing_truncated_foreign_or_mismatched_file_is_one_line(tmp_path, tiny_ckpt, run_main):
    missing = tmp_path / "missing.pt"
    assert_one_line_error(run_main("sample.py", "--ckpt", missing), "not found", str(missing))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(tiny_ckpt, "rb").read()[:5000])
    assert_one_line_error(run_main("sample.py", "--ckpt", truncated), "cannot read", str(truncated))
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    assert_one_line_error(run_main("sample.py", "--ckpt", foreign), "not a tiny-diffusion checkpoint")
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["config"]["n_embd"] = 128
    mismatched = tmp_path / "mismatched.pt"
    torch.save(ckpt, mismatched)
    assert_one_line_error(run_main("sample.py", "--ckpt", mismatched), "do not match", str(mismatched))


def test_a_folder_as_ckpt_says_it_is_a_folder(tmp_path, run_main):
    assert_one_line_error(run_main("sample.py", "--ckpt", tmp_path), "is a folder")


def test_flipped_weight_bytes_are_a_one_line_error(tmp_path, run_main):
    path = tmp_path / "m.pt"
    save_checkpoint(str(path), Transformer(ModelConfig(n_layer=1, n_embd=64, n_head=2)), "ab" * 32 + "c")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    path.write_bytes(bytes(data))
    r = run_main("sample.py", "--ckpt", path, "--device", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "checksum" in r.stderr or "corrupt" in r.stderr


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path, tiny_ckpt):
    # its checksum is valid (the bytes are as written): it used to sample newlines, exit 0
    ckpt = read_checkpoint(tiny_ckpt)
    name = sorted(k for k, v in ckpt["model"].items() if v.is_floating_point())[0]
    ckpt["model"][name].view(-1)[3] = float("nan")
    write_checkpoint(ckpt, str(tmp_path / "nan.pt"))
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(tmp_path / "nan.pt"), "--device", "cpu", "--length", "20"])
    assert f"weights {name} hold NaN or infinite values" in str(e.value)


# -----------------------------------------------------------------------------
# Hand-edited fields

def hand_edited(tiny_ckpt, tmp_path, edit):
    """The tiny checkpoint edited by `edit(ckpt)` and saved with plain torch.save, as by hand
    (the weights' checksum untouched, the fields' checksum as written)."""
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return str(path)


def sample_error(capsys, argv):
    """sample.main(argv)'s exit message: one line, no traceback on stderr either."""
    message = exit_message(sample.main, argv)
    assert "Traceback" not in capsys.readouterr().err
    return message


def swap_two(chars):
    return chars[1] + chars[0] + chars[2:]


EDITS = {
    "n_head 0": (lambda c: c["config"].update(n_head=0), "config.n_head must be in [1, 64], got 0"),
    "block_size abc": (lambda c: c["config"].update(block_size="abc"), "config.block_size must be an integer, got 'abc'"),
    "block_size float": (lambda c: c["config"].update(block_size=32.0), "config.block_size must be an integer"),
    "n_embd odd head": (lambda c: c["config"].update(n_embd=66), "config.n_embd / config.n_head must be an even"),
    "objective": (lambda c: c["config"].update(objective="gan"), "config.objective must be one of"),
    "block_len": (lambda c: c["config"].update(objective="block", block_len=5), "config.block_len must divide"),
    # in range, and the weights fit (the rotary tables are not saved): the fields' checksum tells
    "block_size smaller": (lambda c: c["config"].update(block_size=16), "config.block_size and the weights do not match"),
    "block_size larger": (lambda c: c["config"].update(block_size=64), "config.block_size and the weights do not match"),
    "n_head in range": (lambda c: c["config"].update(n_head=1), "config.n_head and the weights do not match"),
    "softcap": (lambda c: c["config"].update(logit_softcap=3.0), "config.logit_softcap and the weights do not match"),
    "vocabulary order": (lambda c: c.update(chars=swap_two(c["chars"])), "chars and the weights do not match"),
    "duplicated character": (lambda c: c.update(chars=c["chars"][:-1] + c["chars"][0]), "chars lists '\\n' twice"),
    "added duplicate": (lambda c: c.update(chars=c["chars"] + "a"), "chars lists 'a' twice"),
    "no chars": (lambda c: c.update(chars=""), "chars must be the vocabulary as a non-empty string"),
    "config not a dict": (lambda c: c.update(config="abc"), "config must be a dict"),
    "sampler steps -1": (lambda c: c.update(sampler={"steps": -1}), "sampler.steps must be an integer >= 1, got -1"),
    "sampler steps abc": (lambda c: c.update(sampler={"steps": "abc"}), "sampler.steps must be an integer >= 1"),
    "sampler abc": (lambda c: c.update(sampler="abc"), "sampler must be a dict such as {'steps': 16, 'temperature': 0.9}"),
    "sampler unknown field": (lambda c: c.update(sampler={"stpes": 4}), "sampler must be a dict"),
    "sampler engine field": (lambda c: c.update(sampler={"cuda_graph": True}), "sampler must be a dict"),
    "sampler temperature": (lambda c: c.update(sampler={"steps": 4, "temperature": -1.0}),
                            "sampler.temperature must be >= 0, got -1.0"),
}


@pytest.mark.parametrize("name", EDITS)
def test_a_hand_edited_field_is_one_line_naming_the_file_and_the_field(tiny_ckpt, tmp_path, capsys, name):
    edit, needle = EDITS[name]
    path = hand_edited(tiny_ckpt, tmp_path, edit)
    with pytest.raises(UserError) as error:
        read_checkpoint(path)  # the Python API (load_model, evaluate, --resume, --distill_from) reads it so
    assert str(error.value).startswith(f"{path}: ") and needle in str(error.value)
    message = sample_error(capsys, ["--ckpt", path, "--device", "cpu", "--seed", "0"])
    assert needle in message and path in message


def test_a_field_changed_on_purpose_and_saved_again_loads(tiny_ckpt, tmp_path):
    ckpt = read_checkpoint(tiny_ckpt)
    ckpt["config"]["block_size"] = 16
    write_checkpoint(ckpt, str(tmp_path / "short.pt"))  # re-stamps both checksums
    assert read_checkpoint(str(tmp_path / "short.pt"))["config"]["block_size"] == 16


def test_the_fields_checksum_covers_the_config_and_the_vocabulary_but_not_the_weights(tiny_ckpt):
    ckpt = read_checkpoint(tiny_ckpt)
    assert ckpt["fields_checksum"] == fields_checksum(ckpt)
    assert set(ckpt["fields_checksum"]) == {"chars"} | {f"config.{k}" for k in ckpt["config"]}
    assert fields_checksum({**ckpt, "model": {}}) == ckpt["fields_checksum"]


def test_a_checkpoint_without_a_fields_checksum_still_has_its_fields_checked(tiny_ckpt, tmp_path):
    """Checkpoints written before the fields' checksum load as before, their ranges checked."""
    path = hand_edited(tiny_ckpt, tmp_path, lambda c: c.pop("fields_checksum"))
    assert read_checkpoint(path)["config"]["n_head"] == 2
    path = hand_edited(tiny_ckpt, tmp_path, lambda c: (c.pop("fields_checksum"), c["config"].update(n_head=0)))
    with pytest.raises(UserError, match="config.n_head must be in"):
        read_checkpoint(path)


def test_a_fifo_as_ckpt_says_what_it_is(tmp_path, capsys):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    message = sample_error(capsys, ["--ckpt", str(fifo), "--device", "cpu"])
    assert "is a FIFO (named pipe), not a file" in message and "not found" not in message


@pytest.mark.parametrize("edit, needle", [({"log_interval": "abc"}, "train_config.log_interval must be an integer, "
                                                                      "got 'abc'"),
                                           ({"grad_clip": -1.0}, "train_config.grad_clip must be in (0, 1000000.0]"),
                                           ({"optimizer": "sgd"}, "train_config.optimizer must be one of adamw, muon")])
def test_resume_checks_the_stored_training_config_by_the_flags_table(tiny_run, tmp_path, data_path, capsys,
                                                                     edit, needle):
    out = tmp_path / "run"
    out.mkdir()
    ckpt = torch.load(os.path.join(tiny_run, "last.pt"), weights_only=True)
    ckpt["train_config"].update(edit)  # fields TINY does not give (a flag given replaces the stored value)
    torch.save(ckpt, out / "last.pt")
    with pytest.raises(SystemExit) as stop:
        train.main(TINY + ["--data", data_path, "--out_dir", str(out), "--resume", "--max_steps", "900"])
    message = str(stop.value.code)
    assert str(out / "last.pt") in message and needle in message, message
    assert "Traceback" not in capsys.readouterr().err and sorted(os.listdir(out)) == ["last.pt"]


SHORT = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--batch_size", "4",
         "--device", "cpu", "--eval_mc", "1", "--eval_interval", "2"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A run of 2 steps on a short text, its last.pt to edit (no data file needed)."""
    out = tmp_path_factory.mktemp("short")
    (out / "text.txt").write_text("To be, or not to be, that is the question.\n" * 50)
    train.main(SHORT + ["--data", str(out / "text.txt"), "--out_dir", str(out), "--max_steps", "2"])
    return str(out)


def nan_weights(ckpt):
    return {k: torch.full_like(v, float("nan")) for k, v in ckpt["model"].items()}


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.update(step=-5), "step must be an integer >= 0, got -5"),  # it trained from step -5
    (lambda c: c.update(step="abc"), "step must be an integer >= 0, got 'abc'"),
    (lambda c: c.update(best_val="abc"), "best_val must be a number"),
    (lambda c: c.update(elapsed=float("nan")), "elapsed must be a finite number of seconds >= 0, got nan"),
    (lambda c: c.update(world=0), "world must be an integer >= 1"),
    (lambda c: c.update(train_config="abc"), "train_config must be a dict of TrainConfig fields"),
    (lambda c: c.update(optimizer="abc"), "optimizer must be a list of optimizer state dicts"),
    (lambda c: c.update(optimizer=[{}]), "its training state does not fit this run ('param_groups' missing)"),
    (lambda c: c.update(optimizer=c["optimizer"] * 2), "optimizer holds 2 state(s); the run's adamw has 1"),
    (lambda c: c.update(rng="abc"), "rng must be a dict of uint8 tensors"),
    (lambda c: c["rng"].update(cpu=torch.zeros(5, dtype=torch.uint8)), "its training state does not fit this run"),
    (lambda c: c.update(generator=5), "generator must be a uint8 tensor"),
    (lambda c: c.pop("best_val"), "has no training state (best_val missing)"),
    (lambda c: c.update(ema=nan_weights(c)), "ema weights"),
    (lambda c: c.update(aux=nan_weights(c)), "aux weights"),  # D-MMD's auxiliary model
    (lambda c: c.update(aux_optimizer="abc"), "aux_optimizer must be a list of optimizer state dicts"),
])
def test_resume_checks_every_field_of_the_training_state(short_run, tmp_path, capsys, edit, needle):
    out = tmp_path / "run"
    out.mkdir()
    ckpt = torch.load(os.path.join(short_run, "last.pt"), weights_only=True)
    edit(ckpt)  # by hand: the weights and their checksum unchanged
    torch.save(ckpt, out / "last.pt")
    with pytest.raises(SystemExit) as stop:
        train.main(SHORT + ["--data", os.path.join(short_run, "text.txt"), "--out_dir", str(out), "--resume",
                            "--max_steps", "4"])
    message = str(stop.value.code)
    assert message.startswith("train.py: error: ") and "\n" not in message, message
    assert str(out / "last.pt") in message and needle in message, message
    assert "Traceback" not in capsys.readouterr().err and sorted(os.listdir(out)) == ["last.pt"]


def test_distill_from_a_hand_edited_teacher_names_the_field(tiny_ckpt, tmp_path, data_path, capsys):
    teacher = hand_edited(tiny_ckpt, tmp_path, lambda c: c["config"].update(block_size=64))
    with pytest.raises(SystemExit) as stop:
        train.main(["--distill_from", teacher, "--data", data_path, "--out_dir", str(tmp_path / "d"),
                    "--device", "cpu", "--distill_round_steps", "1"])
    assert f"{teacher}: config.block_size and the weights do not match" in str(stop.value.code)
    assert not os.path.exists(tmp_path / "d")


def test_a_copied_checkpoint_loads_unchanged(tiny_ckpt, tmp_path):
    """The checks refuse edits, not copies: the same bytes elsewhere load."""
    shutil.copy(tiny_ckpt, tmp_path / "copy.pt")
    assert read_checkpoint(str(tmp_path / "copy.pt"))["chars"] == read_checkpoint(tiny_ckpt)["chars"]


@pytest.fixture(scope="module")
def student(tiny_ckpt, tmp_path_factory):
    """The tiny model stored as a distilled student is: with a recommended step count of 5."""
    path = str(tmp_path_factory.mktemp("student") / "student.pt")
    write_checkpoint({**read_checkpoint(tiny_ckpt), "sampler": {"steps": 5}}, path)
    return path


def test_generate_takes_the_checkpoints_step_count_as_sample_py_does(student, capsys):
    from checkpoint import load_model
    from corpus import decode
    from sampler import SamplerConfig, default_steps, generate, make_canvas, plan_generation
    model, chars, _ = load_model(student)
    assert model.sampler_defaults == {"steps": 5}
    canvas = make_canvas("KING:", 30, chars, 1, "cpu")
    out, nfe = generate(model, canvas, SamplerConfig(), seed=0)
    assert nfe == 5 and generate(model, canvas, seed=0)[1] == 5, "no config: the defaults, with the stored steps"
    assert generate(model, canvas, SamplerConfig(steps=7), seed=0)[1] == 7, "steps given: they win"
    adaptive = SamplerConfig.from_options(model.sampler_defaults, threshold=0.9)
    assert sum(b.steps.n_steps for b in plan_generation(model, canvas, adaptive, 0).blocks) == 25, \
        "a threshold: at most one pass per character, no step count"
    assert default_steps(200, model) == 5 and default_steps(1024, model) == 20, \
        "the stored count is per 256 characters: a long text gets as many passes per character"
    sample.main(["--ckpt", student, "--prompt", "KING:", "--length", "30", "--seed", "0", "--device", "cpu"])
    assert capsys.readouterr().out == decode(out[0].tolist(), chars) + "\n", "the same text as sample.py"


def test_a_model_whose_checkpoint_stores_no_step_count_keeps_the_default(tiny_model):
    from sampler import PASSES_PER_256, SamplerConfig, default_steps
    model, _ = tiny_model
    assert model.sampler_defaults == {} and SamplerConfig.from_options(model.sampler_defaults) == SamplerConfig()
    assert default_steps(100, model) == PASSES_PER_256 and default_steps(1024, model) == 4 * PASSES_PER_256
