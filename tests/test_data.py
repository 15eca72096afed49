"""Readers on real emoji samples: both layouts, and bad input named by sample."""

import io
import json

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from alchemist_pl.data import DataError, load_split


def _write_shard(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


def _wds_samples(real):
    return [{"__key__": k, "png": png, "txt": cap} for k, png, cap in real]


def test_webdataset_roundtrip(tmp_path, real_samples):
    (tmp_path / "shards").mkdir()
    _write_shard(tmp_path / "shards" / "a-000000.tar", _wds_samples(real_samples))
    ds = load_split(tmp_path / "shards", resolution=16, cache_dir=None)
    assert ds.sample_ids == [k for k, _, _ in real_samples]
    assert ds.captions == [c for _, _, c in real_samples]
    item = ds[0]
    assert item["image"].shape == (3, 16, 16)
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["states"].shape == (16, 384) and item["pooled"].shape == (384,)
    # the caption embedding is the caption's: identical captions share it, different differ
    assert not np.allclose(ds[0]["pooled"].numpy(), ds[1]["pooled"].numpy())


def test_image_folder_matches_webdataset(tmp_path, real_samples):
    folder = tmp_path / "folder"
    folder.mkdir()
    rows = []
    for k, png, cap in real_samples:
        (folder / f"{k}.png").write_bytes(png)
        rows.append(json.dumps({"file_name": f"{k}.png", "text": cap}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "shards").mkdir()
    _write_shard(tmp_path / "shards" / "a.tar", _wds_samples(real_samples))
    a = load_split(folder, 16, None)
    b = load_split(tmp_path / "shards", 16, None)
    assert a.sample_ids == [f"{k}.png" for k, _, _ in real_samples]
    assert a.captions == b.captions
    assert (a.images == b.images).all()


def _corrupt(png: bytes) -> bytes:
    return png[: len(png) // 3]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda s: {**s, "png": _corrupt(s["png"])}, r"sample '{key}': cannot decode image"),
        (lambda s: {k: v for k, v in s.items() if k != "txt"}, r"sample '{key}' has no caption"),
        (lambda s: {**s, "txt": "   "}, r"sample '{key}' has an empty caption"),
        (lambda s: {**s, "txt": b"caf\xe9"}, r"sample '{key}': caption .* is not UTF-8"),
        (lambda s: {k: v for k, v in s.items() if k != "png"} | {"txt": "x"}, r"sample '{key}' has no image"),
    ],
    ids=["corrupt-image", "missing-caption", "empty-caption", "non-utf8", "no-image"],
)
def test_bad_sample_named(tmp_path, real_samples, mutate, match):
    samples = _wds_samples(real_samples)
    key = samples[3]["__key__"]
    samples[3] = mutate(samples[3])
    (tmp_path / "s").mkdir()
    _write_shard(tmp_path / "s" / "bad-000000.tar", samples)
    with pytest.raises(DataError, match=match.format(key=key)) as e:
        load_split(tmp_path / "s", 16, None)
    assert "bad-000000.tar" in str(e.value)


def test_duplicate_sample_id(tmp_path, real_samples):
    (tmp_path / "s").mkdir()
    s = _wds_samples(real_samples)
    _write_shard(tmp_path / "s" / "a.tar", s[:3])
    _write_shard(tmp_path / "s" / "b.tar", s[2:4])
    with pytest.raises(DataError, match=f"duplicate sample_id '{s[2]['__key__']}'"):
        load_split(tmp_path / "s", 16, None)


def test_image_folder_missing_file_and_caption(tmp_path, real_samples):
    k, png, cap = real_samples[0]
    (tmp_path / "ok.png").write_bytes(png)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "a cat"}) + "\n")
    with pytest.raises(DataError, match=r"metadata.jsonl:1: sample 'gone.png': image file .* does not exist"):
        load_split(tmp_path, 16, None)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "ok.png"}) + "\n")
    with pytest.raises(DataError, match=r"sample 'ok.png' has no caption"):
        load_split(tmp_path, 16, None)


def test_wrong_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "nope", 16, None)
    with pytest.raises(DataError, match="neither"):
        load_split(tmp_path, 16, None)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "I;16"])
def test_image_modes_decode_to_rgb(tmp_path, real_samples, mode):
    k, png, cap = real_samples[0]
    im = Image.open(io.BytesIO(png))
    im = (
        im.convert("RGBA" if mode == "RGBA" else "RGB").convert(mode)
        if mode != "I;16"
        else im.convert("L").convert("I;16")
    )
    buf = io.BytesIO()
    im.save(buf, format="TIFF" if mode == "CMYK" else "PNG")
    (tmp_path / "s").mkdir()
    _write_shard(tmp_path / "s" / "a.tar", [{"__key__": k, "png": buf.getvalue(), "txt": cap}])
    ds = load_split(tmp_path / "s", 16, None)
    assert ds.images.shape == (1, 3, 16, 16)
    assert ds.images.float().std() > 0  # not a blank image


@pytest.mark.parametrize("damage", ["not-a-tar", "cut-off"])
def test_broken_shard_named(tmp_path, real_samples, damage):
    (tmp_path / "s").mkdir()
    good = tmp_path / "s" / "a-000000.tar"
    _write_shard(good, _wds_samples(real_samples))
    bad = tmp_path / "s" / "a-000001.tar"
    if damage == "not-a-tar":
        bad.write_bytes(b"this is not a tar archive" * 40)
    else:
        _write_shard(bad, _wds_samples(real_samples))
        bad.write_bytes(bad.read_bytes()[:1500])
    with pytest.raises(DataError, match=r"a-000001.tar: not a readable tar archive"):
        load_split(tmp_path / "s", 16, None)


def test_16bit_grey_keeps_its_brightness(tmp_path, real_samples):
    k, _, cap = real_samples[0]
    arr = np.full((8, 8), 1000, dtype=np.uint16)  # dark: 1000 / 65535 of full scale
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    (tmp_path / "s").mkdir()
    _write_shard(tmp_path / "s" / "a.tar", [{"__key__": k, "png": buf.getvalue(), "txt": cap}])
    ds = load_split(tmp_path / "s", 8, None)
    assert int(ds.images.max()) == round(1000 / 257)
