"""Near-duplicate removal (``dedup.enabled=true``) on planted-noise pools: how well the perceptual-hash
groups find the planted ``near_duplicate`` pairs, and what dedup does to a top-k subset.

    python benchmarks/dedup.py --pools data/emoji-web-f0.3-n4000-s0,/work/dd-out/pool-s1 \
        --rater-runs /work/amort-out/rating/replay4_reg \
        --scorer-scores /work/eff-out/score/scores.parquet,/work/dd-out/score-s1/scores.parquet --out benchmarks/results/dedup-f2.md

Part 1, per pool and setting (max_shift px, max_distance bits): the planted pairs are each
``near_duplicate`` sample and its ``other_id`` source (``corruptions.parquet``); a source that was itself
corrupted by an image kind (blur, noise, blank, collage) no longer shows the image that was copied, so
recall is also given over the pairs whose source kept its image ("intact"). Pair precision: planted
pairs among all sample pairs within ``max_distance`` (some translation of one against the other).
The setting is chosen on the first pool (largest F1 of pair precision and intact recall) and
validated on the others. Part 2, chosen setting: the top-k ``keep_ratio`` subset with and without
dedup, of the rater's scores (seeds; first pool), each pool's CLIP-score filter file and their rank
combination. Part 3: the grouping's CPU time on the first pool's hashes repeated up to 100 times.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's alchemist_pl, not another installed copy
sys.path.insert(0, str(ROOT / "benchmarks"))

from stamp import commit, machine, mean_std  # noqa: E402

from alchemist_pl.corruption import GROUND_TRUTH  # noqa: E402
from alchemist_pl.data import iter_samples  # noqa: E402
from alchemist_pl.dedup import group, hamming, keep_best, pool_hashes, select_eligible  # noqa: E402
from alchemist_pl.images import decode_image  # noqa: E402
from alchemist_pl.pruning import choose_subset  # noqa: E402
from alchemist_pl.score_combination import ScoreCombination  # noqa: E402

KINDS = ("blur", "noise", "blank", "caption_swap", "near_duplicate", "collage")
INTACT = ("clean", "caption_swap")  # source kinds whose pool image is the image that was copied


def ground_truth(pool: Path):
    """(sample_ids in pool order, [N] kind, [P, 2] planted pairs (near-duplicate, source), [P] bool intact)."""
    gt = pq.read_table(pool / GROUND_TRUTH).to_pydict()
    by_id = {s: (k, o) for s, k, o in zip(gt["sample_id"], gt["corruption"], gt["other_id"])}
    ids = [raw.sample_id for raw in iter_samples(pool / "train")]
    pos = {s: i for i, s in enumerate(ids)}
    kind = np.array([by_id[s][0] for s in ids], dtype=object)
    pairs = np.array([(i, pos[by_id[s][1]]) for i, s in enumerate(ids) if kind[i] == "near_duplicate"])
    return ids, kind, pairs, np.isin(kind[pairs[:, 1]], INTACT)


def min_distance(hashes: np.ndarray) -> np.ndarray:
    """[N, N] uint8: the least Hamming distance between any translation of i and j's untranslated hash,
    symmetrised (brute force, the reference the grouping is scored against)."""
    d = np.full((len(hashes),) * 2, 255, dtype=np.uint8)
    for s in range(hashes.shape[1]):
        np.minimum(d, hamming(hashes[:, s, None], hashes[None, :, 0]).astype(np.uint8), out=d)
    d = np.minimum(d, d.T)
    np.fill_diagonal(d, 255)
    return d


def grouping_rows(pool: Path, shifts: list[int], distances: list[int], hash_name: str) -> tuple[list[dict], dict]:
    """One row per (max_shift, max_distance) with the grouping's precision / recall; and CPU s per sample."""
    ids, kind, pairs, intact = ground_truth(pool)
    t = time.process_time()
    for raw in iter_samples(pool / "train"):
        decode_image(raw, 32)
    cost = {"read+decode": (time.process_time() - t) / len(ids)}
    rows = []
    for shift in shifts:
        t = time.process_time()
        hashes = pool_hashes(pool / "train", ids, 32, hash_name, shift, str(pool))
        cost[f"read+decode+hash, max_shift {shift}"] = (time.process_time() - t) / len(ids)
        dist = min_distance(hashes)
        for d in distances:
            t = time.process_time()
            groups = group(hashes, d)
            search = time.process_time() - t
            close = np.triu(dist <= d, 1)
            found, planted = int(close.sum()), int((dist[pairs[:, 0], pairs[:, 1]] <= d).sum())
            same = (groups[pairs[:, 0]] == groups[pairs[:, 1]]) & (groups[pairs[:, 0]] >= 0)
            i, j = np.nonzero(close)
            clean_clean = int(((kind[i] == "clean") & (kind[j] == "clean")).sum())
            precision = planted / max(found, 1)
            recall = same[intact].mean()
            rows.append(
                dict(shift=shift, d=d, pairs=found, planted=planted, precision=precision, clean_clean=clean_clean,
                     recall=same.mean(), recall_intact=recall, f1=2 * precision * recall / max(precision + recall, 1e-12),
                     groups=int(groups.max() + 1), in_groups=int((groups >= 0).sum()), search_s=search)
            )  # fmt: skip
    return rows, {"cost": cost, "planted": len(pairs), "intact": int(intact.sum()), "n": len(ids)}


def subset_row(ids, kind, pairs, idx, removed=None) -> dict:
    """Corrupted share, per-kind counts and planted pairs with both members in the subset ``idx``."""
    inside = np.zeros(len(ids), dtype=bool)
    inside[idx] = True
    row = {"corrupted_share": float((kind[idx] != "clean").mean()), "both_in_subset": int(inside[pairs].all(1).sum())}
    row |= {k: int((kind[idx] == k).sum()) for k in KINDS}
    if removed is not None:
        row |= {"removed": int(removed.sum()), "clean_removed": int((removed & (kind == "clean")).sum())}
        source = np.zeros(len(ids), dtype=bool)
        source[pairs[:, 1]] = True
        row |= {"clean_non_source_removed": int((removed & (kind == "clean") & ~source).sum())}
        row |= {"near_duplicate_removed": int((removed & (kind == "near_duplicate")).sum())}
    return row


def subset_rows(pool: Path, args, shift: int, d: int, scorer: Path, rater_runs: Path | None) -> dict:
    """``{scorer label: {"without": [rows per seed], "with": [...]}}``: the rater's runs (if given), the
    ``scorer`` file and their rank combination."""
    ids, kind, pairs, _ = ground_truth(pool)
    hashes = pool_hashes(pool / "train", ids, 32, args.hash, shift, str(pool))
    groups = group(hashes, d)
    out = {}
    for seed in args.seeds:
        sources = {"CLIP-score filter": [scorer]}
        if rater_runs is not None:
            rater = rater_runs / f"seed{seed}" / "scores.parquet"
            sources = {"rater": [rater], **sources, "combined (rank)": [rater, scorer]}
        for label, files in sources.items():
            scores = ScoreCombination(files)(type("Pool", (), {"sample_ids": ids})())
            base, _ = choose_subset(len(ids), scores=scores, keep_ratio=args.keep_ratio, method="top_k", seed=seed)
            eligible = keep_best(groups, scores, seed)
            idx, _ = select_eligible(scores, eligible, args.keep_ratio, "top_k", seed, {})
            entry = out.setdefault(label, {"without": [], "with": []})
            entry["without"].append(subset_row(ids, kind, pairs, base))
            entry["with"].append(subset_row(ids, kind, pairs, idx, ~eligible))
    return out


def search_scaling(pool: Path, args, shift: int, distances: list[int]) -> list[dict]:
    """CPU s and peak memory of :func:`alchemist_pl.dedup.group` on the pool's hashes repeated ``tiles``
    times, each copy XORed with its own random 64-bit mask (distinct hashes, each copy with the pool's
    own near-duplicate structure; no near-duplicates across copies)."""
    ids = ground_truth(pool)[0]
    hashes = pool_hashes(pool / "train", ids, 32, args.hash, shift, str(pool))
    rng, rows = np.random.default_rng(0), []
    for tiles in args.search_tiles:
        masks = rng.integers(0, 2**63, size=tiles, dtype=np.int64).astype(np.uint64) << np.uint64(1)
        big = np.concatenate([hashes ^ m for m in masks])
        for d in distances:
            t = time.process_time()
            groups = group(big, d)
            cpu = time.process_time() - t
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append(
                {
                    "n": len(big),
                    "hashes": big.size,
                    "d": d,
                    "cpu_s": cpu,
                    "groups": int(groups.max() + 1),
                    "peak_mb": peak,
                }
            )
    return rows


def render(args, part1: dict, chosen: tuple[int, int], part2: dict, started: float, host: str, part3: list) -> str:
    lines = [
        "# Near-duplicate removal on planted-noise pools",
        "",
        f"- command: `python benchmarks/dedup.py {' '.join(sys.argv[1:])}`",
        f"- commit: `{commit('alchemist_pl', 'conf', 'benchmarks/dedup.py')}`",
        f"- machine: {host}; load average at end {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {time.time() - started:.0f} s",
        f"- hash: imagehash `{args.hash}` (64 bits) of each image decoded at 32 px; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "",
        "## 1. Grouping against the planted pairs",
        "",
    ]
    for pool, (rows, info) in part1.items():
        lines += [
            f"`{pool}`: {info['n']} samples, {info['planted']} planted pairs, {info['intact']} with an intact source.",
            "",
        ]
        lines += ["| max_shift | max_distance | pairs within | planted among them | pair precision | clean–clean pairs | recall | recall (intact) | F1 | groups | samples in groups | search CPU s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            mark = " **(chosen)**" if (r["shift"], r["d"]) == chosen else ""
            lines.append(
                f"| {r['shift']} | {r['d']}{mark} | {r['pairs']} | {r['planted']} | {r['precision']:.3f} | {r['clean_clean']} | "
                f"{r['recall']:.3f} | {r['recall_intact']:.3f} | {r['f1']:.3f} | {r['groups']} | {r['in_groups']} | {r['search_s']:.3f} |"
            )
        cost = "; ".join(f"{k}: {1000 * v:.2f} ms" for k, v in info["cost"].items())
        lines += ["", f"CPU time per sample (one thread): {cost}.", ""]
    lines += [
        f"Chosen on the first pool (largest F1 of pair precision and intact recall): max_shift {chosen[0]}, max_distance {chosen[1]}.",
        "",
        f"## 2. Top-k {args.keep_ratio:.0%} subset, without and with dedup (chosen setting)",
        "",
        f"Mean ± std over seeds {args.seeds}: the rater's runs `{args.rater_runs}/seed{{S}}/scores.parquet` (first",
        f"pool only); the CLIP-score filter, one file per pool (`{args.scorer_scores}`), so its rows vary only",
        "through the seeded order of equal scores; combined: the rank sum of both (`scorer=combined`).",
        "Per-kind columns count samples of that kind in the subset; `both in subset`: planted pairs with both",
        "members in the subset; `removed`: samples dedup made ineligible (the lower-scored members of their",
        "groups); `clean removed` includes sources whose planted copy scored higher (the copy stands in for",
        "them); `clean non source removed`: clean samples that are no planted pair's source (emoji variants",
        "and identical emoji of the pool itself).",
        "",
    ]
    cols = ["corrupted_share", *KINDS, "both_in_subset", "removed", "clean_removed", "clean_non_source_removed"]
    cols.append("near_duplicate_removed")
    lines += [
        "| pool | scores | dedup | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for pool, entries in part2.items():
        for label, entry in entries.items():
            for how in ("without", "with"):
                cells = [mean_std([r.get(c) for r in entry[how]], 3 if c == "corrupted_share" else 1) for c in cols]
                lines.append(f"| {Path(pool).name} | {label} | {how} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## 3. The search at larger N",
        "",
        "`alchemist_pl.dedup.group` on the first pool's hashes repeated N / 4000 times, each copy XORed with its",
        "own random 64-bit mask: distinct hashes with the pool's own near-duplicate structure in each copy and",
        "none across copies (a real pool of that size has more band collisions). Peak memory: the process's",
        f"maximum resident set so far. max_shift {chosen[0]}.",
        "",
    ]
    lines += ["| samples | hashes | max_distance | group() CPU s | groups | peak MB |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['n']} | {r['hashes']} | {r['d']} | {r['cpu_s']:.2f} | {r['groups']} | {r['peak_mb']:.0f} |"
        for r in part3
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pools", required=True, help="comma-separated pool folders; the first chooses the setting")
    p.add_argument("--rater-runs", type=Path, required=True)
    p.add_argument("--scorer-scores", required=True, help="comma-separated: a scores file of each pool")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--shifts", default="0,1,2")
    p.add_argument("--distances", default="0,2,4,6,8")
    p.add_argument("--hash", default="phash")
    p.add_argument("--keep-ratio", type=float, default=0.5)
    p.add_argument("--search-tiles", default="1,10,100", help="part 3: copies of the first pool's hashes")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.search_tiles = [int(t) for t in args.search_tiles.split(",")]
    started, host = time.time(), machine()
    shifts, distances = [int(s) for s in args.shifts.split(",")], [int(d) for d in args.distances.split(",")]
    pools = [Path(x) for x in args.pools.split(",")]
    part1 = {str(pool): grouping_rows(pool, shifts, distances, args.hash) for pool in pools}
    best = max(part1[str(pools[0])][0], key=lambda r: r["f1"])
    chosen = (best["shift"], best["d"])
    scorers = [Path(x) for x in args.scorer_scores.split(",")]
    part2 = {
        str(pool): subset_rows(pool, args, *chosen, scorer, args.rater_runs if i == 0 else None)
        for i, (pool, scorer) in enumerate(zip(pools, scorers))
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    part3 = search_scaling(pools[0], args, chosen[0], sorted({chosen[1], 2}))
    args.out.write_text(render(args, part1, chosen, part2, started, host, part3))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
