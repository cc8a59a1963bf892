"""What the command-line programs share: their common arguments (model,
tokenizer, threads, sampling), the default model, terminal text handling,
the error line, and a progress display.

Each program's ``main`` stays in its own module (``python -m
rwkv_cpp.generate``, ``.chat``, ``.perplexity``, ``.compare``,
``.embed_stats``, ``.quantize``); this module is below all of them and
imports none.
"""

import os
import sys
import time

from . import tokenizers
from ._defaults import default_model_path
from .sampling import SamplingParams

# -- arguments --------------------------------------------------------------


def add_tokenizer_argument(parser):
    parser.add_argument("--tokenizer", default=None, help="override the model's tokenizer: %s"
                        % ", ".join(tokenizers.NAMES))


def add_threads_argument(parser, what="compute threads"):
    parser.add_argument("--threads", type=int, default=None, help="%s (default: all CPUs)" % what)


def add_quiet_argument(parser, help="no progress bar"):
    parser.add_argument("-q", "--quiet", action="store_true", help=help)


def add_model_arguments(parser):
    """``--model`` (default: the bundled demo model), ``--tokenizer``, ``--threads``."""
    parser.add_argument("--model", help="model file (.gguf or rwkv.cpp .bin); default: the bundled demo model")
    add_tokenizer_argument(parser)
    add_threads_argument(parser)


def add_sampling_arguments(parser, temperature=1.0, top_p=0.85):
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=temperature, help="0 = greedy (default %(default)s)")
    group.add_argument("--top-p", type=float, default=top_p, help="nucleus mass (default %(default)s)")
    group.add_argument("--top-k", type=int, default=0, help="keep the k most probable tokens; 0 = all")
    group.add_argument("--presence-penalty", type=float, default=0.2, help="alpha_presence (default %(default)s)")
    group.add_argument("--frequency-penalty", type=float, default=0.2, help="alpha_frequency (default %(default)s)")
    group.add_argument("--penalty-decay", type=float, default=0.996, help="alpha_decay (default %(default)s)")
    group.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")


def sampling_from_args(args, stop=()):
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          alpha_presence=args.presence_penalty, alpha_frequency=args.frequency_penalty,
                          alpha_decay=args.penalty_decay, stop=tuple(stop), seed=args.seed)


def resolve_model_path(args):
    """``--model``, else the default model; None (after a message) if neither."""
    path = args.model or default_model_path()
    if path is None:
        print("error: no model: pass --model PATH (a .gguf file; convert official "
              "checkpoints with python -m rwkv_cpp.convert)", file=sys.stderr)
    return path


# -- text and errors ----------------------------------------------------------


def argument_text(arg):
    """A command-line argument as text; undecodable bytes become U+FFFD."""
    raw = os.fsencode(arg)
    text = raw.decode("utf-8", errors="replace")
    if text != arg:
        print("warning: invalid UTF-8 in the prompt was replaced by U+FFFD", file=sys.stderr)
    return text


def use_replacing_stdout():
    """Lets stdout print any text (unencodable characters are replaced)."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")


def report_error(exc):
    """Prints ``error: ...`` on stderr; returns the exit status 1."""
    print("error: %s" % exc, file=sys.stderr)
    return 1


# -- progress -----------------------------------------------------------------


class Progress:
    """A minimal progress display on stderr: a bar on a terminal, a line
    every 10% otherwise (so logs stay readable).  ``update`` is a
    ``progress(fraction)`` callback of the library's functions."""

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
