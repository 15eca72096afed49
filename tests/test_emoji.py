"""The embedded real dataset: splits, licences, idempotence."""

import json

from alchemist_pl.data import iter_samples
from alchemist_pl.emoji import EMOJI_SETS, build_emoji_dataset, caption_split


def test_manifest_counts_and_licences(emoji_dir):
    manifest = json.loads((emoji_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["train"]["samples"] > 15_000
    assert counts["val"]["samples"] > 500 and counts["test"]["samples"] > 500
    for name in EMOJI_SETS:
        lic = manifest["sets"][name]["license"]
        assert lic["spdx"] and lic["url"], name
        assert name in (emoji_dir / "LICENSES.md").read_text()
    assert all(len(h) == 64 for h in manifest["shards"].values())


def test_test_captions_unseen_in_training(emoji_dir):
    captions = {split: {r.caption for r in iter_samples(emoji_dir / split)} for split in ("train", "val", "test")}
    assert not captions["test"] & captions["train"]
    assert not captions["val"] & captions["train"]
    assert all(caption_split(c, 0.06, 0.06) == "test" for c in captions["test"])


def test_build_is_idempotent(emoji_dir):
    before = {p: p.stat().st_mtime_ns for p in emoji_dir.rglob("*.tar")}
    assert build_emoji_dataset(emoji_dir) == emoji_dir
    assert before == {p: p.stat().st_mtime_ns for p in emoji_dir.rglob("*.tar")}


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    with pytest.raises(RuntimeError, match=r"needs the npm client.*apt-get install npm"):
        build_emoji_dataset(tmp_path / "emoji")
    assert not (tmp_path / "emoji").exists()
