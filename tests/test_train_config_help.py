"""train.py --help states every numeric flag's range (the table the flags are checked against)
and no path of this machine (--data's default was shown twice, once as an absolute path)."""
import pytest

import train
from train_config import RANGES, range_text


@pytest.fixture(scope="module")
def help_text():
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        train.main(["--help"])
    assert stop.value.code == 0
    return " ".join(out.getvalue().split())  # argparse wraps lines: compare word by word


def test_every_ranged_flag_states_its_range():
    from cli import ArgumentParser
    from train_config import add_train_flags
    parser = ArgumentParser()
    add_train_flags(parser)
    helps = {action.dest: action.help for action in parser._actions}
    for name, bounds in RANGES.items():
        assert range_text(*bounds) in helps[name], (name, helps[name])


def test_ranges_read_as_intervals():
    assert range_text(1, 64, True) == "in [1, 64]"
    assert range_text(0, 10, False) == "in (0, 10]"
    assert range_text(0, 2 ** 63 - 1, True) == "in [0, 2**63-1]"
    assert range_text(1, 10 ** 9, True) == "in [1, 10**9]"
    assert range_text(0, 0.99, True) == "in [0, 0.99]"


def test_help_shows_no_path_of_this_machine(help_text):
    from corpus import ROOT
    assert ROOT not in help_text
    assert help_text.count("data/tiny_shakespeare.txt") == 1
