"""Latent space: a diffusers ``AutoencoderKL`` between pixels and latents, its cache, and the
datasets that serve latents (``data.latents=true``).

The latent of an image ``x`` (float [-1, 1]) is the posterior mean of the encoder, shifted and
scaled as diffusers does for Stable Diffusion 3 / FLUX (shift 0 for Stable Diffusion 1/2):
``z = (E(x).mean - shift_factor) * scaling_factor``; decoding is ``D(z / scaling_factor + shift_factor)``.

- ``vae.path=/local/dir``: a pretrained ``AutoencoderKL`` folder read with ``local_files_only``
  (nothing is downloaded); its config's ``scaling_factor`` / ``shift_factor`` are used.
- otherwise (the default, offline): a small ``AutoencoderKL`` trained once on clean training images
  (:mod:`alchemist_pl.autoencoder`) and cached as ``{cache_dir}/autoencoder-{key}.pt``; its
  ``scaling_factor`` is 1 / std of the posterior means over the training images, as Stable
  Diffusion estimated 0.18215 (Rombach et al. 2022, Sec. 4.3.2 and App. G).

Every split is encoded once per (autoencoder, pixels) pair and cached as
``{cache_dir}/latents-{autoencoder key}-{pixel fingerprint}.pt``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from .autoencoder import reconstruction_error, train_autoencoder
from .data import iter_samples, load_split
from .emoji import manifest_hash
from .errors import DataError
from .pixels import to_model_range
from .runtime import preserved_rng, write_atomic

log = logging.getLogger(__name__)

LATENTS_VERSION = 1


class LatentCodec:
    """Pixels <-> latents with a frozen ``AutoencoderKL``.

    Attributes: ``vae`` (eval mode, no gradients), ``key`` (identifies the weights and settings;
    keys the latent cache), ``info`` (where it came from, reconstruction error when trained here).
    """

    def __init__(self, vae: AutoencoderKL, key: str, info: dict | None = None):
        self.vae = vae.eval().requires_grad_(False)
        self.key = key
        self.info = dict(info or {})
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> latents [N, C, H/f, W/f] float32 on the CPU (f: downsample_factor)."""
        device = next(self.vae.parameters()).device
        out = []
        for start in range(0, len(images), batch_size):
            x = to_model_range(images[start : start + batch_size]).to(device)
            mean = self.vae.encode(x).latent_dist.mean
            out.append(((mean - self.shift_factor) * self.scaling_factor).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] -> pixels [B, 3, h*f, w*f] float32 in [-1, 1] (clamped), on the latents' device."""
        self.vae.to(latents.device)
        x = self.vae.decode(latents.float() / self.scaling_factor + self.shift_factor).sample
        return x.float().clamp(-1, 1)


def _data_key(paths) -> list[str]:
    """Identity of the training images of each path: the dataset build's manifest hash, else a
    sha256 over every sample's id and encoded image bytes (read, not decoded)."""
    keys = []
    for path in paths:
        p = Path(path).resolve()
        h = manifest_hash(p.parent)
        if h is None:
            digest = hashlib.sha256()
            for raw in iter_samples(p):
                digest.update(raw.sample_id.encode("utf-8") + b"\0" + hashlib.sha256(raw.image).digest())
            h = digest.hexdigest()
        keys.append(f"{p.name}:{h}")
    return keys


_CODECS: dict[str, LatentCodec] = {}


def load_codec(
    path=None,
    data_paths=(),
    test_path=None,
    resolution: int = 32,
    cache_dir=None,
    max_tokens: int = 16,
    latent_channels: int = 4,
    downsample_factor: int = 2,
    **train_settings,
) -> LatentCodec:
    """The codec of ``vae.*`` (memoised per process).

    Args:
        path: a local diffusers ``AutoencoderKL`` folder, or None for the small autoencoder trained
            here on ``data_paths`` (clean images: D_val and the clean training split, never the test
            split) with ``train_settings`` (:func:`alchemist_pl.autoencoder.train_autoencoder`).
        test_path: split on which the trained autoencoder's reconstruction error is reported.
        cache_dir: where ``autoencoder-{key}.pt`` lives; ``key`` hashes the training data (manifest
            or sample_ids), ``resolution`` and every setting.
        latent_channels, downsample_factor: the latent shape the config expects (``data.image_channels``,
            ``data.image_size``); checked against the autoencoder.

    Raises:
        FileNotFoundError: ``path`` is not a local ``AutoencoderKL`` folder.
        ValueError: the autoencoder's latent channels or downsampling differ from the config's.
    """
    if path is not None:
        codec = _pretrained(path)
    else:
        params = {
            "version": LATENTS_VERSION,
            "data": _data_key(data_paths),
            "resolution": resolution,
            "max_tokens": max_tokens,
            "latent_channels": latent_channels,
            **{k: list(v) if isinstance(v, list | tuple) else v for k, v in train_settings.items()},
        }
        key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        file = Path(cache_dir) / f"autoencoder-{key}.pt"
        if key not in _CODECS:
            if not file.exists():
                with preserved_rng():
                    _train_and_save(file, params, data_paths, test_path, resolution, cache_dir, max_tokens)
            _CODECS[key] = _load_trained(file, key)
        codec = _CODECS[key]
    got = (codec.latent_channels, codec.downsample_factor)
    if got != (int(latent_channels), int(downsample_factor)):
        raise ValueError(
            f"the autoencoder {path or codec.info.get('path')} has {got[0]} latent channels and downsamples "
            f"by {got[1]}, but vae.latent_channels={latent_channels} and vae.downsample_factor={downsample_factor}: "
            f"set them to {got[0]} and {got[1]}"
        )
    return codec


def _pretrained(path) -> LatentCodec:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"vae.path={path} is not a local diffusers AutoencoderKL folder (expected {p / 'config.json'} "
            f"and its weights, e.g. the 'vae' folder of a Stable Diffusion checkout); nothing is downloaded"
        )
    key = "pretrained:" + str(p.resolve())
    if key not in _CODECS:
        vae = AutoencoderKL.from_pretrained(p, local_files_only=True)
        weights = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
        digest = hashlib.sha256(b"".join(w.read_bytes() for w in weights) + (p / "config.json").read_bytes())
        _CODECS[key] = LatentCodec(vae, digest.hexdigest()[:16], {"path": str(p)})
    return _CODECS[key]


def _train_and_save(file: Path, params: dict, data_paths, test_path, resolution, cache_dir, max_tokens) -> None:
    """Train the autoencoder ``params`` describes on the pixels of ``data_paths``, measure its
    reconstruction error (training images, and ``test_path`` if given) and save it atomically to ``file``."""
    if not data_paths:
        raise ValueError("vae.data_paths is empty: the autoencoder needs clean training images")
    log.info("training the latent autoencoder (once; cached as %s)", file)
    images = torch.cat([load_split(p, resolution, cache_dir, None, max_tokens).images for p in data_paths])
    settings = {k: params[k] for k in params if k not in ("version", "data", "resolution", "max_tokens")}
    vae, info = train_autoencoder(images, **settings)
    if test_path is not None:
        info["reconstruction_test"] = reconstruction_error(vae, load_split(test_path, resolution, cache_dir).images)
    blob = {"config": dict(vae.config), "state_dict": vae.state_dict(), "params": params, "info": info}
    write_atomic(file, lambda tmp: torch.save(blob, tmp))
    log.info("latent autoencoder: %s", info)


def _load_trained(file: Path, key: str) -> LatentCodec:
    blob = torch.load(file, weights_only=False)
    config = {k: v for k, v in blob["config"].items() if not k.startswith("_")}
    vae = AutoencoderKL.from_config(config)
    vae.load_state_dict(blob["state_dict"])
    return LatentCodec(vae, key, {**blob["info"], "path": str(file)})


def pixel_fingerprint(dataset) -> str:
    """sha256 over a dataset's sample_ids (in order) and uint8 pixels: any changed pixel changes it."""
    h = hashlib.sha256()
    for s in dataset.sample_ids:
        h.update(s.encode("utf-8") + b"\0")
    h.update(str(tuple(dataset.images.shape)).encode())
    h.update(dataset.images.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def encode_split(codec: LatentCodec, dataset, cache_dir=None) -> torch.Tensor:
    """Latents [N, C, h, w] float32 of ``dataset.images``, read from / written to
    ``{cache_dir}/latents-{codec.key}-{pixel fingerprint}.pt`` (no cache with ``cache_dir`` None)."""
    if cache_dir is None:
        return codec.encode(dataset.images)
    file = Path(cache_dir) / f"latents-{codec.key}-{pixel_fingerprint(dataset)}.pt"
    if file.exists():
        return torch.load(file, weights_only=True)
    latents = codec.encode(dataset.images)
    write_atomic(file, lambda tmp: torch.save(latents, tmp))
    log.info("encoded %d images to latents %s -> %s", len(latents), tuple(latents.shape[1:]), file)
    return latents


def latent_dataset(dataset, codec: LatentCodec, cache_dir=None):
    """A shallow copy of an :class:`~alchemist_pl.data.ImageCaptionDataset` whose items' ``image``
    is the sample's latent [C, h, w] float32; ``images`` (uint8 pixels) stays for pixel readers.

    Raises:
        DataError: the latents' count differs from the dataset's (a stale cache file).
    """
    latents = encode_split(codec, dataset, cache_dir)
    if len(latents) != len(dataset):
        raise DataError(f"{len(latents)} cached latents for a split of {len(dataset)} samples")
    out = copy.copy(dataset)
    out.latents = latents
    return out
