"""train.py's flags and the rules a run must satisfy (train_config.py): both spellings of every
flag, the presets, the ranges, the options of each objective and of distillation, a flag the
run would ignore; each mistake one line naming the flag, through train.main(argv) in-process,
before anything is written."""
import os
from dataclasses import fields

import pytest

import train
from cli import ArgumentParser, UserError
from conftest import TINY, assert_one_line_error, train_error
from model import ModelConfig
from train_config import HELP, TrainConfig, add_train_flags, check_config, configs_from_args


def flag_fields():
    return [f for cls in (ModelConfig, TrainConfig) for f in fields(cls) if HELP.get(f.name) is not None]


@pytest.mark.parametrize("field", [f for f in flag_fields() if "_" in f.name], ids=lambda f: f.name)
def test_every_flag_takes_both_spellings(field):
    """The README says --n_layer 4 or --n-layer 4, for every field: the booleans too (--distill_ema)."""
    p = ArgumentParser()
    add_train_flags(p)
    for name in (field.name, field.name.replace("_", "-")):
        if field.type is bool:
            assert getattr(p.parse_args([f"--{name}"]), field.name) is True
            assert getattr(p.parse_args([f"--no-{name}"]), field.name) is False
        else:
            assert getattr(p.parse_args([f"--{name}", str(field.default)]), field.name) == field.default


def test_distill_ema_in_either_spelling_reaches_the_distillation_rules(capsys, tmp_path):
    for flag in ("--distill_ema", "--distill-ema"):
        message = train_error(capsys, ["--distill_from", str(tmp_path / "t.pt"), flag])
        assert "--distill_ema needs --ema > 0" in message


def test_distill_from_names_the_objective_that_was_given(capsys, tmp_path):
    message = train_error(capsys, ["--distill_from", str(tmp_path / "t.pt"), "--objective", "block"])
    assert "drop --objective block" in message and "--objective ar" not in message
    assert "--block_len" not in message, "the objective is refused: its own options are not judged"


def test_mixed_with_a_batch_of_one_is_refused_up_front(capsys):
    message = train_error(capsys, ["--objective", "mixed", "--batch_size", "1"])
    assert "--objective mixed needs --batch_size >= 2" in message and "--lr" not in message
    check_config(ModelConfig(objective="mixed"), TrainConfig(batch_size=2))  # one row of each kind


def test_a_context_of_one_character_is_out_of_range(capsys):
    assert "--block_size must be in [2, 8192], got 1" in train_error(capsys, ["--block_size", "1"])


@pytest.mark.parametrize("flags, needle", [
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--muon_lr", "inf"], "--muon_lr must be a finite number"),
    (["--grad_clip", "nan"], "--grad_clip must be a finite number"),
    (["--grad_clip", "-1"], "--grad_clip must be in (0"),
    (["--weight_decay", "nan"], "--weight_decay"),
    (["--weight_decay", "inf"], "--weight_decay"),
    (["--min_lr_ratio", "nan"], "--min_lr_ratio"),
    (["--min_lr_ratio", "-5"], "--min_lr_ratio must be in [0, 1]"),
    (["--logit_softcap", "nan"], "--logit_softcap must be a finite number"),
    (["--beta2", "1.5"], "--beta2"),
    (["--beta2", "nan"], "--beta2"),
    (["--n_embd", "0"], "--n_embd must be in [2"),
    (["--n_embd", "-128"], "--n_embd"),
    (["--batch_size", "100000000"], "--batch_size"),
    (["--dropout", "1.0"], "--dropout"),
    (["--eval_mc", "0"], "--eval_mc"),
    (["--seed", "-1"], "--seed"),
])
def test_every_numeric_setting_is_range_checked(capsys, tmp_path, data_path, flags, needle):
    message = train_error(capsys, TINY + ["--data", data_path, "--out_dir", str(tmp_path)] + flags)
    assert needle in message
    assert not os.listdir(tmp_path), "nothing is written"


@pytest.mark.parametrize("flags, needle", [
    (["--ar_fraction", "0.3"], "--ar_fraction applies to --objective mixed only"),
    (["--optimizer", "adamw", "--muon_lr", "0.1"], "--muon_lr applies to --optimizer muon only"),
    (["--schedule", "cosine", "--cooldown", "0.2"], "--cooldown applies to --schedule wsd only"),
    (["--resume", "--overwrite"], "--overwrite and --resume contradict each other"),
])
def test_a_flag_the_run_would_ignore_is_refused(capsys, tmp_path, data_path, flags, needle):
    message = train_error(capsys, TINY + ["--data", data_path, "--out_dir", str(tmp_path)] + flags)
    assert needle in message
    assert not os.listdir(tmp_path), "nothing is written"


def test_distillation_refuses_a_shape_flag(capsys, tmp_path, data_path, tiny_ckpt):
    message = train_error(capsys, ["--distill_from", tiny_ckpt, "--data", data_path, "--out_dir", str(tmp_path),
                                   "--device", "cpu", "--block_size", "16"])
    assert "--block_size does not apply with --distill_from" in message and not os.listdir(tmp_path)


def test_a_shape_flag_with_distillation_is_named_before_its_value_is_judged(capsys, tmp_path, data_path):
    # --n_embd 128 with the default 6 heads broke the rotary rule, and that was the answer
    message = train_error(capsys, ["--distill_from", str(tmp_path / "teacher.pt"), "--data", data_path, "--out_dir",
                                   str(tmp_path / "run"), "--device", "cpu", "--n_embd", "128"])
    assert "--n_embd does not apply with --distill_from" in message and "rotary" not in message
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("flags, needle", [
    (["--objective", "gan"], "--objective"),
    (["--n_embd", "100", "--n_head", "3"], "n_head"),
    (["--eval-only"], "unrecognized arguments"),  # evaluate.py's job
    (["--device", "cuda:3", "--data", "DATA"], "not available"),
    (["--time_budget", "-1"], "--time_budget"),
    (["--lr", "nan"], "--lr"),
    (["--block_prob", "0.9"], "--prefix_prob + --block_prob"),
    (["--vocab_size", "70"], "unrecognized arguments"),  # the data decides it
    (["--causal"], "unrecognized arguments"),  # --objective ar
])
def test_bad_train_input_is_one_line(data_path, flags, needle, run_main):
    flags = [data_path if f == "DATA" else f for f in flags]
    assert_one_line_error(run_main("train.py", *flags), "train.py: error:", needle)


@pytest.mark.parametrize("flags, needle", [(dict(t_dist="beta"), "--t_dist"), (dict(loss_weights="1/t"), "--loss_weights"),
                                           (dict(t_dist="clipped", t_min=0.9, t_max=0.5), "--t_min"),
                                           (dict(t_min=0.2), "--t_dist clipped"), (dict(ar_fraction=1.0), "--ar_fraction"),
                                           (dict(objective="dual"), "--objective")])
def test_bad_lever_options_are_one_line_errors_naming_the_flag(flags, needle):
    with pytest.raises(UserError, match=needle):
        model_flags = {k: v for k, v in flags.items() if k in ModelConfig.__dataclass_fields__}
        train_flags = {k: v for k, v in flags.items() if k not in model_flags}
        check_config(ModelConfig(**model_flags), TrainConfig(**train_flags))


@pytest.mark.parametrize("block_len", ["0", "5", "64"])
def test_bad_block_len_is_a_one_line_error(block_len, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--block_size", "32", "--objective", "block", "--block_len", block_len, "--device", "cpu"])
    assert str(e.value.code).count("\n") == 0 and "--block_len must divide --block_size 32" in str(e.value.code)


def test_block_options_need_the_block_objective(run_main):
    r = run_main("train.py", "--block_len", "4")
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "need --objective block" in r.stderr


def test_cpu_block_preset_is_a_valid_block_run():
    p = ArgumentParser()
    add_train_flags(p)
    mc, tc, _ = configs_from_args(p.parse_args(["--preset", "cpu-block"]))
    check_config(mc, tc)
    assert mc.objective == "block" and mc.block_size % mc.block_len == 0 and tc.time_budget <= 10
