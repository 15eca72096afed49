"""The ``threads`` key: every stage runs with that many torch CPU threads (null: torch's default),
the count reaches the processes a stage starts (OMP_NUM_THREADS), and both are restored after."""

import os

import pytest
import torch

from alchemist_pl.resume import run_identity
from alchemist_pl.stages import STAGES, run


@pytest.fixture
def threads_seen(monkeypatch):
    """Every stage replaced by one that records the thread count and OMP_NUM_THREADS it runs with;
    torch starts at 3 threads and OMP_NUM_THREADS unset (both restored after the test)."""
    seen = []
    for name in STAGES:
        monkeypatch.setitem(
            STAGES, name, lambda cfg: seen.append((torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))) or {}
        )
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield seen
    torch.set_num_threads(before)


@pytest.mark.parametrize("experiment", ["rate", "score", "prune", "baseline", "pipeline"])
def test_every_stage_runs_with_the_configured_threads(make_cfg, threads_seen, experiment):
    run(make_cfg(f"+experiment={experiment}", "debug=smoke", "~logger", "threads=1", "scores_path=unused.parquet"))
    assert threads_seen == [(1, "1")]
    assert torch.get_num_threads() == 3 and "OMP_NUM_THREADS" not in os.environ  # restored


def test_null_threads_leaves_torch_default(make_cfg, threads_seen):
    cfg = make_cfg("+experiment=rate", "debug=smoke", "~logger")
    assert cfg.threads is None  # the default
    run(cfg)
    assert threads_seen == [(3, None)]


@pytest.mark.parametrize("value", ["0", "-2", "true", "two", "1.5"])
def test_bad_threads_named(make_cfg, threads_seen, value):
    with pytest.raises(ValueError, match="threads must be a positive integer or null"):
        run(make_cfg("+experiment=rate", "debug=smoke", "~logger", f"threads={value}"))
    assert threads_seen == []


def test_a_rerun_with_other_threads_resumes():
    """The thread count says how a run is executed, not what it computes: it is not part of the
    identity a resumed run must match."""
    assert run_identity({"seed": 0, "threads": 1}, {}) == run_identity({"seed": 0, "threads": None}, {})
    assert run_identity({"seed": 0}, {}) != run_identity({"seed": 1}, {})
