"""Readers on real emoji samples: both layouts, and bad input named by sample."""

import io
import json
import struct
import tarfile

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


# ---------------------------------------------------------------- shards: truncation and the key rule


@pytest.fixture(scope="module")
def forty(emoji_dir):
    """The first 40 real samples of the test split as webdataset samples."""
    from itertools import islice

    from alchemist_pl.data import iter_samples

    return [
        {"__key__": r.sample_id, "png": r.image, "txt": r.caption} for r in islice(iter_samples(emoji_dir / "test"), 40)
    ]


@pytest.mark.parametrize("cut", ["member-boundary", "inside-header", "inside-member", "end-blocks"])
def test_truncated_shard_named(tmp_path, forty, cut):
    """A 40-sample shard cut short (no end-of-archive blocks) is refused by name, not read as 20 samples."""
    (tmp_path / "s").mkdir()
    shard = tmp_path / "s" / "part-000007.tar"
    _write_shard(shard, forty)
    with tarfile.open(shard) as tf:
        members = tf.getmembers()
        end = tf.offset
    half = members[40]  # first member of sample 20 (two members per sample)
    at = {
        "member-boundary": half.offset,
        "inside-header": half.offset + 100,
        "inside-member": half.offset_data + 10,
        "end-blocks": end,  # every member complete, only the two zero blocks missing
    }[cut]
    shard.write_bytes(shard.read_bytes()[:at])
    with pytest.raises(DataError, match=r"part-000007.tar: truncated"):
        load_split(tmp_path / "s", 16, None)


def _tar(path, members):
    """A tar file with the given (name, bytes) members in this order."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    "names,match",
    [
        (["a.png", "a.txt", "a.png"], r"sample 'a': member a.png occurs twice in the sample"),
        (
            ["a.png", "b.png", "a.txt", "b.txt"],
            r"sample 'a': member a.txt is separated from the sample's earlier member a.png by other samples' members",
        ),
        (
            ["a.png", "a.txt", "b.png", "b.txt", "a.png", "a.txt"],
            r"sample 'a': member a.png is separated from the sample's earlier member a.png",
        ),
        (
            ["img.v2.final.png", "img.v2.final.txt"],
            r"sample 'img' has no image: member img.v2.final.png is field 'v2.final.png' of sample 'img', "
            r"because a key ends at the first dot of the file name",
        ),
        (["a.jpg", "a.png", "a.txt"], r"sample 'a' has several images \(a.jpg, a.png\); expected one"),
        (["a.png", "a.txt", "README"], r"member README has no extension"),
    ],
    ids=["duplicate-member", "not-adjacent", "key-twice", "dotted-key", "two-images", "no-extension"],
)
def test_shard_layout_errors_name_shard_key_and_reason(tmp_path, real_samples, names, match):
    """Every reader error is a DataError naming the shard, the key and the true reason."""
    png = {"a": real_samples[0][1], "b": real_samples[1][1], "img": real_samples[2][1]}
    members = []
    for name in names:
        key = name.split(".")[0]
        if name.endswith(".txt"):
            members.append((name, real_samples[0][2].encode()))
        elif name.endswith(".jpg"):
            members.append((name, _jpeg_bytes(png[key])))
        else:
            members.append((name, png.get(key, b"text")))
    (tmp_path / "s").mkdir()
    _tar(tmp_path / "s" / "odd-000001.tar", members)
    with pytest.raises(DataError, match=r"odd-000001.tar: " + match):
        load_split(tmp_path / "s", 16, None)


def test_directories_metadata_and_other_fields_pass(tmp_path, real_samples):
    """Directory members, webdataset's __meta__ members and fields other than image and caption are
    passed over; keys keep their folder (webdataset's rule)."""
    k, png, cap = real_samples[0]
    (tmp_path / "s").mkdir()
    with tarfile.open(tmp_path / "s" / "a.tar", "w") as tf:
        info = tarfile.TarInfo("part")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
        for name, data in [
            ("__info__", b"{}"),
            ("part/x.png", png),
            ("part/x.txt", cap.encode()),
            ("part/x.json", b"{}"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ds = load_split(tmp_path / "s", 16, None)
    assert ds.sample_ids == ["part/x"] and ds.captions == [cap]


def _jpeg_bytes(png: bytes, **save) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


# ---------------------------------------------------------------- images decoded as a viewer shows them

# EXIF orientation (tag 274): the transpose a viewer applies to the stored pixels (EXIF 2.3, Table 6)
_DISPLAY = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],  # stored rotated 90° counter-clockwise: turn it 90° clockwise
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}
_INVERSE = {
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
}


def _decode(tmp_path, key, image_bytes, caption, ext="png", resolution=32):
    folder = tmp_path / f"s-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    _write_shard(folder / "a.tar", [{"__key__": key, ext: image_bytes, "txt": caption}])
    return load_split(folder, resolution, None).images[0].numpy().transpose(1, 2, 0).astype(int)


def _upright(png: bytes) -> Image.Image:
    """A real emoji on white, made asymmetric (left half darkened) so every transpose changes it."""
    im = Image.open(io.BytesIO(png)).convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    arr = np.asarray(Image.alpha_composite(bg, im).convert("RGB")).copy()
    arr[:, : arr.shape[1] // 2] //= 2
    return Image.fromarray(arr)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_applied(tmp_path, real_samples, orientation):
    """Stored pixels + EXIF orientation decode to the upright image, as a viewer shows it."""
    k, png, cap = real_samples[0]
    up = _upright(png)
    stored = up
    for t in reversed(_DISPLAY.get(orientation, [])):
        stored = stored.transpose(_INVERSE.get(t, t))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="PNG", exif=exif)
    got = _decode(tmp_path, k, buf.getvalue(), cap)
    np.testing.assert_array_equal(got, np.asarray(up))


def test_exif_orientation_6_jpeg(tmp_path, real_samples):
    """The field report: a JPEG with orientation 6 is used rotated, as image viewers and img2dataset show it."""
    k, png, cap = real_samples[1]
    up = _upright(png)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = up.transpose(Image.Transpose.ROTATE_90)
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, subsampling=0, exif=exif)
    got = _decode(tmp_path, k, buf.getvalue(), cap, ext="jpg")
    err_upright = np.abs(got - np.asarray(up)).mean()
    err_stored = np.abs(got - np.asarray(stored)).mean()
    assert err_upright < 3 and err_stored > 10 * err_upright, (err_upright, err_stored)


def _swapped_rb_profile() -> bytes:
    """An RGB ICC profile whose red and blue primaries are sRGB's blue and red (LittleCMS's sRGB
    profile with the rXYZ and bXYZ tag offsets exchanged)."""
    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack(">I", icc[128:132])
    table = {icc[132 + 12 * i : 136 + 12 * i].decode(): 132 + 12 * i for i in range(count)}
    r, b = table["rXYZ"], table["bXYZ"]
    icc[r + 4 : r + 12], icc[b + 4 : b + 12] = icc[b + 4 : b + 12], icc[r + 4 : r + 12]
    return bytes(icc)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_icc_profile_converted_to_srgb(tmp_path, real_samples, mode):
    """Pixels tagged with a colour profile decode to the colours it defines: with red and blue primaries
    exchanged, stored (r, g, b) shows as sRGB (b, g, r)."""
    k, png, cap = real_samples[2]
    up = np.asarray(_upright(png))
    stored = Image.fromarray(up[..., ::-1].copy())
    if mode == "RGBA":
        stored = stored.convert("RGBA")
    buf = io.BytesIO()
    stored.save(buf, format="PNG", icc_profile=_swapped_rb_profile())
    got = _decode(tmp_path, k, buf.getvalue(), cap)
    assert np.abs(got - up).max() <= 2, "not converted from the embedded profile"


def test_animated_image_first_frame(tmp_path, real_samples):
    """An animated WebP or PNG decodes to its first frame (what a still thumbnail shows)."""
    frames = [_upright(real_samples[i][1]) for i in (3, 4)]
    for fmt, ext in (("WEBP", "webp"), ("PNG", "png")):
        buf = io.BytesIO()
        frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], lossless=True, duration=100)
        assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
        got = _decode(tmp_path, real_samples[3][0], buf.getvalue(), real_samples[3][2], ext=ext)
        np.testing.assert_array_equal(got, np.asarray(frames[0]))
