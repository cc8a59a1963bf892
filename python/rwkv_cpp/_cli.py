"""What the command-line programs share: their common arguments (model,
tokenizer, threads, sampling, ``--version``, the llama.cpp-style short
flags), the default model, the checks of output paths, reading text files,
terminal text handling, the error line, Ctrl-C, the start banner and the
speed report, and a progress display.

Each program's ``main`` stays in its own module (``python -m
rwkv_cpp.generate``, ``.chat``, ``.perplexity``, ``.compare``,
``.embed_stats``, ``.quantize``); this module is below all of them and
imports none.
"""

import argparse
import contextlib
import functools
import os
import signal
import struct
import sys
import time

from tqdm import tqdm

from . import tokenizers
from ._defaults import default_model_path
from .convert.errors import OutputPathError  # noqa: F401 (re-exported for the programs)
from .convert.paths import EXIT_INTERRUPTED, check_output_folder, check_output_path  # noqa: F401
from .convert.formats import LEGACY_MAGIC
from .convert.gguf_constants import GGUF_MAGIC
from .convert.version import __version__, version_line
from .sampling import SamplingParams

# -- arguments --------------------------------------------------------------


def positive_int(text):
    """An argparse ``type``: an integer >= 1 (a count of tokens or passages)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be an integer >= 1, got %s" % text)
    return value


def add_version_argument(parser):
    """``--version``: prints the program and the package version."""
    parser.add_argument("--version", action="version", version=version_line(parser.prog))


def add_tokenizer_argument(parser):
    parser.add_argument("--tokenizer", default=None, help="override the model's tokenizer: %s"
                        % ", ".join(tokenizers.NAMES))


def add_threads_argument(parser, what="compute threads"):
    parser.add_argument("-t", "--threads", type=int, default=None, help="%s (default: all CPUs)" % what)


def add_quiet_argument(parser, help="no progress bar"):
    parser.add_argument("-q", "--quiet", action="store_true", help=help)


def add_model_option(parser, help="model file (.gguf or rwkv.cpp .bin); default: the bundled demo model"):
    parser.add_argument("-m", "--model", help=help)


PACKED_CACHE_HELP = ("keep the weights as laid out for this CPU's kernels in FILE: the first run writes it, "
                     "later runs of the same model file map it and load faster (see docs/KERNELS.md)")


def add_packed_cache_argument(parser):
    parser.add_argument("--packed-cache", metavar="FILE", help=PACKED_CACHE_HELP)


def add_model_arguments(parser):
    """``-m/--model`` (default: the bundled demo model), ``--tokenizer``,
    ``-t/--threads``, ``--packed-cache`` and ``--version``."""
    add_model_option(parser)
    add_tokenizer_argument(parser)
    add_threads_argument(parser)
    add_packed_cache_argument(parser)
    add_version_argument(parser)


def add_max_tokens_argument(parser, default, help="tokens to generate"):
    parser.add_argument("-n", "--max-tokens", "--n-predict", dest="max_tokens", type=int, default=default,
                        help="%s (default %%(default)s)" % help)


def add_ctx_size_argument(parser):
    """llama.cpp's ``-c/--ctx-size``, accepted so that its command lines
    run; see ``note_ctx_size``."""
    parser.add_argument("-c", "--ctx-size", type=int, default=None, metavar="N",
                        help="accepted for llama.cpp compatibility and ignored: RWKV has no context window "
                             "(its state has a fixed size), so any prompt length works")


def note_ctx_size(args):
    if getattr(args, "ctx_size", None) is not None:
        print("note: -c/--ctx-size has no effect: RWKV has no context window (a fixed-size state)",
              file=sys.stderr)


def add_initial_state_argument(parser):
    parser.add_argument("--initial-state", metavar="FILE",
                        help="start from this state instead of the model's initial one: a state file "
                             "(Model.save_state, chat's +save) or a state-tuned checkpoint (.pth or "
                             ".safetensors with blocks.N.att.time_state, alone or in a full checkpoint)")


def add_sampling_arguments(parser, temperature=1.0, top_p=0.85):
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", "--temp", type=float, default=temperature,
                       help="0 = greedy (default %(default)s)")
    group.add_argument("--top-p", type=float, default=top_p, help="nucleus mass (default %(default)s)")
    group.add_argument("--top-k", type=int, default=0, help="keep the k most probable tokens; 0 = all")
    group.add_argument("--presence-penalty", type=float, default=0.2, help="alpha_presence (default %(default)s)")
    group.add_argument("--frequency-penalty", type=float, default=0.2, help="alpha_frequency (default %(default)s)")
    group.add_argument("--penalty-decay", type=float, default=0.996, help="alpha_decay (default %(default)s)")
    group.add_argument("-s", "--seed", type=int, default=None, help="random seed (default: fresh)")


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


def is_model_file(path):
    """Whether ``path`` starts like a model file (GGUF or rwkv.cpp .bin);
    False when it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and (head == GGUF_MAGIC or struct.unpack("<I", head)[0] == LEGACY_MAGIC)


def split_model_positional(model_option, positionals, n_rest):
    """``(model path or None, other positionals)`` for the programs whose
    first positional argument is an optional model (``perplexity [MODEL]
    FILE``): ``-m/--model`` when given, else the first positional when
    there are more than ``n_rest`` or when it is a model file (read from
    its first bytes), else None (the default model)."""
    if model_option is not None:
        return model_option, list(positionals)
    if len(positionals) > n_rest or (positionals and is_model_file(positionals[0])):
        return positionals[0], list(positionals[1:])
    return None, list(positionals)


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


def read_text(path):
    """The text of a UTF-8 file; a ValueError naming the file and the first
    bad byte otherwise."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("%s is not UTF-8 text: byte 0x%02x at offset %d cannot be decoded"
                         % (os.fspath(path), data[exc.start], exc.start)) from None


# -- Ctrl-C -------------------------------------------------------------------


def cancellable(message="interrupted"):
    """Decorates a program's ``main``: Ctrl-C (KeyboardInterrupt) ends it
    with ``message`` on stderr and the exit status 130, no traceback.
    Outputs are written atomically, so none is left half-written."""
    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                sys.stderr.write("\n%s\n" % message)
                sys.stderr.flush()
                return EXIT_INTERRUPTED
        return run
    return wrap


class InterruptFlag:
    """While entered (``with flag:``), Ctrl-C (SIGINT) sets ``flag.is_set``
    instead of raising KeyboardInterrupt, so a loop can stop at a point of
    its choosing (the chat: after a complete token).  Outside, SIGINT
    raises as usual.  Only the main thread can install it; elsewhere it does
    nothing."""

    def __init__(self):
        self.is_set = False
        self._previous = None

    def _handler(self, signum, frame):
        self.is_set = True

    def __enter__(self):
        self.is_set = False
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False


# -- speed and memory ---------------------------------------------------------


def memory_mib():
    """``(resident, peak resident)`` memory of this process in MiB.  On
    Linux VmRSS and VmHWM of /proc/self/status (ru_maxrss would include the
    peak of a parent that forked us before exec); elsewhere the peak from
    getrusage for both."""
    found = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    if len(found) == 2:
        return found["VmRSS"], found["VmHWM"]
    try:
        import resource  # POSIX only
    except ImportError:
        return 0.0, 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB
    return peak, peak


def open_model(model_class, path, n_threads, packed_cache=None):
    """``(model, seconds to load it)``."""
    start = time.perf_counter()
    model = model_class(path, n_threads=n_threads, packed_cache=packed_cache)
    return model, time.perf_counter() - start


def banner(prog, model, load_seconds, tokenizer=None):
    """The one-line start banner: program and version, model file, RWKV
    version, type and shape, kernels, threads, load time, memory."""
    rss, _ = memory_mib()
    tok = ", tokenizer %s" % tokenizer.name if tokenizer is not None else ""
    threads = model.n_threads or os.cpu_count()  # 0: the library's default, every online CPU
    return ("%s %s: %s (RWKV-%s %s, %d layers x %d%s), kernels %s, %d threads, loaded in %.2f s, RSS %.1f MiB"
            % (prog, __version__, os.path.basename(model.path), model.version, model.type, model.n_layer,
               model.n_embed, tok, model.packed_kernels_name or "ggml", threads, load_seconds, rss))


def _rate(n, seconds):
    return "%d tokens in %.2f s (%.1f tokens/s)" % (n, seconds, n / seconds if seconds > 0 else float("inf"))


def timings(generation):
    """The speed report of a ``Generation``, as llama.cpp prints timings:
    prompt (prefill) and generated tokens per second, memory."""
    rss, peak = memory_mib()
    return "prompt: %s | generated: %s | RSS %.1f MiB (peak %.1f MiB)" % (
        _rate(len(generation.prompt_tokens), generation.prompt_seconds),
        _rate(len(generation.tokens), generation.generate_seconds), rss, peak)


# -- progress -----------------------------------------------------------------


class Progress:
    """Progress on stderr through tqdm: a bar on a terminal, an update at
    most every 10 s otherwise (so logs stay readable).  ``update`` is a
    ``progress(fraction)`` callback of the library's functions.  The bar
    appears at the first update, so an error found before the work starts
    is printed alone."""

    def __init__(self, label, stream=None, enabled=True):
        self._label = label
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._bar = None

    def _open(self):
        tty = hasattr(self._stream, "isatty") and self._stream.isatty()
        return tqdm(total=100, desc=self._label, file=self._stream, disable=not self._enabled, leave=True,
                    mininterval=0.1 if tty else 10.0,
                    bar_format="{desc} {bar:30} {percentage:3.0f}% {elapsed}{postfix}")

    def update(self, fraction, extra=""):
        if self._bar is None:
            self._bar = self._open()
        fraction = min(max(float(fraction), 0.0), 1.0)
        if extra:
            self._bar.set_postfix_str(extra, refresh=False)
        self._bar.update(100 * fraction - self._bar.n)

    def close(self):
        if self._bar is not None:
            self._bar.close()
