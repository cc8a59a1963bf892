"""What the command-line programs share: their common arguments (model,
tokenizer, threads, sampling), the default model, terminal text handling,
the error line, and a progress display.

Each program's ``main`` stays in its own module (``python -m
rwkv_cpp.generate``, ``.chat``, ``.perplexity``, ``.compare``,
``.embed_stats``, ``.quantize``); this module is below all of them and
imports none.
"""

import argparse
import os
import sys

from tqdm import tqdm

from . import tokenizers
from ._defaults import default_model_path
from .sampling import SamplingParams

# -- arguments --------------------------------------------------------------


def positive_int(text):
    """An argparse ``type``: an integer >= 1 (a count of tokens or passages)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be an integer >= 1, got %s" % text)
    return value


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


def add_initial_state_argument(parser):
    parser.add_argument("--initial-state", metavar="FILE",
                        help="start from this state instead of the model's initial one: a state file "
                             "(Model.save_state, chat's +save) or a state-tuned checkpoint (.pth or "
                             ".safetensors with blocks.N.att.time_state, alone or in a full checkpoint)")


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
    """Progress on stderr through tqdm: a bar on a terminal, an update at
    most every 10 s otherwise (so logs stay readable).  ``update`` is a
    ``progress(fraction)`` callback of the library's functions."""

    def __init__(self, label, stream=None, enabled=True):
        stream = stream or sys.stderr
        tty = hasattr(stream, "isatty") and stream.isatty()
        self._bar = tqdm(total=100, desc=label, file=stream, disable=not enabled, leave=True,
                         mininterval=0.1 if tty else 10.0,
                         bar_format="{desc} {bar:30} {percentage:3.0f}% {elapsed}{postfix}")

    def update(self, fraction, extra=""):
        fraction = min(max(float(fraction), 0.0), 1.0)
        if extra:
            self._bar.set_postfix_str(extra, refresh=False)
        self._bar.update(100 * fraction - self._bar.n)

    def close(self):
        self._bar.close()
