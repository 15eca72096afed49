"""Planted web-style noise: a copy of a clean training pool in which a known fraction is corrupted.

kinds   the six corruption kinds (caption_swap, blur, noise, blank, collage, near_duplicate)
        and :func:`corrupt_image`, which applies one to a uint8 image
pool    :func:`build_corrupted_pool` (shards + ``corruptions.parquet`` ground truth), reading
        the ground truth back, and the command line (``python -m alchemist_pl.corruption``)
"""

from .kinds import CLEAN, KINDS, corrupt_image
from .pool import (
    FORMAT_VERSION,
    GROUND_TRUTH,
    MANIFEST,
    build_corrupted_pool,
    ground_truth_for,
    main,
    read_ground_truth,
)

__all__ = [
    "CLEAN",
    "FORMAT_VERSION",
    "GROUND_TRUTH",
    "KINDS",
    "MANIFEST",
    "build_corrupted_pool",
    "corrupt_image",
    "ground_truth_for",
    "main",
    "read_ground_truth",
]
