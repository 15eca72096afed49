"""alchemist-pl: meta-gradient data selection for text-to-image models (Alchemist, arXiv 2512.16905).

The parts, from the data up (each imports only those above it):

    data, text, emoji, corruption   datasets (webdataset shards or image folders) with cached
                                    caption embeddings; the embedded emoji data and planted noise
    pixels, runtime                 uint8 <-> [-1, 1]; plumbing (atomic writes, process group,
                                    trainer/loggers/callbacks from the config, summary.json)
    scores                          scores.parquet / subset.parquet keyed by sample_id
    pruning                         rank percentiles, Shift-Gsample and the other selections;
                                    choose_subset, the one place a training subset is chosen
    sampler, datamodule             SubsetDistributedSampler; the rating and training DataModules
    diffusion, sampling             denoising loss and timesteps; CFG sampling and image grids
    rater, metagrad, bilevel        the Group-MLP rater, meta-gradients, the bilevel LightningModule
    t2i                             the downstream text-to-image LightningModule
    domain_encoder, metrics,        the domain evaluator, domain FID/KID/CLIP score, and the
    evaluation                      callback that evaluates during training
    scoring, heuristics, streaming  scoring a pool: rater inference, CLIP-score and image heuristics,
                                    shard-by-shard scoring of large pools
    analysis, compare               rating and subset quality on planted noise; reports over runs
    stages                          rate, score, prune, train, pipeline, and run(cfg) for train.py
"""

__version__ = "0.1.0"
