"""A pytest plugin that writes each test's CPU seconds (all phases, the test process plus the child
processes it waited for), so a suite's cost can be measured on a shared machine.

    PYTHONPATH=benchmarks PYTEST_CPU_OUT=cpu.txt python -m pytest -p pytest_cpu

The file's first line gives the total over the tests and over the session (collection included);
then one line per test, most expensive first: CPU seconds, wall seconds, test id. Children that
were not waited for (daemons) are not counted.
"""

from __future__ import annotations

import os
import resource
import time

import pytest

_rows: dict[str, tuple[float, float]] = {}
_start = 0.0


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pytest_sessionstart(session) -> None:
    global _start
    _start = _cpu()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall = _cpu(), time.time()
    yield
    _rows[item.nodeid] = (_cpu() - cpu, time.time() - wall)


def pytest_sessionfinish(session, exitstatus) -> None:
    total = sum(cpu for cpu, _ in _rows.values())
    lines = [f"tests {total:.1f} s CPU; session {_cpu() - _start:.1f} s CPU (collection included)"]
    lines += [f"{cpu:7.2f} {wall:7.2f}  {name}" for name, (cpu, wall) in sorted(_rows.items(), key=lambda r: -r[1][0])]
    with open(os.environ.get("PYTEST_CPU_OUT", "pytest-cpu.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
