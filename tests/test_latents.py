"""The latent space (data.latents=true): the autoencoder cache, encode/decode, the latent batches of
both DataModules, decoding before evaluation, and the smoke pipeline on latents."""

import json
import random
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from alchemist_pl import latents
from alchemist_pl.autoencoder import reconstruction_error
from alchemist_pl.data import iter_samples, load_split
from alchemist_pl.evaluation import GenerationEvaluation
from alchemist_pl.latents import load_codec
from alchemist_pl.pixels import to_model_range
from alchemist_pl.preflight import check_config
from alchemist_pl.stages import run

# a quick autoencoder: enough steps for the scaling factor to be estimated, not for good reconstructions
QUICK = {"block_out_channels": [16, 32], "steps": 8, "batch_size": 16, "lr": 2e-3, "kl_weight": 1e-4, "seed": 0}
LATENT = (
    "data.latents=true",
    "vae.data_paths=[${data.val_path}]",
    "vae.test_path=null",
    "vae.steps=8",
    "vae.batch_size=16",
)


def _folder(root, samples):
    """An image folder (metadata.jsonl) of ``samples``: (sample_id, png bytes, caption)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.jsonl", "w") as f:
        for sid, png, caption in samples:
            (root / f"{sid}.png").write_bytes(png)
            f.write(json.dumps({"file_name": f"{sid}.png", "text": caption}) + "\n")
    return root


@pytest.fixture
def fresh_codecs():
    """No codec memoised in this process: every load_codec reads (or trains) its cache file."""
    latents._CODECS.clear()
    yield
    latents._CODECS.clear()


@pytest.fixture(scope="module")
def val_samples(emoji_dir):
    out = []
    for raw in iter_samples(emoji_dir / "val"):
        out.append((raw.sample_id.replace(".", "_"), raw.image, raw.caption))
        if len(out) == 48:
            return out


def test_autoencoder_cache_is_reused_and_invalidated(tmp_path, val_samples, fresh_codecs):
    data = _folder(tmp_path / "data", val_samples)
    cache = tmp_path / "cache"
    args = {"data_paths": [str(data)], "resolution": 32, "cache_dir": cache, **QUICK}
    first = load_codec(**args)
    (file,) = cache.glob("autoencoder-*.pt")
    stamp = file.stat().st_mtime_ns
    latents._CODECS.clear()
    again = load_codec(**args)  # read from the cache: the same file, untouched, the same weights
    assert list(cache.glob("autoencoder-*.pt")) == [file] and file.stat().st_mtime_ns == stamp
    assert again.key == first.key
    assert all(torch.equal(a, b) for a, b in zip(first.vae.state_dict().values(), again.vae.state_dict().values()))
    other = load_codec(**{**args, "steps": QUICK["steps"] + 1})  # another setting: another file
    assert other.key != first.key and len(list(cache.glob("autoencoder-*.pt"))) == 2
    # the same sample_ids with one image changed: the data key changes, a third autoencoder is trained
    sid, png, caption = val_samples[0]
    (data / f"{sid}.png").write_bytes(val_samples[1][1])
    changed = load_codec(**args)
    assert changed.key not in (first.key, other.key) and len(list(cache.glob("autoencoder-*.pt"))) == 3


@pytest.mark.slow
def test_latents_are_scaled_and_decode_inverts_the_scaling(tmp_path, emoji_dir, fresh_codecs):
    codec = load_codec(data_paths=[emoji_dir / "val"], resolution=32, cache_dir=tmp_path, **QUICK)
    images = load_split(emoji_dir / "val", 32, None, limit=256).images
    z = codec.encode(images)
    assert z.shape == (256, 4, 16, 16) and z.dtype == torch.float32
    # the scaling factor is 1 / std of the training latents: unit spread on training images
    assert 0.8 < float(z.std()) < 1.25
    # decode undoes the scaling: the codec's round trip is the autoencoder's own reconstruction
    err = float(((codec.decode(z) - to_model_range(images)) ** 2).mean())
    assert err == pytest.approx(reconstruction_error(codec.vae, images)["mse"], rel=1e-4)


@pytest.mark.slow
def test_default_autoencoder_reconstructs_unseen_images(make_cfg, emoji_dir):
    """The default config's autoencoder (trained on the clean train split and D_val) on the test split:
    much closer than the best constant image (the mean test image)."""
    cfg = make_cfg("data.latents=true")
    codec = load_codec(**OmegaConf.to_container(cfg.vae, resolve=True))
    images = load_split(emoji_dir / "test", 32, None).images
    x = to_model_range(images)
    err = float(((codec.decode(codec.encode(images)) - x) ** 2).mean())
    constant = float(((x - x.mean(0)) ** 2).mean())
    assert err < 0.2 * constant  # measured: 0.027 vs 0.290


def test_latent_datamodules_serve_latents(make_cfg, fresh_codecs):
    cfg = make_cfg(*LATENT, "data.limit_train=64", "data.limit_val=32")
    assert (cfg.data.image_channels, cfg.data.image_size) == (4, 16)
    assert (cfg.proxy.unet.in_channels, cfg.proxy.unet.sample_size, cfg.rater.backbone.in_channels) == (4, 16, 4)
    rating = instantiate(cfg.datamodule.rating)
    rating.setup("fit")
    batch = next(iter(rating.train_dataloader()))[0]
    for key, size in (("val", cfg.rate.val_batch_size), ("train", cfg.rate.batch_size)):
        assert batch[key]["image"].shape == (size, 4, 16, 16) and batch[key]["image"].dtype == torch.float32
    # the latent of each served sample is its own image's, and the pixels stay uint8 for pixel readers
    idx = batch["train"]["index"]
    assert torch.equal(batch["train"]["image"], rating.codec.encode(rating.pool.images[idx]))
    assert rating.pool.images.shape[1:] == (3, 32, 32) and rating.pool.images.dtype == torch.uint8
    training = instantiate(cfg.datamodule.training, method="full")
    training.setup("fit")
    train_batch = next(iter(training.train_dataloader()))
    assert train_batch["image"].shape == (cfg.train.batch_size, 4, 16, 16)
    assert next(iter(training.test_dataloader()))["image"].shape[1:] == (4, 16, 16)
    # the pixel default is unchanged
    pixel = instantiate(make_cfg("data.limit_train=64", "data.limit_val=32").datamodule.rating)
    pixel.setup("fit")
    assert next(iter(pixel.train_dataloader()))[0]["train"]["image"].shape[1:] == (3, 32, 32)


class Recorder:
    """Stands in for the metrics: records what the evaluation callback hands them."""

    def __init__(self):
        self.fid = SimpleNamespace(device="cpu")
        self.seen = []

    def compute(self, images, pooled):
        self.seen.append(images)
        return {"seen": float(images.mean())}


def test_evaluation_decodes_generated_latents(make_cfg, tmp_path, emoji_dir, fresh_codecs):
    cfg = make_cfg(*LATENT, "model=unet_tiny")
    model = instantiate(cfg.model)
    codec = load_codec(**OmegaConf.to_container(cfg.vae, resolve=True))
    test = load_split(emoji_dir / "test", 32, cfg.data.cache_dir, limit=4)
    prompts = {
        "states": test.text.states[test.caption_rows].float(),
        "mask": test.text.mask[test.caption_rows],
        "pooled": test.text.pooled[test.caption_rows].float(),
    }
    metrics = Recorder()
    callback = GenerationEvaluation(
        metrics, prompts, sample_steps=2, grid_path=tmp_path / "grid.png", decode=codec.decode
    )
    trainer = type("T", (), {"global_step": 0, "loggers": []})()
    callback.evaluate(trainer, model)
    (images,) = metrics.seen
    assert images.shape == (4, 3, 32, 32)  # pixels at the data's resolution, not [4, 4, 16, 16] latents
    # exactly the decoded latents: the same generation's raw latents through the codec's decoder
    raw = []
    GenerationEvaluation(metrics, prompts, sample_steps=2, decode=lambda z: raw.append(z) or z).generate(model)
    assert raw[0].shape == (4, 4, 16, 16) and float(raw[0].abs().max()) > 1  # latents, not clamped to [-1, 1]
    assert torch.allclose(images, codec.decode(raw[0]), atol=1e-6)
    assert Image.open(tmp_path / "grid.png").size == (8 * 32, 32)


@pytest.mark.slow
def test_smoke_pipeline_on_latents(tmp_path, make_cfg, fresh_codecs):
    out = tmp_path / "run"
    summary = run(make_cfg("+experiment=pipeline", "debug=smoke", "logger=csv", "data.latents=true", output_dir=out))
    rows = {r["run"]: r for r in summary["metrics"]["comparison"]}
    assert set(rows) == {"top_k", "random", "full"}
    assert all(r["test_loss"] > 0 and r["domain_fid"] is not None for r in rows.values())
    for name in rows:
        assert Image.open(out / f"train-{name}" / "eval_samples.png").size[0] == 8 * 32  # decoded 32 px images
        assert Image.open(out / f"train-{name}" / "samples.png").size[0] == 8 * 32
    shutil.rmtree(out)


def test_preflight_refuses_what_latents_cannot_run(make_cfg):
    # 36 px -> 18 x 18 latents: unet_tiny's two downsamplings do not divide 18
    with pytest.raises(ValueError, match=r"proxy.unet downsamples 2 times, but the latents are 18 x 18"):
        check_config(make_cfg("+experiment=rate", "data.latents=true", "data.resolution=36"))
    with pytest.raises(ValueError, match="rate.streaming=true"):
        check_config(make_cfg("+experiment=rate", "data.latents=true", "rate.streaming=true"))


@pytest.mark.slow
def test_pretrained_autoencoder_from_a_local_folder(tmp_path, emoji_dir, fresh_codecs):
    trained = load_codec(data_paths=[emoji_dir / "val"], resolution=32, cache_dir=tmp_path, **QUICK)
    trained.vae.save_pretrained(tmp_path / "vae")
    local = load_codec(path=str(tmp_path / "vae"), latent_channels=4, downsample_factor=2)
    images = load_split(emoji_dir / "val", 32, None, limit=8).images
    assert torch.allclose(local.encode(images), trained.encode(images), atol=1e-5)  # its config's scaling factor
    with pytest.raises(ValueError, match="vae.downsample_factor=8"):
        load_codec(path=str(tmp_path / "vae"), latent_channels=4, downsample_factor=8)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_codec(path=str(tmp_path / "missing"))


def test_training_a_cached_autoencoder_leaves_the_random_streams_where_they_were(tmp_path, val_samples, fresh_codecs):
    """A cold cache (the autoencoder is trained here) and a warm one must leave a run the same
    torch, NumPy and Python random numbers: otherwise the first run after a cache miss starts its
    model from other weights than every later run."""
    args = {"data_paths": [str(_folder(tmp_path / "data", val_samples))], "resolution": 32, **QUICK}

    def draws_after(cache) -> tuple:
        torch.manual_seed(7), np.random.seed(7), random.seed(7)
        load_codec(cache_dir=cache, **args)
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    cold = draws_after(tmp_path / "cache")  # trains and saves
    latents._CODECS.clear()
    warm = draws_after(tmp_path / "cache")  # reads the file
    assert cold == warm
