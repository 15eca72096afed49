"""Bad input the README's policy covers and tests/test_data.py does not: each is refused with an
error naming the file (and sample) and what was expected, or handled as documented."""

import io
import json

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from PIL import Image

from alchemist_pl.data import DataError, load_split
from alchemist_pl.stages import run

from .test_data import _write_shard


@pytest.fixture(scope="module")
def real(real_samples):
    return real_samples[:4]


def _shard(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_shard(path, samples)


def _jpeg(png: bytes, size=None) -> bytes:
    im = Image.open(io.BytesIO(png)).convert("RGB")
    if size:
        im = im.resize(size)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["truncated-jpeg", "zero-bytes"])
def test_undecodable_image_named(tmp_path, real, damage):
    samples = [{"__key__": k, "jpg": _jpeg(png), "txt": c} for k, png, c in real]
    key = samples[2]["__key__"]
    jpg = samples[2]["jpg"]
    samples[2]["jpg"] = jpg[: len(jpg) // 2] if damage == "truncated-jpeg" else b""
    _shard(tmp_path / "s" / "part-000003.tar", samples)
    with pytest.raises(DataError, match=rf"part-000003.tar: sample '{key}': cannot decode image"):
        load_split(tmp_path / "s", 16, None)


def test_very_large_image_is_resized(tmp_path, real):
    k, png, cap = real[0]
    _shard(tmp_path / "s" / "a.tar", [{"__key__": k, "jpg": _jpeg(png, (4096, 3072)), "txt": cap}])
    ds = load_split(tmp_path / "s", 16, None)
    assert ds.images.shape == (1, 3, 16, 16) and ds.images.float().std() > 0


def test_decompression_bomb_named(tmp_path, real, monkeypatch):
    """Pillow refuses images over 2 x MAX_IMAGE_PIXELS (179M pixels by default); lowered here so the
    test image stays small."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    k, png, cap = real[0]
    _shard(tmp_path / "s" / "a.tar", [{"__key__": k, "jpg": _jpeg(png, (100, 100)), "txt": cap}])
    with pytest.raises(DataError, match=rf"a.tar: sample '{k}': cannot decode image \(DecompressionBombError"):
        load_split(tmp_path / "s", 16, None)


def test_empty_shard_contributes_nothing(tmp_path, real):
    _shard(tmp_path / "s" / "a-000000.tar", [{"__key__": k, "png": png, "txt": c} for k, png, c in real])
    _shard(tmp_path / "s" / "a-000001.tar", [])
    assert load_split(tmp_path / "s", 16, None).sample_ids == [k for k, _, _ in real]
    _shard(tmp_path / "e" / "a-000000.tar", [])
    with pytest.raises(DataError, match=r"data path .*e holds no samples"):
        load_split(tmp_path / "e", 16, None)


@pytest.mark.parametrize("key", ["train_path", "val_path"])
def test_wrong_data_path_names_the_config_key(make_cfg, tmp_path, key):
    cfg = make_cfg("+experiment=rate", "debug=smoke", "~logger", f"data.{key}={tmp_path}/nowhere")
    with pytest.raises(DataError, match=rf"data.{key}=.*nowhere does not exist \(expected a folder of \*.tar"):
        run(cfg)


@pytest.mark.parametrize("key", ["train_path", "val_path"])
def test_unreadable_data_folder_names_the_config_key(make_cfg, tmp_path, key, real):
    """A folder that exists but is neither shards nor an image folder with metadata.jsonl."""
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(real[0][1])
    cfg = make_cfg("+experiment=rate", "debug=smoke", "~logger", f"data.{key}={tmp_path}/imgs")
    with pytest.raises(DataError, match=rf"data.{key}=.*imgs: data path .*imgs holds neither \*.tar"):
        run(cfg)


@pytest.mark.parametrize(
    "override,match",
    [
        ("trainer=ddp_gpu_typo", "trainer"),
        ("data.resolutoin=16", "resolutoin"),
        ("+experiment=rat", "experiment"),
    ],
)
def test_config_errors_caught_at_compose_time(make_cfg, override, match):
    with pytest.raises(ConfigCompositionException, match=match):
        make_cfg(override)


@pytest.mark.parametrize("keep_ratio", [0, -0.5, 1.5])
def test_keep_ratio_outside_range_refused_by_prune(make_cfg, tmp_path, keep_ratio):
    from alchemist_pl.scores import write_scores

    scores = write_scores(tmp_path / "scores.parquet", [f"s{i}" for i in range(10)], np.arange(10.0), {})
    cfg = make_cfg(
        "+experiment=prune", "~logger", f"scores_path={scores}", f"keep_ratio={keep_ratio}", output_dir=tmp_path / "out"
    )
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\]"):
        run(cfg)


# ---------------------------------------------------------------- what reading passes over is counted


def test_long_captions_counted_and_logged(tmp_path, real, caplog):
    """Captions longer than data.max_tokens are cut by the text encoder: counted and logged, not silent."""
    long = " ".join(c for _, _, c in real) + " on a sunny afternoon in the park with friends"
    samples = [{"__key__": k, "png": png, "txt": c} for k, png, c in real]
    samples[1]["txt"] = long
    _shard(tmp_path / "s" / "a.tar", samples)
    with caplog.at_level("WARNING", logger="alchemist_pl.data"):
        ds = load_split(tmp_path / "s", 16, None, max_tokens=16)
    assert ds.input_report == {"samples": 4, "blank_metadata_lines": 0, "captions_truncated": 1, "max_tokens": 16}
    assert (
        f"1 of 4 captions have more than data.max_tokens=16 tokens and are cut to the first 16 (first: sample '{real[1][0]}'"
        in caplog.text
    )
    assert load_split(tmp_path / "s", 16, None, max_tokens=64).input_report["captions_truncated"] == 0


def test_blank_metadata_lines_counted(tmp_path, real, caplog):
    rows = []
    for k, png, cap in real:
        (tmp_path / f"{k}.png").write_bytes(png)
        rows.append(json.dumps({"file_name": f"{k}.png", "text": cap}))
    (tmp_path / "metadata.jsonl").write_text(rows[0] + "\n\n" + "\n".join(rows[1:]) + "\n   \n")
    with caplog.at_level("WARNING", logger="alchemist_pl.data"):
        ds = load_split(tmp_path, 16, None)
    assert ds.input_report["blank_metadata_lines"] == 2 and len(ds) == 4
    assert "2 blank lines in metadata.jsonl passed over" in caplog.text
