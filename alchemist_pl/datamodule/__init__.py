"""LightningDataModules for rating (pool + D_val) and for training on a subset (train + test).

base        split loading memoised per process, loaders, RNG state saved with checkpoints
rating      RatingDataModule: pool and D_val for the bilevel loop
training    TrainingDataModule: the training subset (chosen once) and the test split
"""

from .base import BaseDataModule, load_split
from .rating import RatingDataModule
from .training import TrainingDataModule

__all__ = ["BaseDataModule", "RatingDataModule", "TrainingDataModule", "load_split"]
