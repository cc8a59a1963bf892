"""A chat on the command line, in the spirit of ChatRWKV.

    python -m rwkv_cpp.chat [-m MODEL.gguf] [--temp T --top-p P --seed S ...]

Each line read from stdin is a message or a command (``+help`` lists them).
A message becomes a turn ``User: MESSAGE\\n\\nAssistant:`` (World-tokenizer
models; older models use a persona format, configurable with ``--user``,
``--bot`` and ``--intro``); the reply streams until a blank line.  On a
terminal the input line has editing and history (``readline``).  Ctrl-C
during a reply stops it and returns to the prompt, the conversation kept as
of the last complete token; Ctrl-C at the prompt or Ctrl-D ends the chat
with a summary.  The model file is memory-mapped; a start banner (stderr),
``+help`` and the summary report the memory, ``--verbose`` the speed of
each reply.
"""

import argparse
import dataclasses
import os
import re
import sys

import numpy as np

from . import state_file, tokenizers
from ._cli import (InterruptFlag, add_ctx_size_argument, add_initial_state_argument, add_max_tokens_argument,
                   add_model_arguments, add_sampling_arguments, banner, cancellable, check_output_folder,
                   memory_mib, note_ctx_size, open_model, read_text, resolve_model_path, sampling_from_args,
                   timings, use_replacing_stdout)
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
  ++ (or +)        retry the last reply or generation
  +++              continue the last free generation
  +save NAME       save the conversation's state to NAME.state in the state folder
  +load NAME       load a conversation state saved with +save
  +help            this help and the peak memory use
  +exit            quit (as do Ctrl-D and Ctrl-C at the prompt)
Ctrl-C during a reply stops it; the conversation goes on from what was said."""

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
    """Peak resident memory of this process, in MiB."""
    return memory_mib()[1]


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
    ``model`` is a ``Model`` or a ``Context``.  ``interrupt``: an
    ``InterruptFlag`` (the default) that a reply checks after each piece
    (Ctrl-C stops it there); ``report(generation)``: called after each
    generation (the speed report of ``--verbose``).  ``replies``,
    ``tokens_generated`` and ``generate_seconds`` count the session's
    generations; ``last_generation`` is the latest."""

    def __init__(self, model, tokenizer, persona, sampling, max_tokens, state_dir, write, error,
                 initial_state=None, *, interrupt=None, report=None):
        self.interrupt = interrupt if interrupt is not None else InterruptFlag()
        self.report = report
        self.replies = self.tokens_generated = 0
        self.generate_seconds = 0.0
        self.last_generation = None
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
        except KeyboardInterrupt:
            # Ctrl-C before a reply started (reading the prompt): nothing changed
            self.write("\n(interrupted)\n")
        return True

    def _dispatch(self, line):
        command, _, argument = line.partition(" ")
        argument = argument.strip()
        simple = {"+help": self.show_help, "+reset": self.reset, "++": self.retry, "+": self.retry,
                  "+++": self.continue_free}
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
        """Generates for ``call``, streaming; updates the chat or the free
        state.  Ctrl-C while the prompt is read raises KeyboardInterrupt with
        nothing changed; during the reply it stops after the current piece,
        and the conversation continues from the tokens generated so far."""
        sampling = dataclasses.replace(call.sampling, seed=int(self.rng.integers(1 << 62)),
                                       stop=(TURN_END,) if call.kind == "chat" else ())
        generation = generate(self.model, call.prompt, max_tokens=self.max_tokens, sampling=sampling,
                              state=call.state, logits=call.logits, tokenizer=self.tokenizer)
        with self.interrupt as flag:
            if call.kind == "chat":
                self.write(self.persona.bot + self.persona.sep)
            for piece in generation:
                self.write(piece)
                if flag.is_set:
                    break
            self.write("\n")
            self._last_call = call
            if call.kind == "chat":
                self.state, self.logits = self._end_turn(generation)
            else:
                self._last_free = generation
            self._count(generation)
            interrupted = flag.is_set
        if interrupted:
            self.write("(interrupted)\n")
        if self.report is not None:
            self.report(generation)

    def _count(self, generation):
        self.last_generation = generation
        self.replies += 1
        self.tokens_generated += len(generation.tokens)
        self.generate_seconds += generation.generate_seconds

    def summary(self):
        """One line: replies, tokens, speed, peak memory."""
        rate = self.tokens_generated / self.generate_seconds if self.generate_seconds > 0 else 0.0
        return "%d replies, %d tokens generated (%.1f tokens/s); peak memory (RSS): %.1f MiB" % (
            self.replies, self.tokens_generated, rate, peak_rss_mib())

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


def terminal_lines(prompt):
    """Lines typed on a terminal, read by ``input`` with line editing and
    history when the standard ``readline`` module exists (not on Windows);
    ends at Ctrl-D.  Ctrl-C raises KeyboardInterrupt."""
    try:
        import readline  # noqa: F401 (importing it gives input() editing and history)
    except ImportError:
        pass
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")
    while True:
        try:
            yield input(prompt)
        except EOFError:
            return


def _writer(stream):
    def write(text):
        stream.write(text)
        stream.flush()
    return write


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m rwkv_cpp.chat", description="Chat with an RWKV model.",
        epilog="On a terminal: line editing and history (arrow keys); Ctrl-C stops a reply, "
               "Ctrl-C at the prompt or Ctrl-D quits.  +help lists the commands.")
    add_model_arguments(parser)
    add_max_tokens_argument(parser, 300, "longest reply")
    add_initial_state_argument(parser)
    parser.add_argument("--state-dir", default=".", help="folder of +save/+load (default: the current one)")
    parser.add_argument("--user", help="the user's name in turns (default User, or Bob for 20B models)")
    parser.add_argument("--bot", help="the bot's name in turns (default Assistant, or Alice for 20B models)")
    parser.add_argument("--intro", help="text before the first turn ('@FILE' reads a file)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="after each reply, its speed (prompt and generated tokens/s) and memory on stderr")
    add_ctx_size_argument(parser)
    add_sampling_arguments(parser, temperature=1.0, top_p=0.7)
    return parser.parse_args(argv)


def _intro_text(value):
    if value is not None and value.startswith("@"):
        return read_text(value[1:])
    return value


def _start(args, path, stdout, stderr):
    """``(model, session)`` after the banner; raises on a bad argument or model."""
    write, error = _writer(stdout), (lambda text: _writer(stderr)("error: %s\n" % text))
    check_output_folder(args.state_dir, "--state-dir")
    model, seconds = open_model(Model, path, args.threads, args.packed_cache)
    try:
        tokenizer = tokenizers.for_model(model, args.tokenizer)
        persona = persona_for(tokenizer.name, args.user, args.bot, _intro_text(args.intro))
        report = (lambda g: _writer(stderr)(timings(g) + "\n")) if args.verbose else None
        start = None if args.initial_state is None else state_file.initial_state(args.initial_state, model)
        session = ChatSession(model, tokenizer, persona, sampling_from_args(args), args.max_tokens,
                              args.state_dir, write, error, start, report=report)
    except BaseException:
        model.close()
        raise
    _writer(stderr)(banner("rwkv_cpp chat", model, seconds, tokenizer) + "\n")
    return model, session


def run(args, stdin, stdout, stderr):
    """The chat loop; returns the exit status."""
    write = _writer(stdout)
    note_ctx_size(args)
    path = resolve_model_path(args)
    if path is None:
        return 2
    try:
        model, session = _start(args, path, stdout, stderr)
    except (OSError, ValueError, RWKVError) as exc:
        _writer(stderr)("error: %s\n" % exc)
        return 1
    with model:
        write("+help lists the commands; Ctrl-C stops a reply; Ctrl-D or Ctrl-C at the prompt quits.\n")
        tty = stdin.isatty()
        if tty:
            lines = terminal_lines("%s%s " % (session.persona.user, session.persona.sep))
        else:
            lines = read_lines(stdin.buffer, lambda text: _writer(stderr)("warning: %s\n" % text))
        try:
            for line in lines:
                if not session.handle(line):
                    break
        except KeyboardInterrupt:
            pass  # Ctrl-C at the prompt: quit
        if tty:
            write("\n")  # the cursor may still be after the prompt
    _writer(stderr)(session.summary() + "\n")
    return 0


@cancellable()
def main(argv=None):
    args = parse_args(argv)
    use_replacing_stdout()
    return run(args, sys.stdin, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
