"""The stamp every benchmark result carries (the commit it ran at and the machine it ran on), and the
mean ± std cell of the results tables."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """``node: arch, N CPU cores, GPU or "no GPU", torch and Python versions; load average at start``."""
    import torch  # imported here so that scripts that only stamp do not pay for torch at import

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}, "
        f"Python {platform.python_version()}; load average at start {load}"
    )


def commit(*paths: str) -> str:
    """Short HEAD commit, with `` (+ uncommitted changes)`` when ``paths`` (default: the library and
    its configs) differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    status = ["git", "status", "--porcelain", *(paths or ("alchemist_pl", "conf"))]
    dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True)
    return head.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def mean_std(values, digits: int = 3) -> str:
    """A table cell over seeds: ``mean ± std`` (sample std, ddof 1) of the finite values with ``digits``
    decimals, ``x (n=1)`` for a single value, ``–`` for none (None and NaN are left out)."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f} (n=1)"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"
