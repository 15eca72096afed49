"""Caption agreement on a planted-noise pool: an image-caption encoder trained on D_val, on the pool itself, or
cross-fitted over folds of the pool (``alchemist_pl.caption_crossfit``, the default rating's caption term).

    python benchmarks/caption_crossfit.py --pools 0 --seeds 0,1 --results benchmarks/results/caption-crossfit-f2.md

For each pool seed P (``data/emoji-web-f0.3-n4000-sP``, built by the rate stage with ``corruption=web
corruption.pool_size=4000 corruption.seed=P``) and encoder seed S, in this process on one thread: a
:class:`~alchemist_pl.domain_encoder.DomainEncoder` (the CLIP-score filter's encoder: contrastive against
the frozen MiniLM caption embeddings, batch 256, lr 2e-3) trained on the clean D_val (40 epochs: the
``scorer=clip_score`` setting), on the whole pool (10 or 20 epochs; each sample then scored by an encoder
that trained on it), or cross-fitted (each fold scored by an encoder trained on the other folds). Score:
cos(image embedding, caption embedding). AUROC clean vs corrupted overall and per kind and the corrupted
share of the top-k 50 % (:func:`alchemist_pl.audit.separation`), mean ± std over the encoder seeds; CPU
seconds per pool sample of training and scoring.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's alchemist_pl, not another installed copy
sys.path.insert(0, str(ROOT / "benchmarks"))

from stamp import commit, machine, mean_std  # noqa: E402

from alchemist_pl.audit import separation  # noqa: E402
from alchemist_pl.caption_crossfit import CrossFitCaptionScorer  # noqa: E402
from alchemist_pl.corruption import GROUND_TRUTH, read_ground_truth  # noqa: E402
from alchemist_pl.data import load_split  # noqa: E402
from alchemist_pl.domain_encoder import train_domain_encoder  # noqa: E402
from alchemist_pl.scoring import caption_agreement  # noqa: E402

COLUMNS = ("all", "caption_swap", "collage", "near_duplicate", "blur", "noise", "blank", "top50_corrupted_share")


def trained_on(data, epochs: int):
    """A scorer: an encoder trained on ``data`` (None: the pool itself) for ``epochs``, scoring the pool."""

    def score(pool, seed: int) -> np.ndarray:
        enc = train_domain_encoder(pool if data is None else data, epochs=epochs, batch_size=256, lr=2e-3, seed=seed)
        return caption_agreement(enc, pool).numpy()

    return score


def crossfit(folds: int, epochs: int):
    return lambda pool, seed: CrossFitCaptionScorer(folds=folds, epochs=epochs, seed=seed)(pool)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pools", default="0")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/caption-crossfit-f2.md"))
    a = p.parse_args()
    torch.set_num_threads(1)
    host, started = machine(), time.time()
    data = ROOT / "data"
    val = load_split(data / "emoji" / "val", 32, data / "cache", None, 16)
    variants = {
        "D_val, 40 epochs (the CLIP-score filter)": trained_on(val, 40),
        "the whole pool, 10 epochs (not cross-fitted)": trained_on(None, 10),
        "the whole pool, 20 epochs (not cross-fitted)": trained_on(None, 20),
        "cross-fit, 2 folds, 10 epochs (the default)": crossfit(2, 10),
        "cross-fit, 2 folds, 20 epochs": crossfit(2, 20),
        "cross-fit, 5 folds, 10 epochs": crossfit(5, 10),
    }
    seeds = [int(s) for s in a.seeds.split(",")]
    lines = [
        "# Caption agreement: encoder trained on D_val, on the pool, or cross-fitted on the pool",
        "",
        f"- command: `python benchmarks/caption_crossfit.py {' '.join(sys.argv[1:])}`",
        f"- commit: `{commit('alchemist_pl', 'conf', 'benchmarks/caption_crossfit.py')}`",
        f"- machine: {host}",
        "",
        (__doc__ or "").split("\n\n", 2)[2].strip(),
    ]
    for pool_seed in [int(x) for x in a.pools.split(",")]:
        pool_dir = data / f"emoji-web-f0.3-n4000-s{pool_seed}"
        pool = load_split(pool_dir / "train", 32, data / "cache", None, 16)
        truth = read_ground_truth(pool_dir / GROUND_TRUTH)
        kinds = np.array([truth[s] for s in pool.sample_ids], dtype=object)
        lines += ["", f"## pool seed {pool_seed} ({len(pool)} samples), encoder seeds {seeds}", "",
                  "| encoder | " + " | ".join(COLUMNS) + " | CPU ms / sample |", "|---|" + "---|" * (len(COLUMNS) + 1)]  # fmt: skip
        for label, score in variants.items():
            rows, cpu = [], []
            for seed in seeds:
                t0 = time.process_time()
                rows.append(separation(score(pool, seed), kinds))
                cpu.append(1e3 * (time.process_time() - t0) / len(pool))
            cells = [mean_std([r[c] for r in rows], 3) for c in COLUMNS]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {np.mean(cpu):.1f} |")
            print(lines[-1], flush=True)
    lines += [
        "",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {time.time() - started:.0f} s",
    ]
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text("\n".join(lines) + "\n")
    print(a.results.read_text())


if __name__ == "__main__":
    main()
