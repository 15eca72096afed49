"""alchemist-pl: meta-gradient data selection for text-to-image models (Alchemist, arXiv 2512.16905).

The parts, from the data up (each imports only those above it):

    errors, images, shards          DataError; decoding images as a viewer shows them; reading
                                    webdataset shards (key rule, truncation, layout errors)
    data, text, emoji, corruption   datasets (webdataset shards or image folders) with cached
                                    caption embeddings; the embedded emoji data and planted noise
    resolvers                       the config's OmegaConf resolvers (registered on import)
    pixels, runtime                 uint8 <-> [-1, 1]; plumbing (atomic writes, process group,
                                    trainer/loggers/callbacks from the config, summary.json)
    scores                          scores.parquet / subset.parquet keyed by sample_id
    autoencoder, latents            the small AutoencoderKL; pixels <-> VAE latents, cached per split
    ranking, subset_draws, pruning  rank percentiles with ties; the O(N) k-of-N draws; Shift-Gsample
                                    and the other selections; choose_subset, the one place a subset
                                    is chosen
    preflight, resume               checks before training (lengths, batches, evaluation);
                                    resuming only the same run's checkpoint
    sampler, datamodule             the DistributedSampler subclasses (subset shards, the rating
                                    budget's stream); the rating and training DataModules
    diffusion, sampling             denoising loss and timesteps; CFG sampling and image grids
    plugins                         the contracts of a user's own proxy (per-sample loss hook) and
                                    downstream model
    rater, metagrad, draws,         the Group-MLP rater, meta-gradients, the (t, ε) draws θ and θ′
    bilevel                         share, the bilevel LightningModule
    t2i                             the downstream text-to-image LightningModule
    domain_encoder, metrics,        the domain evaluator, domain FID/KID/CLIP score, and the
    evaluation                      callback that evaluates during training
    scoring, heuristics,            scoring a pool: rater inference, CLIP-score and image heuristics,
    score_combination,              several scorers' score files combined into one,
    decoded_cache, streaming        shards' decoded pixels cached once (memory-mapped), shard-by-shard
                                    scoring of large pools
    analysis, audit                 rating and subset quality on planted noise; the offline signal
                                    audit (value gap, caption contrast per timestep)
    compare, wandb_log,             reports over runs: report.md and plots, offline W&B run
    wandb_report                    records, the W&B comparison report
    stages                          rate, score, prune, train, pipeline, and run(cfg) for train.py
"""

from .resolvers import register_resolvers

__version__ = "0.1.0"

register_resolvers()
