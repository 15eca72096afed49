"""Near-duplicate removal before the selection: images grouped by a perceptual hash, one kept per group.

Each scored image of the pool is decoded as training decodes it (:func:`alchemist_pl.images.decode_image`
at ``data.resolution``) and hashed with `imagehash <https://github.com/JohannesBuchner/imagehash>`_
(``phash`` by default: the signs of the 8x8 lowest-frequency DCT coefficients of the 32x32 grey image
against their median, 64 bits). A perceptual hash changes under a translation of a few pixels, so the
image is also hashed translated by every (dx, dy) with ``|dx|, |dy| <= max_shift`` pixels (the border
repeated into the uncovered strip): two samples are near-duplicates when some translation of one is
within Hamming distance ``max_distance`` of the other's untranslated hash. Near-duplicates are joined
into groups (connected components, so a chain a~b~c is one group even when a and c are further apart).

The search is multi-index hashing (Norouzi et al., "Fast search in Hamming space with multi-index
hashing", CVPR 2012): the 64 bits are cut into ``max_distance + 1`` bands, and two hashes within
``max_distance`` agree exactly on at least one band (pigeonhole), so looking up every band of every
query in a sorted table finds every pair, not O(N^2) comparisons. Identical hashes are looked up once.
Cost grows with how many distinct hashes share a band: small ``max_distance`` (long bands) is cheap.

Within a group only the highest-scored sample stays eligible for the selection (equal scores: drawn
with the run's seed); the others are removed before the selection method runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .data import iter_samples
from .errors import DataError
from .images import decode_image
from .pruning import check_keep_ratio, check_method, choose_subset
from .runtime import write_atomic

log = logging.getLogger(__name__)

#: imagehash's 64-bit hashes (``hash_size=8``) by name.
HASHES = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "average_hash": imagehash.average_hash,
    "whash": imagehash.whash,
}
BITS = 64
_TIE_STREAM = 0xD1D0  # seeds the order of equal scores within a group apart from the selection's draws
_CHUNK = 1 << 16  # query hashes looked up at once (bounds the candidate arrays)


def check_options(hash: str, max_distance: int, max_shift: int) -> None:
    """ValueError naming the value and what is allowed: an unknown hash, ``max_distance`` outside
    [0, 63] bits, a negative ``max_shift`` (pixels)."""
    if hash not in HASHES:
        raise ValueError(f"dedup.hash={hash!r} is not a known hash; expected one of {sorted(HASHES)}")
    if isinstance(max_distance, bool) or not isinstance(max_distance, int) or not 0 <= max_distance < BITS:
        raise ValueError(
            f"dedup.max_distance must be an integer number of bits in [0, {BITS - 1}], got {max_distance!r}"
        )
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"dedup.max_shift must be an integer number of pixels >= 0, got {max_shift!r}")


def shifts(max_shift: int) -> list[tuple[int, int]]:
    """The translations (dx, dy) hashed, (0, 0) first: all with ``|dx|, |dy| <= max_shift`` pixels."""
    r = range(-max_shift, max_shift + 1)
    return [(0, 0)] + [(dx, dy) for dy in r for dx in r if (dx, dy) != (0, 0)]


def translate(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """uint8 [3, H, W] image moved right by ``dx`` and down by ``dy`` pixels, the border row/column
    repeated into the uncovered strip (``np.pad`` mode ``edge``); same shape."""
    _, h, w = image.shape
    m = max(abs(dx), abs(dy))
    padded = np.pad(image, ((0, 0), (m, m), (m, m)), mode="edge")
    return padded[:, m - dy : m - dy + h, m - dx : m - dx + w]


def image_hashes(image: np.ndarray, hash: str = "phash", max_shift: int = 0) -> np.ndarray:
    """[S] uint64 hashes of one uint8 [3, H, W] image under each of :func:`shifts` (``S = (2 max_shift + 1)^2``,
    the untranslated image first); bit 63 is the hash's first (row-major) bit."""
    fn = HASHES[hash]
    bits = [
        fn(Image.fromarray(translate(image, dx, dy).transpose(1, 2, 0))).hash.ravel() for dx, dy in shifts(max_shift)
    ]
    return np.packbits(np.asarray(bits, dtype=bool), axis=1).view(">u8").ravel().astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise Hamming distance (bits) of two uint64 arrays."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def band_edges(max_distance: int) -> np.ndarray:
    """Bit offsets of the ``max_distance + 1`` bands the 64 bits are cut into (widths differ by at most 1)."""
    return np.linspace(0, BITS, max_distance + 2).round().astype(np.uint64)


def matches(queries: np.ndarray, base: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, base) pair within ``max_distance`` bits, by multi-index hashing (module docstring).

    Args:
        queries: [M] uint64 hashes; base: [K] uint64 hashes (distinct values keep the search cheap).
        max_distance: Hamming distance in bits, 0..63.

    Returns:
        ([P] int64 query positions, [P] int64 base positions), each pair once, sorted by query then base.
    """
    queries, base = np.asarray(queries, dtype=np.uint64), np.asarray(base, dtype=np.uint64)
    edges, found = band_edges(max_distance), []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = np.uint64((1 << int(hi - lo)) - 1)
        keys = (base >> lo) & mask
        order = np.argsort(keys, kind="stable")
        table = keys[order]
        for start in range(0, len(queries), _CHUNK):
            q = queries[start : start + _CHUNK]
            qk = (q >> lo) & mask
            left, right = np.searchsorted(table, qk, "left"), np.searchsorted(table, qk, "right")
            counts = right - left
            qi = np.repeat(np.arange(len(q)), counts)
            within = np.arange(len(qi)) - np.repeat(np.cumsum(counts) - counts, counts)
            bj = order[left[qi] + within]
            close = hamming(q[qi], base[bj]) <= max_distance
            found.append((qi[close] + start) * len(base) + bj[close])
    pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    return (pairs // max(len(base), 1)).astype(np.int64), (pairs % max(len(base), 1)).astype(np.int64)


def group(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Near-duplicate groups of N samples.

    Args:
        hashes: [N, S] uint64, each sample's hashes under :func:`shifts` (column 0 untranslated).
        max_distance: bits; samples i, j are joined when some hash of i is within it of j's column 0.

    Returns:
        [N] int64 group of each sample: 0..G-1 for the G groups of two or more, -1 for a sample alone.
    """
    n, s = hashes.shape
    base, base_of = np.unique(hashes[:, 0], return_inverse=True)
    query, query_of = np.unique(hashes.ravel(), return_inverse=True)
    qi, bj = matches(query, base, max_distance)
    # each (sample, translation) to every base hash its query matched: edges sample -> base node
    start = np.searchsorted(qi, np.arange(len(query)))
    count = np.searchsorted(qi, np.arange(len(query)), "right") - start
    per = count[query_of]
    owner = np.repeat(np.repeat(np.arange(n), s), per)
    hit = bj[np.repeat(start[query_of], per) + np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)]
    rows = np.concatenate([np.arange(n), owner])
    cols = n + np.concatenate([base_of.ravel(), hit])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n + len(base),) * 2)
    _, label = connected_components(graph, directed=False)
    label = label[:n]
    shared = np.bincount(label)[label] > 1
    out = np.full(n, -1, dtype=np.int64)
    out[shared] = np.unique(label[shared], return_inverse=True)[1].ravel()
    return out


def keep_best(groups: np.ndarray, scores: np.ndarray, seed: int) -> np.ndarray:
    """[N] bool: the samples that stay eligible, every sample alone and the highest-scored one of each
    group (``groups`` as :func:`group` returns; equal top scores: one drawn with ``seed``)."""
    tie = np.random.default_rng([_TIE_STREAM, seed]).random(len(groups))
    order = np.lexsort((tie, -np.asarray(scores, dtype=np.float64), groups))
    sorted_groups = groups[order]
    first = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    keep = groups < 0
    keep[order[first & (sorted_groups >= 0)]] = True
    return keep


def pool_hashes(train_path, sample_ids: list[str], resolution: int, hash: str, max_shift: int, source: str):
    """[N, S] uint64 :func:`image_hashes` of the pool samples named by ``sample_ids`` (in that order),
    read with :func:`alchemist_pl.data.iter_samples` and decoded at ``resolution`` pixels.

    Pool samples not in ``sample_ids`` are passed over (not decoded), counted and logged.

    Raises:
        DataError: an unreadable pool or image (naming file and sample), or sample_ids of ``source``
            (the scores file) that the pool does not hold.
    """
    row = {s: i for i, s in enumerate(sample_ids)}
    out = np.zeros((len(sample_ids), len(shifts(max_shift))), dtype=np.uint64)
    seen = np.zeros(len(sample_ids), dtype=bool)
    passed = 0
    for raw in iter_samples(train_path):
        i = row.get(raw.sample_id)
        if i is None:
            passed += 1
            continue
        out[i], seen[i] = image_hashes(decode_image(raw, resolution), hash, max_shift), True
    if not seen.all():
        missing = [sample_ids[i] for i in np.flatnonzero(~seen)[:3]]
        raise DataError(
            f"{source}: {int((~seen).sum())} of {len(sample_ids)} scored samples are not in the pool "
            f"data.train_path={train_path} (first: {missing}); were the scores made for another pool?"
        )
    if passed:
        log.warning("dedup: %d samples of %s have no score and were passed over", passed, train_path)
    return out


def deduplicate(train_path, sample_ids: Iterable[str], scores: np.ndarray, options: dict, seed: int, source: str):
    """Near-duplicate groups of the scored pool and the samples that stay eligible.

    Args:
        train_path: the pool (``data.train_path``); sample_ids: [N] ids of the scores' rows;
        scores: [N] scores (higher = better); options: ``hash``, ``max_distance`` (bits), ``max_shift``
        (pixels), ``resolution`` (pixels); seed: the run's seed (equal scores in a group);
        source: the scores file, named in errors.

    Returns:
        ([N] bool eligible, [N] int64 group (-1 alone), report dict: hashed, groups, in_groups,
        removed, hash_cpu_s, search_cpu_s).
    """
    check_options(options["hash"], options["max_distance"], options["max_shift"])
    ids = list(sample_ids)
    t0 = time.process_time()
    hashes = pool_hashes(train_path, ids, options["resolution"], options["hash"], options["max_shift"], source)
    t1 = time.process_time()
    groups = group(hashes, options["max_distance"])
    eligible = keep_best(groups, scores, seed)
    report = {
        "hashed": len(ids),
        "groups": int(groups.max() + 1),
        "in_groups": int((groups >= 0).sum()),
        "removed": int((~eligible).sum()),
        "hash_cpu_s": t1 - t0,
        "search_cpu_s": time.process_time() - t1,
    }
    log.info(
        "dedup: %d near-duplicate groups (%d samples); %d removed before the selection", *list(report.values())[1:4]
    )
    return eligible, groups, report


def write_duplicates(path, sample_ids, groups: np.ndarray, eligible: np.ndarray, scores: np.ndarray):
    """Write ``duplicates.parquet`` atomically: one row per sample in a group of two or more,
    columns ``sample_id``, ``group`` (int64), ``kept`` (bool: stayed eligible for the selection), ``score``."""
    rows = np.flatnonzero(groups >= 0)
    table = pa.table(
        {
            "sample_id": pa.array([sample_ids[i] for i in rows], pa.string()),
            "group": groups[rows],
            "kept": eligible[rows],
            "score": np.asarray(scores)[rows],
        }
    )
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def select_eligible(scores: np.ndarray, eligible: np.ndarray, keep_ratio: float, method: str, seed: int, params: dict):
    """The selection run on the eligible samples only, keeping ``round(keep_ratio * N)`` of the whole pool.

    ``keep_ratio`` counts the pool as scored, duplicates included: the subset has as many samples with
    dedup as without (``full`` keeps every eligible sample). The method draws them from the M eligible
    samples (:func:`alchemist_pl.pruning.choose_subset` at keep_ratio ``k / M``).

    Args:
        scores: [N] scores; eligible: [N] bool (:func:`keep_best`); keep_ratio, method, seed, params:
            as :func:`~alchemist_pl.pruning.choose_subset`.

    Returns:
        ([k] int64 sorted rows of ``scores``, [k] float64 rank percentile of each among the eligible, 0 = top).

    Raises:
        ValueError: a keep_ratio outside (0, 1], or one asking for more samples than dedup left.
    """
    method = check_method(method)
    check_keep_ratio(keep_ratio)
    n, rows = len(scores), np.flatnonzero(eligible)
    ratio = keep_ratio
    if method != "full":
        k = int(round(keep_ratio * n))
        if k > len(rows):
            raise ValueError(
                f"keep_ratio={keep_ratio} keeps {k} of the {n} scored samples, but only {len(rows)} remain after "
                f"dedup removed {n - len(rows)} near-duplicates; lower keep_ratio or dedup.max_distance"
            )
        ratio = k / len(rows)
    idx, pct = choose_subset(len(rows), scores=scores[rows], keep_ratio=ratio, method=method, seed=seed, **params)
    return rows[idx], pct
