"""The progress line: redrawn in place on a terminal, a line every ~5% in a log file."""

import io

from linscan.train.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_file_gets_twenty_lines_with_rate_and_eta():
    out = io.StringIO()
    bar = Progress(100, stream=out)
    for step in range(100):
        bar.update(step, 10, loss=1.5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 20 and "\r" not in out.getvalue()
    assert lines[-1].startswith("[" + "#" * 24 + "] 100/100 loss 1.5000") and "tok/s ETA 0:00" in lines[-1]


def test_terminal_redraws_one_line():
    out = Terminal()
    bar = Progress(10, start=5, stream=out)
    for step in range(5, 10):
        bar.update(step, 1)
    bar.close()
    assert out.getvalue().count("\r") == 5 and out.getvalue().endswith("\n") and "6/10" in out.getvalue()
