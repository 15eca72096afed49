"""Rating with the rater's replay buffer on the planted-noise pool: ``signal_rating.py``'s protocol and report
with the replay variants below added to its variants.

    python benchmarks/rater_amortisation_rating.py --out outputs/amort-rating \
        --results benchmarks/results/rater-amortisation-rating-f2 --seeds 0,1,2 --variants replay4_reg \
        --cost-variants first_order,default,replay4,replay4_reg

Every option of ``signal_rating.py`` applies (``--report-only`` rewrites the report from the runs in
``--out``; a ``--out/default`` folder holding the shipped defaults' runs is reported beside them).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import signal_rating  # noqa: E402

REPLAY = {
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
}

if __name__ == "__main__":
    signal_rating.VARIANTS.update(REPLAY)
    signal_rating.main()
