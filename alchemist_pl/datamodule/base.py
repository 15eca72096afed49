"""What the rating and training DataModules share: memoised split loading, loaders and RNG state.

Resuming mid-epoch reproduces an uninterrupted run exactly: the train loaders are torchdata
``StatefulDataLoader``s with seeded generators (Lightning saves their position in the epoch into
the checkpoint and restores it), and the datamodule's ``state_dict`` carries the process's RNG
states (torch, NumPy, Python), restored with the checkpoint, so the noise and timesteps drawn by
the training step after the resume are those the uninterrupted run drew.
"""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from .. import data as data_lib
from ..latents import LatentCodec, latent_dataset, load_codec


@functools.lru_cache(maxsize=4)
def _cached_split(path: str, stamp: float, resolution: int, cache_dir, limit, max_tokens):
    return data_lib.load_split(path, resolution, cache_dir, limit, max_tokens)


def load_split(path, resolution: int, cache_dir=None, limit=None, max_tokens: int = 16):
    """:func:`alchemist_pl.data.load_split`, memoised within the process (the pipeline reads each split once)."""
    p = Path(path).resolve()
    if not p.exists():
        raise data_lib.DataError(f"data path {path} does not exist")
    stamp = max([p.stat().st_mtime] + [q.stat().st_mtime for q in p.glob("*")]) if p.is_dir() else p.stat().st_mtime
    return _cached_split(str(p), stamp, resolution, None if cache_dir is None else str(cache_dir), limit, max_tokens)


class BaseDataModule(LightningDataModule):
    """Settings, split loading, loaders and the RNG-state checkpoint hooks of both DataModules.

    With ``latents=True`` every loaded split serves VAE latents as ``image`` ([C, h, w] float32,
    :func:`alchemist_pl.latents.latent_dataset`) from the codec ``vae`` describes (keyword
    arguments of :func:`alchemist_pl.latents.load_codec`); the splits' ``images`` stay uint8 pixels.
    """

    def __init__(
        self,
        resolution: int = 32,
        batch_size: int = 32,
        num_workers: int = 0,
        cache_dir: str | os.PathLike | None = None,
        max_tokens: int = 16,
        seed: int = 0,
        latents: bool = False,
        vae: dict | None = None,
    ):
        super().__init__()
        if not isinstance(latents, bool):
            raise ValueError(f"data.latents must be true or false, got {latents!r}")
        self.latents, self.vae = latents, dict(vae or {})
        self.resolution = resolution
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.max_tokens = max_tokens
        self.seed = seed

    def _load(self, path, limit, key: str):
        """Load one split; ``key`` names its config entry (``data.train_path``) in errors."""
        if not Path(path).exists():
            raise data_lib.DataError(
                f"{key}={path} does not exist (expected a folder of *.tar webdataset "
                f"shards, one shard, or an image folder with metadata.jsonl)"
            )
        try:
            split = load_split(path, self.resolution, self.cache_dir, limit, self.max_tokens)
        except data_lib.DataError as e:  # the reader names file and sample; the config key is ours to add
            raise data_lib.DataError(f"{key}={path}: {e}") from e
        return latent_dataset(split, self.codec, self.cache_dir) if self.latents else split

    @property
    def codec(self) -> LatentCodec | None:
        """The pixel <-> latent codec (``latents=True``), else None."""
        return load_codec(**self.vae) if self.latents else None

    def _loader(self, dataset, batch_size, **kw):
        return DataLoader(
            dataset, batch_size=batch_size, num_workers=self.num_workers, persistent_workers=self.num_workers > 0, **kw
        )

    def _train_loader(self, dataset, batch_size, offset: int = 0, **kw):
        """A resumable loader: its shuffle order and worker seeds come from its own generator.

        ``offset`` gives each loader of the module its own stream (``seed + offset``). Under DDP
        Lightning swaps the shuffling sampler for a ``DistributedSampler`` seeded with the global
        seed and the epoch; the loader keeps its position either way.
        """
        g = torch.Generator()
        g.manual_seed(self.seed + offset)
        return StatefulDataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=g,
            **kw,
        )

    def state_dict(self) -> dict:
        """Saved into every checkpoint: the RNG states of this process at the moment of saving.

        Only tensors and plain Python values, so Lightning's ``weights_only`` checkpoint load
        accepts them.
        """
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return {"rng_states": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the RNG states saved with the checkpoint (a resumed run draws the same noise)."""
        state = state_dict.get("rng_states")
        if not state:
            return
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
