"""The command line of text generation (the functions are in
``rwkv_cpp.generation``, re-exported here)::

    python -m rwkv_cpp.generate "The capital of France is" [-m MODEL.gguf] \\
        [-n N --temp T --top-p P --top-k K --seed S --tokenizer NAME] [--initial-state FILE]

The text goes to stdout; a start banner and the speed (prompt and generated
tokens per second, memory) go to stderr (``-q`` leaves them out).  Ctrl-C
stops the generation: the text so far stays, the exit status is 130.

It is a module of its own so that ``import rwkv_cpp`` does not import it
(``python -m`` would then run a second copy).
"""

import argparse
import os
import sys

from ._cli import (add_ctx_size_argument, add_initial_state_argument, add_max_tokens_argument, add_model_arguments,
                   add_sampling_arguments, argument_text, banner, cancellable, note_ctx_size, open_model,
                   report_error, resolve_model_path, sampling_from_args, timings, use_replacing_stdout)
from ._model import Model
from .errors import RWKVError
from .state_file import initial_state
from .generation import STOP_MAX_TOKENS, STOP_STRING, STOP_TOKEN, Generation, generate

__all__ = ["Generation", "generate", "main", "STOP_MAX_TOKENS", "STOP_STRING", "STOP_TOKEN"]


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m rwkv_cpp.generate", description="Generate text from a prompt.",
        epilog="The text goes to stdout; the start banner and the speed report to stderr. "
               "Ctrl-C stops the generation (exit status 130).")
    parser.add_argument("prompt", nargs="?", help="the prompt ('-': read it from stdin)")
    parser.add_argument("-p", "--prompt", dest="prompt_option", metavar="PROMPT",
                        help="the prompt, as llama.cpp takes it (instead of the positional one)")
    add_model_arguments(parser)
    add_max_tokens_argument(parser, 200)
    add_initial_state_argument(parser)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    parser.add_argument("-q", "--quiet", action="store_true", help="no start banner, no speed report")
    add_ctx_size_argument(parser)
    add_sampling_arguments(parser)
    args = parser.parse_args(argv)
    if (args.prompt is None) == (args.prompt_option is None):
        parser.error("give the prompt once: as an argument or with -p/--prompt")
    if args.prompt is None:
        args.prompt = args.prompt_option
    return args


def _stream(generation, prompt):
    sys.stdout.write(prompt)
    sys.stdout.flush()
    try:
        for piece in generation:
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()


@cancellable()
def main(argv=None):
    args = parse_args(argv)
    use_replacing_stdout()
    note_ctx_size(args)
    if args.prompt == "-":
        prompt = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    else:
        prompt = argument_text(args.prompt)
    path = resolve_model_path(args)
    if path is None:
        return 2
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        sampling = sampling_from_args(args, args.stop)
        model, seconds = open_model(Model, path, args.threads, args.packed_cache)
        with model:
            say(banner("rwkv_cpp generate", model, seconds))
            state = None if args.initial_state is None else initial_state(args.initial_state, model)
            generation = generate(model, prompt, max_tokens=args.max_tokens, sampling=sampling, state=state,
                                  tokenizer=args.tokenizer, stop_at_eos=not args.ignore_eos)
            try:
                _stream(generation, prompt)
            finally:
                say(timings(generation))
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ValueError, OSError, RWKVError) as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
