"""Rating with the rater's replay buffer on the planted-noise pool: ``signal_rating.py``'s protocol and report
with the replay variants below added to its variants.

    python benchmarks/rater_amortisation_rating.py --out outputs/amort-rating \
        --results benchmarks/results/rater-amortisation-rating-f2 --seeds 0,1,2 --variants replay4_reg \
        --cost-variants first_order,default,replay4,replay4_reg

The replay settings' variants, one variant (3 seeds) per call, the cost table in the first:

    python benchmarks/rater_amortisation_rating.py --out outputs/replay-tuning \
        --results benchmarks/results/replay-tuning-f2 --seeds 0,1,2 --variants replay8_reg_s1024 \
        --cost-variants first_order,default,replay8_reg_s1024,replay16_reg_s2048,replay8_reg,replay4_reg_s1024

Every option of ``signal_rating.py`` applies (``--report-only`` rewrites the report from the runs in
``--out``; a ``--out/default`` folder holding the shipped defaults' runs is reported beside them).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import signal_rating  # noqa: E402

REPLAY = {
    "caption_path": (
        "the defaults + the proxy's pooled caption path (proxy=unet_tiny_text), 10 % caption dropout in both "
        "proxy terms and the mismatched-caption contrast λ = 0.5 at t in [300, 500) in the rater's signal",
        ["proxy=unet_tiny_text", "bilevel.caption_dropout=0.1", "bilevel.caption_contrast_weight=0.5"],
    ),
    "replay4": (
        "the defaults + 4 rater steps per iteration on a buffer of the last 512 (sample, signal) pairs, "
        "instance-head loss",
        ["bilevel.replay_steps=4", "bilevel.replay_size=512", "bilevel.replay_objective=instance"],
    ),
    "replay4_reg": (
        "the defaults + 4 rater steps per iteration on a buffer of the last 512 (sample, signal) pairs, "
        "instance logit regressed on the negated signal",
        ["bilevel.replay_steps=4", "bilevel.replay_size=512", "bilevel.replay_objective=regression"],
    ),
    # each buffer row is replayed about replay_steps times while it is held (B · replay_steps rows drawn per
    # iteration from replay_size rows, each held replay_size / B iterations): the steps set the reuse, the
    # size how old the signals are and how much of the pool one replay batch is drawn from
    "replay8_reg_s1024": (
        "replay4_reg with 8 rater steps per iteration on a buffer of the last 1024 pairs",
        ["bilevel.replay_steps=8", "bilevel.replay_size=1024", "bilevel.replay_objective=regression"],
    ),
    "replay16_reg_s2048": (
        "replay4_reg with 16 rater steps per iteration on a buffer of the last 2048 pairs",
        ["bilevel.replay_steps=16", "bilevel.replay_size=2048", "bilevel.replay_objective=regression"],
    ),
    "replay8_reg": (
        "replay4_reg with 8 rater steps per iteration (buffer of the last 512 pairs)",
        ["bilevel.replay_steps=8", "bilevel.replay_size=512", "bilevel.replay_objective=regression"],
    ),
    "replay4_reg_s1024": (
        "replay4_reg with a buffer of the last 1024 pairs (4 rater steps per iteration)",
        ["bilevel.replay_steps=4", "bilevel.replay_size=1024", "bilevel.replay_objective=regression"],
    ),
}

if __name__ == "__main__":
    signal_rating.VARIANTS.update(REPLAY)
    signal_rating.main()
