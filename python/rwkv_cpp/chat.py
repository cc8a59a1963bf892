"""A chat on the command line, in the spirit of ChatRWKV.

    python -m rwkv_cpp.chat --model MODEL.gguf [--temperature T --top-p P --seed S ...]

Each line read from stdin is a message or a command (``+help`` lists them).
A message becomes a turn ``User: MESSAGE\\n\\nAssistant:`` (World-tokenizer
models; older models use a persona format, configurable with ``--user``,
``--bot`` and ``--intro``); the reply streams until a blank line.  The model
file is memory-mapped; ``+help`` and the end of the session report the peak
resident memory.
"""

import argparse
import dataclasses
import os
import re
import resource
import sys

import numpy as np

from . import state_file, tokenizers
from ._cli import (add_initial_state_argument, add_model_arguments, add_sampling_arguments, resolve_model_path,
                   sampling_from_args, use_replacing_stdout)
from ._model import Model
from .errors import RWKVError
from .generation import STOP_STRING, generate
from .state_file import StateFileError

HELP = """commands:
  MESSAGE          chat (write \\n for a new line; -temp=X and -top_p=Y set them for this message)
  +reset           forget the conversation
  +gen TEXT        free generation from TEXT (the initial state; the chat is kept)
  +i INSTRUCTION   free generation of a response to an instruction
  +qa QUESTION     free generation of an expert answer to a question
  ++               retry the last reply or generation
  +++              continue the last free generation
  +save NAME       save the conversation's state to NAME.state in the state folder
  +load NAME       load a conversation state saved with +save
  +help            this help and the peak memory use
  +exit            quit (as does end of input)"""

QA_PROMPT = "\nQ & A\n\nQuestion:\n{question}\n\nDetailed Expert Answer:\n"
INSTRUCTION_PROMPT = "\nInstruction: {instruction}\n\nResponse:"
FREE_PROMPT = "\n{text}"
#: a reply ends at a blank line
TURN_END = "\n\n"
_STATE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
_INLINE_SETTINGS = {"temp": "temperature", "top_p": "top_p"}

LEGACY_INTRO = (
    "The following is a coherent and detailed conversation between {bot}, a friendly and "
    "knowledgeable assistant, and {user}. {bot} answers {user}'s questions accurately and in "
    "full, and says so when she does not know.\n\n"
    "{user}{sep} Hello {bot}, how are you today?\n\n"
    "{bot}{sep} Hi {user}! I am well, thank you. What would you like to talk about?\n\n")


@dataclasses.dataclass
class Persona:
    """How a chat turn is written: ``{user}{sep} MESSAGE\\n\\n{bot}{sep}``,
    after an optional ``intro`` that sets the scene."""

    user: str = "User"
    bot: str = "Assistant"
    sep: str = ":"
    intro: str = ""

    def turn(self, message):
        return "%s%s %s%s%s%s" % (self.user, self.sep, message, TURN_END, self.bot, self.sep)


def persona_for(tokenizer_name, user=None, bot=None, intro=None):
    """``User``/``Assistant`` without intro for World and byte models; a
    persona (``Bob``/``Alice`` with an intro) for 20B models."""
    if tokenizer_name == "20B":
        persona = Persona(user or "Bob", bot or "Alice")
        persona.intro = LEGACY_INTRO.format(user=persona.user, bot=persona.bot, sep=persona.sep)
    else:
        persona = Persona(user or "User", bot or "Assistant")
    if intro is not None:
        persona.intro = intro
    return persona


def peak_rss_mib():
    """Peak resident memory of this process, in MiB.  On Linux VmHWM of
    /proc/self/status (ru_maxrss would include the peak of a parent that
    forked us before exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def clean_message(text):
    """A user's line as turn text: ``\\n`` escapes become new lines, blank
    lines are dropped (a blank line would end the turn)."""
    text = text.replace("\\n", "\n").replace("\r", "")
    return re.sub(r"\n\s*\n+", "\n", text).strip()


def inline_settings(message, sampling):
    """``(message without -temp=/-top_p=, sampling with them applied)``."""
    changes = {}

    def take(match):
        changes[_INLINE_SETTINGS[match.group(1)]] = float(match.group(2))
        return ""

    message = re.sub(r"-(temp|top_p)=([-+0-9.eE]+)", take, message)
    if changes:
        sampling = dataclasses.replace(sampling, **changes)
    return re.sub(r" {2,}", " ", message).strip(), sampling


@dataclasses.dataclass
class _Call:
    """A generation that ``++`` can replay: its prompt and starting point."""

    kind: str  # "chat" or "free"
    prompt: str
    state: object
    logits: object
    sampling: object


class ChatSession:
    """The chat's logic, apart from the terminal: ``handle(line)`` runs one
    line; output goes to ``write`` (text pieces), errors to ``error``.
    ``model`` is a ``Model`` or a ``Context``."""

    def __init__(self, model, tokenizer, persona, sampling, max_tokens, state_dir, write, error,
                 initial_state=None):
        self.model = model
        self.initial_state = initial_state  # None: the model's own
        self.tokenizer = tokenizer
        self.persona = persona
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.state_dir = state_dir
        self.write = write
        self.error = error
        self.rng = np.random.default_rng(sampling.seed)
        self._intro = self._prefill(persona.intro)
        self.state, self.logits = self._intro
        self._last_call = None
        self._last_free = None

    # -- lines --------------------------------------------------------------

    def handle(self, line):
        """Runs one input line; returns False when the chat should end."""
        line = line.strip()
        if not line:
            return True
        if line in ("+exit", "+quit"):
            return False
        try:
            self._dispatch(line)
        except (ValueError, OSError, RWKVError) as exc:
            self.error(str(exc))
        return True

    def _dispatch(self, line):
        command, _, argument = line.partition(" ")
        argument = argument.strip()
        simple = {"+help": self.show_help, "+reset": self.reset, "++": self.retry, "+++": self.continue_free}
        with_argument = {"+gen": self.free_generation, "+i": self.instruction, "+qa": self.question,
                         "+save": self.save, "+load": self.load}
        if command in simple and not argument:
            simple[command]()
        elif command in with_argument:
            if not argument:
                raise ValueError("%s needs an argument (+help lists the commands)" % command)
            with_argument[command](argument)
        elif line.startswith("+"):
            raise ValueError("unknown command %s (+help lists the commands)" % command)
        else:
            self.chat(line)

    # -- commands -----------------------------------------------------------

    def show_help(self):
        self.write(HELP + "\npeak memory (RSS): %.1f MiB\n" % peak_rss_mib())

    def reset(self):
        self.state, self.logits = self._intro
        self._last_call = self._last_free = None
        self.write("(the conversation was reset)\n")

    def chat(self, line):
        message, sampling = inline_settings(clean_message(line), self.sampling)
        if not message:
            raise ValueError("empty message")
        self._run(_Call("chat", self.persona.turn(message), self.state, self.logits, sampling))

    def free_generation(self, text):
        self._free(FREE_PROMPT.format(text=clean_message(text)))

    def instruction(self, text):
        self._free(INSTRUCTION_PROMPT.format(instruction=clean_message(text)))

    def question(self, text):
        self._free(QA_PROMPT.format(question=clean_message(text)))

    def retry(self):
        if self._last_call is None:
            raise ValueError("nothing to retry yet")
        self._run(self._last_call)

    def continue_free(self):
        if self._last_free is None:
            raise ValueError("+++ continues a free generation (+gen, +i, +qa); there is none yet")
        self._run(_Call("free", "", self._last_free.state, self._last_free.logits, self._last_call.sampling))

    def save(self, name):
        path = self._state_path(name)
        if self.state is None:
            raise ValueError("nothing to save: the conversation has not started")
        state_file.save(path, self.model, self.state, self.logits)
        self.write("(saved the conversation to %s)\n" % path)

    def load(self, name):
        path = self._state_path(name)
        if not os.path.exists(path):
            raise ValueError("no saved state %r (%s)" % (name, path))
        try:
            self.state, self.logits = state_file.load(path, self.model)
        except StateFileError as exc:
            raise ValueError("cannot load %r: %s" % (name, exc)) from None
        self._last_call = self._last_free = None
        self.write("(loaded the conversation from %s)\n" % path)

    # -- helpers ------------------------------------------------------------

    def _free(self, prompt):
        self._run(_Call("free", prompt, self.initial_state, None, self.sampling))

    def _run(self, call):
        """Generates for ``call``, streaming; updates the chat or the free state."""
        sampling = dataclasses.replace(call.sampling, seed=int(self.rng.integers(1 << 62)),
                                       stop=(TURN_END,) if call.kind == "chat" else ())
        generation = generate(self.model, call.prompt, max_tokens=self.max_tokens, sampling=sampling,
                              state=call.state, logits=call.logits, tokenizer=self.tokenizer)
        if call.kind == "chat":
            self.write(self.persona.bot + self.persona.sep)
        for piece in generation:
            self.write(piece)
        self.write("\n")
        self._last_call = call
        if call.kind == "chat":
            self.state, self.logits = self._end_turn(generation)
        else:
            self._last_free = generation

    def _end_turn(self, generation):
        """The state after a reply, at a turn boundary: a reply cut short
        (no blank line) is followed by one, so the next turn starts cleanly."""
        if generation.stop_reason == STOP_STRING:
            return generation.state, generation.logits
        ids = self.tokenizer.encode(TURN_END)
        logits, state = self.model.eval_sequence(ids, generation.state)
        return state, logits

    def _prefill(self, text):
        if not text:
            return self.initial_state, None
        logits, state = self.model.eval_sequence(self.tokenizer.encode(text), self.initial_state)
        return state, logits

    def _state_path(self, name):
        if not _STATE_NAME.match(name):
            raise ValueError("state names are letters, digits, '_', '-' and '.' (at most 64), got %r" % name)
        return os.path.join(self.state_dir, name + ".state")


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def read_lines(stream, warn):
    """Lines of a binary stream as text; invalid UTF-8 becomes U+FFFD."""
    for raw in iter(stream.readline, b""):
        text = raw.decode("utf-8", errors="replace")
        if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
            warn("invalid UTF-8 in the input was replaced by U+FFFD")
        yield text


def _writer(stream):
    def write(text):
        stream.write(text)
        stream.flush()
    return write


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m rwkv_cpp.chat", description="Chat with an RWKV model.")
    add_model_arguments(parser)
    add_initial_state_argument(parser)
    parser.add_argument("--max-tokens", type=int, default=300, help="longest reply (default %(default)s)")
    parser.add_argument("--state-dir", default=".", help="folder of +save/+load (default: the current one)")
    parser.add_argument("--user", help="the user's name in turns (default User, or Bob for 20B models)")
    parser.add_argument("--bot", help="the bot's name in turns (default Assistant, or Alice for 20B models)")
    parser.add_argument("--intro", help="text before the first turn ('@FILE' reads a file)")
    add_sampling_arguments(parser, temperature=1.0, top_p=0.7)
    return parser.parse_args(argv)


def _intro_text(value):
    if value is not None and value.startswith("@"):
        with open(value[1:], encoding="utf-8") as f:
            return f.read()
    return value


def run(args, stdin, stdout, stderr):
    """The chat loop; returns the exit status."""
    write, error = _writer(stdout), (lambda text: _writer(stderr)("error: %s\n" % text))
    path = resolve_model_path(args)
    if path is None:
        return 2
    try:
        model = Model(path, n_threads=args.threads)
    except (OSError, ValueError, RWKVError) as exc:
        error(str(exc))
        return 1
    with model:
        try:
            tokenizer = tokenizers.for_model(model, args.tokenizer)
            persona = persona_for(tokenizer.name, args.user, args.bot, _intro_text(args.intro))
            start = None if args.initial_state is None else state_file.initial_state(args.initial_state, model)
            session = ChatSession(model, tokenizer, persona, sampling_from_args(args), args.max_tokens,
                                  args.state_dir, write, error, start)
        except (OSError, ValueError, RWKVError) as exc:
            error(str(exc))
            return 1
        write("rwkv_cpp chat: %s, RWKV-%s, tokenizer %s.  +help lists the commands.\n"
              % (os.path.basename(path), model.version, tokenizer.name))
        prompt = "%s%s " % (persona.user, persona.sep) if stdin.isatty() else ""
        warn = lambda text: _writer(stderr)("warning: %s\n" % text)  # noqa: E731
        write(prompt)
        for line in read_lines(stdin.buffer, warn):
            if not session.handle(line):
                break
            write(prompt)
    stderr.write("peak memory (RSS): %.1f MiB\n" % peak_rss_mib())
    return 0


def main(argv=None):
    args = parse_args(argv)
    use_replacing_stdout()
    return run(args, sys.stdin, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
