"""The embedded real dataset: splits, licences, idempotence."""

import json
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest

from alchemist_pl.caption_concepts import caption_concept
from alchemist_pl.emoji import EMOJI_SETS, FORMAT_VERSION, build_emoji_dataset, caption_split

SPLITS = ("train", "val", "test")


def _sample_json(split_dir: Path) -> list[dict]:
    """The ``txt`` caption and ``json`` metadata of every sample of a split, read from its shards."""
    out = []
    for shard in sorted(split_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name, member in members.items():
                if name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    meta["caption"] = tar.extractfile(members[name[: -len("json")] + "txt"]).read().decode()
                    out.append(meta)
    return out


def test_manifest_counts_and_licences(emoji_dir):
    manifest = json.loads((emoji_dir / "manifest.json").read_text())
    assert manifest["params"]["format_version"] == FORMAT_VERSION
    counts = manifest["counts"]
    assert counts["train"]["samples"] > 15_000
    assert counts["val"]["samples"] > 500 and counts["test"]["samples"] > 500
    for name in EMOJI_SETS:
        lic = manifest["sets"][name]["license"]
        assert lic["spdx"] and lic["url"], name
        assert name in (emoji_dir / "LICENSES.md").read_text()
    assert all(len(h) == 64 for h in manifest["shards"].values())


def test_no_test_concept_has_a_sibling_in_train_or_val(emoji_dir):
    samples = {split: _sample_json(emoji_dir / split) for split in SPLITS}
    splits_of = defaultdict(lambda: defaultdict(set))  # kind -> key -> splits
    for split, metas in samples.items():
        for meta in metas:
            splits_of["caption concept"][caption_concept(meta["caption"])].add(split)
            splits_of["stored concept"][meta["concept"]].add(split)
            for seq in meta["code_points"]:  # the same emoji (skin tones removed) in any set
                splits_of["code points"][seq].add(split)
    for kind, keys in splits_of.items():
        straddling = {k: sorted(s) for k, s in keys.items() if len(s) > 1}
        assert not straddling, (kind, list(straddling.items())[:5])
    assert len(splits_of["code points"]) > 2000
    assert all(caption_split(m["concept"], 0.06, 0.06) == "test" for m in samples["test"])
    fixture = (Path(__file__).parent / "data" / "emoji_captions.txt").read_text().splitlines()
    assert sorted({m["caption"] for metas in samples.values() for m in metas}) == fixture


def test_build_is_idempotent(emoji_dir):
    before = {p: p.stat().st_mtime_ns for p in emoji_dir.rglob("*.tar")}
    assert build_emoji_dataset(emoji_dir) == emoji_dir
    assert before == {p: p.stat().st_mtime_ns for p in emoji_dir.rglob("*.tar")}


def test_a_build_of_an_older_format_is_an_error(tmp_path):
    old = tmp_path / "emoji"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"params": {"format_version": FORMAT_VERSION - 1}}))
    with pytest.raises(RuntimeError, match=rf"built with other parameters.*'format_version': {FORMAT_VERSION - 1}"):
        build_emoji_dataset(old)


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    with pytest.raises(RuntimeError, match=r"needs the npm client.*apt-get install npm"):
        build_emoji_dataset(tmp_path / "emoji")
    assert not (tmp_path / "emoji").exists()
