"""The programs as a user at a terminal meets them: each runs in a
pseudo-terminal (the standard ``pty`` module), and Ctrl-C is typed as the
character ^C, which the terminal turns into SIGINT for the program.

- chat: Ctrl-C during a generation stops it and returns to the prompt (no
  traceback), the conversation goes on (``+++`` continues the stopped text,
  a message gets a reply); Ctrl-C at the prompt ends the chat with its
  summary on a line of its own; Ctrl-D likewise.  The input line has
  readline's history (the up arrow recalls the previous line).
- generate: Ctrl-C stops it with exit status 130, the text so far and the
  speed report, no traceback.

The state after an interrupted reply is checked in-process (where the
tokens generated are known) against the Python API: the state after the
prompt, the tokens generated and the turn's end.
"""

import os
import pty
import select
import signal
import sys
import time

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp import tokenizers
from rwkv_cpp._cli import InterruptFlag
from rwkv_cpp.chat import TURN_END, ChatSession, Persona
from rwkv_cpp.convert import convert_state_dict, make_rwkv4_state_dict
from rwkv_cpp.sampling import SamplingParams

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")

TIMEOUT_S = 90
CTRL_C, CTRL_D, UP = b"\x03", b"\x04", b"\x1b[A"


class Terminal:
    """``python -m MODULE ARGS`` in a pseudo-terminal: ``send`` types,
    ``expect`` waits for output, ``finish`` reads to the end and returns
    the exit status."""

    def __init__(self, module, *args, cwd):
        pid, fd = pty.fork()
        if pid == 0:  # the child: the terminal is its stdin, stdout and stderr
            try:
                os.chdir(cwd)
                # as a shell at a terminal starts a program: Ctrl-C's signal
                # not ignored, even where the tests run as a background job
                # (which ignores SIGINT and passes that on to its children)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.execv(sys.executable, [sys.executable, "-m", module, *map(str, args)])
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = b""
        self.seen = 0

    def send(self, data):
        os.write(self.fd, data)

    def _read(self, deadline):
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError("timed out; the terminal shows:\n%s" % self.text())
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the program has closed the terminal
            data = b""
        self.output += data
        return data

    def expect(self, pattern, timeout=TIMEOUT_S):
        """Waits until ``pattern`` appears after what earlier calls matched."""
        deadline = time.monotonic() + timeout
        while pattern not in self.output[self.seen:]:
            if not self._read(deadline):
                raise AssertionError("ended before %r; the terminal shows:\n%s" % (pattern, self.text()))
        self.seen = self.output.index(pattern, self.seen) + len(pattern)

    def expect_output(self, n_bytes, timeout=TIMEOUT_S):
        """Waits until ``n_bytes`` more bytes came after what was matched."""
        deadline = time.monotonic() + timeout
        while len(self.output) - self.seen < n_bytes:
            if not self._read(deadline):
                raise AssertionError("ended; the terminal shows:\n%s" % self.text())
        self.seen = len(self.output)

    def finish(self, timeout=TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)

    def text(self):
        return self.output.decode("utf-8", errors="replace")

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except OSError:
            pass


@pytest.fixture
def terminal(tmp_path):
    started = []

    def start(module, *args):
        started.append(Terminal(module, *args, cwd=tmp_path))
        return started[-1]

    yield start
    for t in started:
        t.kill()


@pytest.mark.timeout(240)
def test_chat_ctrl_c_stops_a_generation_and_the_chat_goes_on(terminal):
    chat = terminal("rwkv_cpp.chat", "--threads", 1, "-n", 100000, "--temp", 0, "--verbose")
    chat.expect(b"Bob: ")
    chat.send(b"+gen ROMEO:\r")
    chat.expect(b"+gen ROMEO:\r\n")  # the terminal's echo
    chat.expect_output(40)  # the generation is running: some text came
    chat.send(CTRL_C)
    chat.expect(b"(interrupted)")
    chat.expect(b"Bob: ")  # back at the prompt
    chat.send(b"Hello\r")  # a message gets a reply (greedy: a short line, then a blank line)
    chat.expect(b"Alice:")
    chat.expect(b"Bob: ")
    chat.send(b"+++\r")  # continues the stopped free generation: its state was kept
    chat.expect(b"+++\r\n")
    chat.expect_output(40)
    chat.send(CTRL_C)
    chat.expect(b"(interrupted)")
    chat.expect(b"Bob: ")
    chat.send(CTRL_C)  # at the prompt: quit
    chat.expect(b"replies, ")
    assert chat.finish() == 0
    text = chat.text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "rwkv_cpp chat %s: rwkv4-shakespeare" % rwkv_cpp.__version__ in text  # the banner
    assert text.count("tokens/s) | generated: ") == 3  # --verbose: a speed line per generation
    summary = text[text.rindex("Bob: "):]
    assert summary.startswith("Bob: \r\n") and "3 replies" in summary and "peak memory (RSS): " in summary


@pytest.mark.timeout(120)
def test_chat_ctrl_d_quits_and_readline_recalls_lines(terminal):
    chat = terminal("rwkv_cpp.chat", "--threads", 1, "-n", 4)
    chat.expect(b"Bob: ")
    chat.send(b"+help\r")
    chat.expect(b"commands:")
    chat.expect(b"Bob: ")
    chat.send(UP + b"\r")  # the up arrow recalls +help (without readline: "unknown command ^[[A")
    chat.expect(b"commands:")
    chat.expect(b"Bob: ")
    chat.send(CTRL_D)
    chat.expect(b"0 replies, 0 tokens generated")
    assert chat.finish() == 0
    assert "unknown command" not in chat.text() and "Traceback" not in chat.text()


@pytest.mark.timeout(120)
def test_chat_ctrl_c_while_loading_exits_130(terminal, tmp_path):
    # a stand-in for a slow start: Ctrl-C while the program reads its intro from a FIFO
    fifo = tmp_path / "intro"
    os.mkfifo(fifo)
    chat = terminal("rwkv_cpp.chat", "--threads", 1, "--intro", "@%s" % fifo)
    deadline = time.monotonic() + TIMEOUT_S
    while True:  # opening the writing end fails (ENXIO) until the chat has opened the FIFO to read it
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline, chat.text()
            time.sleep(0.05)
    time.sleep(0.2)  # the chat now waits in read()
    chat.send(CTRL_C)
    chat.expect(b"interrupted")
    assert chat.finish() == 130
    os.close(writer)
    assert "Traceback" not in chat.text()


@pytest.mark.timeout(120)
def test_generate_ctrl_c_exits_130_without_traceback(terminal):
    gen = terminal("rwkv_cpp.generate", "-p", "ROMEO:", "-n", 100000, "--ignore-eos", "--temp", 0, "-t", 1)
    gen.expect(b"ROMEO:")
    gen.expect_output(40)
    gen.send(CTRL_C)
    gen.expect(b"interrupted")
    assert gen.finish() == 130
    text = gen.text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "rwkv_cpp generate %s: rwkv4-shakespeare" % rwkv_cpp.__version__ in text
    assert "| generated: " in text and "tokens/s" in text


# ---------------------------------------------------------------------------
# the state after an interrupted reply, in-process
# ---------------------------------------------------------------------------


class StopAfter(InterruptFlag):
    """An InterruptFlag that sets itself after ``n`` pieces were written (a
    Ctrl-C at that moment)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def written(self):
        self.n -= 1
        if self.n == 0:
            self.is_set = True


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("term") / "m.gguf"
    convert_state_dict(make_rwkv4_state_dict(256, 32, 2, seed=5), str(path), "FP32", tokenizer="bytes")
    with rwkv_cpp.Model(path, n_threads=1) as model:
        yield model


def test_interrupted_reply_keeps_the_state_of_its_last_token(byte_model, tmp_path):
    tok = tokenizers.get("bytes")
    flag = StopAfter(4)  # the bot's name, then 3 pieces of the reply
    out = []

    def write(text):
        out.append(text)
        flag.written()

    sampling = SamplingParams(temperature=0, alpha_presence=0, alpha_frequency=0)
    session = ChatSession(byte_model, tok, Persona(), sampling, 50, str(tmp_path), write, out.append,
                          interrupt=flag)
    session.handle("Hello")
    generated = session.last_generation.tokens
    assert out[-1] == "(interrupted)\n" and 3 <= len(generated) < 50
    # the API's state after the turn's prompt, the tokens generated and the turn's end
    ids = tok.encode(Persona().turn("Hello")) + generated + tok.encode(TURN_END)
    logits, state = byte_model.eval_sequence(ids)
    np.testing.assert_allclose(session.state, state, rtol=0, atol=1e-5)
    np.testing.assert_allclose(session.logits, logits, rtol=0, atol=1e-5)
    # the tokens are the greedy continuation: the same as an uninterrupted reply's first ones
    full = byte_model.generate(Persona().turn("Hello"), max_tokens=len(generated), sampling=sampling,
                               stop_at_eos=False)
    assert full.read() is not None and full.tokens == generated
    # and the chat goes on
    flag.n = -1
    session.handle("Again")
    assert out[-1] == "\n" and session.replies == 2


def test_plus_is_another_reply(byte_model, tmp_path):
    """``+`` (ChatRWKV's spelling) retries the last reply, as ``++`` does."""
    tok = tokenizers.get("bytes")
    sampling = SamplingParams(temperature=0, alpha_presence=0, alpha_frequency=0)
    replies = {}
    for retry in ("+", "++"):
        out = []
        session = ChatSession(byte_model, tok, Persona(), sampling, 12, str(tmp_path), out.append, out.append)
        session.handle("Hello")
        session.handle(retry)
        replies[retry] = out
        assert session.replies == 2 and "unknown command" not in "".join(out)
    assert replies["+"] == replies["++"]
