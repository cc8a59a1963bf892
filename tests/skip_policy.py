"""The suite's skip policy (a pytest plugin loaded by conftest.py).

A skipped test is a test that did not run: a missing oracle (torch, the
official package, the shared data folder) or a CPU without the packed
kernels would otherwise let the suite go green without checking anything.
So, when the policy is on, a skip whose reason is not on ALLOWED_SKIPS below
is reported as a failure, with its reason.

The policy is on with ``--fail-on-skip``, or when the environment variable
``CI`` is ``true`` or ``1`` (the convention of CI services; ``.ci/run`` sets
it).  Off, skips stay skips and ``-rs`` (pyproject.toml) prints each reason.
"""

from __future__ import annotations

import os
import re

import pytest

# Each entry: a regular expression matched against the skip reason, and why
# that skip can be legitimate on a CI machine.  Keep this list short: a skip
# belongs here only when the test cannot run on a correctly set-up machine.
ALLOWED_SKIPS = (
    # AVX-512 is optional on x86-64; the AVX2 kernels and the reference
    # kernels are still tested, and AVX2 itself is not on this list.
    (r"this CPU cannot run the avx512 kernels", "CPU feature"),
    # pickle records os.system as posix.system only on POSIX systems.
    (r"os\.system is posix\.system only on POSIX", "operating system"),
    # llama.cpp is built (minutes, from the llama-cpp-python sdist) only by
    # `python -m bench.bench_peers`, never by the tests; CI does not build it.
    (r"llama\.cpp peer not built here", "optional peer build"),
)


def policy_on(config) -> bool:
    return bool(config.getoption("fail_on_skip")) or os.environ.get("CI", "").lower() in ("true", "1")


def skip_reason(report) -> str:
    """The reason of a skipped test or collection report."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def is_allowed(reason: str) -> bool:
    return any(re.search(pattern, reason) for pattern, _ in ALLOWED_SKIPS)


def fail_if_not_allowed(report, config) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not policy_on(config):
        return
    reason = skip_reason(report)
    if is_allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = (
        "skipped, but the skip policy (CI=true or --fail-on-skip) allows only the skips "
        "listed in tests/skip_policy.py; reason: %s" % reason
    )


def pytest_addoption(parser):
    parser.addoption(
        "--fail-on-skip", action="store_true", default=False,
        help="report every skip not on tests/skip_policy.py's allow-list as a failure (on when CI=true)",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_if_not_allowed(outcome.get_result(), item.config)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    fail_if_not_allowed(outcome.get_result(), collector.config)
