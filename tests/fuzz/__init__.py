"""Python fuzz harnesses of rwkv_cpp's file readers and tokenizers.

Each ``fuzz_<name>.py`` module defines ``seeds(folder)`` (tiny valid inputs,
made at run time), ``one_input(data)`` (feeds one input to the code under
test; an exception other than the library's own escapes, which is a
failure) and runs as ``python -m tests.fuzz.fuzz_<name> --seconds N`` from
the repository root (``_runner.py`` describes the options).
"""
