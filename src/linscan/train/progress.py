"""A one-line progress bar on stderr: step, loss, tokens/s, ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, start: int = 0, enabled: bool = True, stream=sys.stderr):
        self.total, self.start, self.enabled, self.stream = total, start, enabled, stream
        self.t0 = time.perf_counter()
        self.tokens = 0
        self.closed = False
        # a terminal gets one line redrawn in place; a log file a line every ~5% of the steps
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.every = max(1, (total - start) // 20)

    def update(self, step: int, tokens: int, **metrics) -> None:
        self.tokens += tokens
        if not self.enabled or (not self.tty and (step + 1 - self.start) % self.every and step + 1 != self.total):
            return
        elapsed = time.perf_counter() - self.t0
        done = step + 1 - self.start
        rate = self.tokens / max(elapsed, 1e-9)
        eta = elapsed / max(done, 1) * (self.total - step - 1)
        width = 24
        filled = int(width * (step + 1) / self.total)
        info = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        prefix = "\r" if self.tty else ""
        line = (f"{prefix}[{'#' * filled}{'.' * (width - filled)}] {step + 1}/{self.total} {info} "
                f"{rate:,.0f} tok/s ETA {_fmt(eta)}")
        self.stream.write(line if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line on a terminal; a second call does nothing (error paths close early)."""
        if self.enabled and self.tty and not self.closed:
            self.stream.write("\n")
            self.stream.flush()
        self.closed = True


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"
