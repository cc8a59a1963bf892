"""The command line shared by the Python fuzz harnesses.

``python -m tests.fuzz.fuzz_<name> [--seconds N] [--runs N] [--timeout S] [--engine E]
[--corpus DIR] [--artifacts DIR] [--seed S]``

Engines: ``atheris`` (coverage-guided libFuzzer, when the optional
``atheris`` package of the ``fuzz`` extra is installed; the default then) or
``random`` (a plain mutation loop over the seeds, no dependency).  Either
way the run starts from the harness's seed files, stops after ``--seconds``
or ``--runs``, and exits non-zero on the first input that raises an
exception outside the harness's contract or runs longer than ``--timeout``
seconds, after writing that input to ``--artifacts`` (default: the current
folder; atheris names it ``crash-<sha1>`` or ``timeout-<sha1>``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, List, Optional

OneInput = Callable[[bytes], None]

#: the folder where harnesses write the files they feed to the readers.
_workdir: Optional[str] = None


def set_workdir(path: Optional[str]) -> None:
    """Make the harnesses write their scratch files into ``path``."""
    global _workdir
    _workdir = path


def scratch_path(name: str) -> str:
    """A path in the scratch folder (set by the runner or the test)."""
    if _workdir is None:
        raise RuntimeError("no scratch folder: call set_workdir() first")
    return os.path.join(_workdir, name)

#: byte values that often sit on boundaries (sizes, signs, lengths).
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF)
_INTERESTING_32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x10000, 0xFFFF)


def mutate(data: bytes, rng: random.Random, pool: List[bytes]) -> bytes:
    """``data`` with 1 to 8 random edits: bit flips, boundary values, byte
    runs inserted, deleted or copied, truncation, splices from ``pool``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos % len(buf)] = rng.choice(_INTERESTING)
        elif op == 2:
            value = rng.choice(_INTERESTING_32).to_bytes(4, "little")
            buf[pos:pos + 4] = value
        elif op == 3:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4:
            del buf[pos:pos + rng.randint(1, 64)]
        elif op == 5 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start:start + rng.randint(1, 32)]
        elif op == 6:
            del buf[pos:]
        elif op == 7 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[pos:] = other[cut:]
    return bytes(buf)


def _report(data: bytes, artifacts: str) -> str:
    os.makedirs(artifacts, exist_ok=True)
    path = os.path.join(artifacts, "crash-" + hashlib.sha1(data).hexdigest())
    with open(path, "wb") as f:
        f.write(data)
    return path


class InputTimeout(BaseException):
    """One input ran longer than the time limit (a BaseException, so that
    no ``except Exception`` of the code under test can swallow it)."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise InputTimeout in the main thread after ``seconds`` (where the
    platform has interval timers; elsewhere no limit)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise InputTimeout("input took longer than %g s" % seconds)

    # an outer timer (pytest-timeout's, say) is put back with the time it
    # had left, so a limit per input does not cancel a limit per test
    previous = signal.signal(signal.SIGALRM, expire)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay > 0:
            left = max(outer_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def run_random(one_input: OneInput, seeds: List[bytes], seconds: float, runs: int,
               artifacts: str, seed: int, timeout: float = 10.0) -> int:
    """The dependency-free engine; returns the process exit status.  An
    input that raises or runs longer than ``timeout`` seconds is a failure."""
    rng = random.Random(seed)
    start, count = time.monotonic(), 0
    inputs = list(seeds)
    while (runs <= 0 or count < runs) and time.monotonic() - start < seconds:
        data = inputs[count] if count < len(seeds) else mutate(rng.choice(inputs), rng, inputs)
        try:
            with _time_limit(timeout):
                one_input(data)
        except (Exception, InputTimeout):
            traceback.print_exc()
            print("failing input written to %s" % _report(data, artifacts), file=sys.stderr)
            return 1
        count += 1
    print("#%d DONE random engine: %d executions in %.1f s, 0 failures"
          % (count, count, time.monotonic() - start), file=sys.stderr)
    return 0


def _instrument(atheris, prefixes) -> None:
    """Add coverage feedback to the functions and methods of the loaded
    modules named ``prefixes`` (and their submodules)."""
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        for value in list(vars(module).values()):
            members = vars(value).values() if inspect.isclass(value) else (value,)
            for item in members:
                item = getattr(item, "__func__", item)
                if inspect.isfunction(item) and item.__module__ == name:
                    atheris.instrument_func(item)


def run_atheris_child(one_input: OneInput, args) -> None:
    """Coverage-guided run with atheris; never returns (libFuzzer exits)."""
    import atheris

    options = [sys.argv[0], args.corpus, "-max_total_time=%d" % max(1, int(args.seconds)),
               "-timeout=%d" % max(1, int(args.timeout)), "-rss_limit_mb=4096", "-print_final_stats=1", "-seed=%d" % args.seed,
               "-artifact_prefix=%s" % os.path.join(os.path.abspath(args.artifacts), "")]
    if args.runs > 0:
        options.append("-runs=%d" % args.runs)
    _instrument(atheris, ("rwkv_cpp", "zipfile"))
    atheris.Setup(options, one_input)
    atheris.Fuzz()


def run_atheris(module: str, seed_dir: str, args) -> int:
    """Run atheris in a child process (libFuzzer ends its process with
    exit(), which skips Python's clean-up), in a corpus folder seeded with
    the seed files; print the number of executions it reports."""
    corpus = args.corpus or os.path.join(seed_dir, "corpus")
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(args.artifacts, exist_ok=True)
    for name in os.listdir(seed_dir):
        if name.startswith("seed-"):
            shutil.copy(os.path.join(seed_dir, name), corpus)
    command = [sys.executable, "-m", module, "--engine", "atheris-child", "--corpus", corpus,
               "--workdir", seed_dir, "--seconds", str(args.seconds), "--runs", str(args.runs),
               "--artifacts", args.artifacts, "--seed", str(args.seed), "--timeout", str(args.timeout)]
    done = None
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace") as child:
        for line in child.stderr:  # libFuzzer reports on stderr: pass it on as it comes
            sys.stderr.write(line)
            found = re.match(r"Done (\d+) runs in (\d+) second", line)
            done = found.groups() if found else done
    if done:
        print("#%s DONE atheris engine: %s executions in %s s, exit status %d"
              % (done[0], done[0], done[1], child.returncode), file=sys.stderr)
    return child.returncode


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def main(module: str, seeds: Callable[[str], List[bytes]], one_input: OneInput, argv=None) -> int:
    """Parse the command line and run the harness of ``module``."""
    parser = argparse.ArgumentParser(prog="python -m " + module, description="Fuzz " + module)
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit (default 60)")
    parser.add_argument("--runs", type=int, default=0, help="stop after this many inputs (0: no limit)")
    parser.add_argument("--engine", choices=("auto", "atheris", "random", "atheris-child"), default="auto")
    parser.add_argument("--corpus", help="atheris: a folder to keep the corpus in (default: a temporary one)")
    parser.add_argument("--artifacts", default=".", help="where a failing input is written")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds one input may take before it counts as a hang (default 10)")
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine == "atheris-child":
        set_workdir(args.workdir)
        run_atheris_child(one_input, args)
        return 0
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _atheris_available() else "random"
    seed_dir = tempfile.mkdtemp(prefix="rwkv_cpp_fuzz_")
    set_workdir(seed_dir)
    try:
        data = list(seeds(seed_dir))
        for i, item in enumerate(data):
            with open(os.path.join(seed_dir, "seed-%03d" % i), "wb") as f:
                f.write(item)
        if engine == "atheris":
            return run_atheris(module, seed_dir, args)
        return run_random(one_input, data, args.seconds, args.runs, args.artifacts, args.seed,
                          args.timeout)
    finally:
        shutil.rmtree(seed_dir, ignore_errors=True)
