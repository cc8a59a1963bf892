"""A minimal progress display on stderr: a bar on a terminal, a line every
10% otherwise (so logs stay readable)."""

import sys
import time


class Progress:
    def __init__(self, label, stream=None, enabled=True):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, fraction, extra=""):
        if not self.enabled:
            return
        fraction = min(max(float(fraction), 0.0), 1.0)
        elapsed = time.perf_counter() - self.start
        if self.tty:
            width = 30
            filled = int(round(width * fraction))
            self.stream.write("\r%s [%s%s] %3d%% %5.1fs %s" % (
                self.label, "#" * filled, "." * (width - filled), 100 * fraction, elapsed, extra))
            self.stream.flush()
        else:
            decile = int(fraction * 10)
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write("%s: %3d%% (%.1fs) %s\n" % (self.label, 100 * fraction, elapsed, extra))
                self.stream.flush()

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
