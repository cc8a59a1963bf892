"""The command line of text generation (the functions are in
``rwkv_cpp.generation``, re-exported here)::

    python -m rwkv_cpp.generate "The capital of France is" --model MODEL.gguf \\
        [--max-tokens N --temperature T --top-p P --top-k K --seed S --tokenizer NAME]
        [--initial-state FILE]

It is a module of its own so that ``import rwkv_cpp`` does not import it
(``python -m`` would then run a second copy).
"""

import argparse
import os
import sys

from ._cli import (add_initial_state_argument, add_model_arguments, add_sampling_arguments, argument_text,
                   report_error, resolve_model_path, sampling_from_args, use_replacing_stdout)
from ._model import Model
from .errors import RWKVError
from .state_file import initial_state
from .generation import STOP_MAX_TOKENS, STOP_STRING, STOP_TOKEN, Generation, generate

__all__ = ["Generation", "generate", "main", "STOP_MAX_TOKENS", "STOP_STRING", "STOP_TOKEN"]


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rwkv_cpp.generate", description="Generate text from a prompt.")
    parser.add_argument("prompt", help="the prompt ('-': read it from stdin)")
    add_model_arguments(parser)
    add_initial_state_argument(parser)
    parser.add_argument("--max-tokens", type=int, default=200, help="tokens to generate (default %(default)s)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    add_sampling_arguments(parser)
    args = parser.parse_args(argv)
    use_replacing_stdout()
    if args.prompt == "-":
        prompt = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    else:
        prompt = argument_text(args.prompt)
    path = resolve_model_path(args)
    if path is None:
        return 2
    try:
        sampling = sampling_from_args(args, args.stop)
        with Model(path, n_threads=args.threads) as model:
            state = None if args.initial_state is None else initial_state(args.initial_state, model)
            generation = generate(model, prompt, max_tokens=args.max_tokens, sampling=sampling,
                                  state=state, tokenizer=args.tokenizer)
            sys.stdout.write(prompt)
            for piece in generation:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
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
