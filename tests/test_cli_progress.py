"""cli.Progress: a progress line on terminals only, with an ETA, erased at the end."""
import io

from cli import Progress, format_seconds


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_silent_when_stderr_is_not_a_terminal():
    stream = io.StringIO()
    p = Progress("work", total=3, stream=stream, every=0)
    for _ in range(3):
        p.update()
    p.close()
    assert stream.getvalue() == ""


def test_progress_on_a_terminal_counts_and_erases_itself():
    stream = Terminal()
    p = Progress("scoring", total=4, stream=stream, every=0)
    p.update(2)
    assert "scoring 2/4 (50%)" in stream.getvalue() and "ETA" in stream.getvalue()
    p.update(2)
    assert "scoring 4/4 (100%)" in stream.getvalue()
    p.close()
    assert stream.getvalue().endswith("\r") and stream.getvalue().rsplit("\r", 2)[-2].strip() == ""


def test_progress_can_be_switched_off():
    stream = Terminal()
    p = Progress("work", total=2, stream=stream, enabled=False, every=0)
    p.update(2)
    assert stream.getvalue() == ""


def test_format_seconds_reads_as_a_duration():
    assert [format_seconds(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
