#!/usr/bin/env bash
# The value gap of one rating's raw θ, θ′ at several bilevel iterations (scorer=value_gap on its periodic checkpoints).
#   benchmarks/value_gap_by_iteration.sh SEED OUT [ITERATIONS...]    (default iterations: 40 70 100 130)
# Rates pool seed 0 (corruption=web corruption.pool_size=4000) with the defaults and rate.scores=rater, keeping a
# checkpoint every 10 iterations, then scores the pool from each chosen checkpoint; appends each score stage's
# AUROC line to OUT/auroc<SEED>.txt. One thread per process.
set -euo pipefail
cd "$(dirname "$0")/.."
S=$1; OUT=$2; shift 2
ITERS=${*:-40 70 100 130}
export OMP_NUM_THREADS=1
R=$OUT/seed$S
python train.py +experiment=rate corruption=web corruption.pool_size=4000 logger=csv seed="$S" threads=1 rate.scores=rater \
    callbacks.model_checkpoint.every_n_train_steps=10 +callbacks.model_checkpoint.save_top_k=-1 hydra.run.dir="$R"
for it in $ITERS; do
  python train.py +experiment=score scorer=value_gap scorer.run="$R" scorer.checkpoint="$it" scorer.seed="$S" \
      data.train_path=./data/emoji-web-f0.3-n4000-s0/train logger=csv threads=1 hydra.run.dir="$OUT/vg$S-$it"
  grep "AUROC clean" "$OUT/vg$S-$it/train.log" | sed "s/^/it=$it /" >> "$OUT/auroc$S.txt"
done
