"""A short run of every Python fuzz harness (tests/fuzz/), so that CI keeps
them working and catches a reader regressing on mutated inputs: every seed,
then a few hundred mutations of them with the dependency-free engine (fixed
random seed, so a failure reproduces).  Long, coverage-guided runs:
``python -m tests.fuzz.fuzz_<name> --seconds N`` (docs/RELIABILITY.md)."""

import importlib

import pytest

from fuzz import _runner

HARNESSES = ("pth", "safetensors", "legacy_bin", "llama_gguf", "state_file", "embed_stats", "tokenizers")
#: mutated inputs per harness: about a second each on a busy 2-core machine.
RUNS = 200


@pytest.mark.parametrize("name", HARNESSES)
def test_short_fuzz_run(name, tmp_path):
    module = importlib.import_module("fuzz.fuzz_" + name)
    _runner.set_workdir(str(tmp_path))
    try:
        seeds = list(module.seeds(str(tmp_path)))
        assert seeds, "a harness needs seed inputs"
        status = _runner.run_random(module.one_input, seeds, seconds=120.0, runs=len(seeds) + RUNS,
                                    artifacts=str(tmp_path / "artifacts"), seed=0)
    finally:
        _runner.set_workdir(None)
    assert status == 0, "a fuzz input broke the harness's contract; see the traceback above"

