"""Shared fixtures: the real embedded emoji dataset (built once) and composed Hydra configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DATA_DIR = Path(os.environ.get("ALCHEMIST_TEST_DATA", ROOT / "data"))
#: the smoke slice of the real data with planted web-style noise: 512 samples, 30% corrupted, ground truth
PLANTED_SLICE = ("debug=smoke", "logger=csv", "corruption=web", "corruption.pool_size=600")


def compose_run(out, *overrides, base=PLANTED_SLICE):
    """The real config with ``base`` + overrides, the shared test data and outputs in ``out``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=[*base, f"paths.data_dir={DATA_DIR}", f"paths.output_dir={out}", *overrides])


@pytest.fixture(scope="session")
def emoji_dir() -> Path:
    """The real emoji dataset (npm packages rendered to 32 px), built on first use and cached."""
    from alchemist_pl.emoji import build_emoji_dataset

    return build_emoji_dataset(DATA_DIR / "emoji")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return DATA_DIR / "cache"


@pytest.fixture
def make_cfg(tmp_path, emoji_dir):
    """Compose the real config with overrides; outputs go to tmp_path, data to the shared dataset."""

    def _make(*overrides: str, output_dir: Path | None = None):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            return compose(
                "config",
                overrides=[
                    f"paths.data_dir={DATA_DIR}",
                    f"paths.output_dir={output_dir or tmp_path}",
                    *overrides,
                ],
            )

    return _make


@pytest.fixture(scope="session")
def small_split(emoji_dir, cache_dir):
    """The first 96 samples of the real D_val split, loaded at 16 px (fast rater/bilevel tests)."""
    from alchemist_pl.data import load_split

    return load_split(emoji_dir / "val", resolution=16, cache_dir=cache_dir, limit=96)


@pytest.fixture(scope="session")
def real_samples(emoji_dir):
    """The first 6 real samples of the test split: (sample_id, png bytes, caption)."""
    from alchemist_pl.data import iter_samples

    out = []
    for raw in iter_samples(emoji_dir / "test"):
        out.append((raw.sample_id, raw.image, raw.caption))
        if len(out) == 6:
            return out
