"""Task generators and splitting (NumPy only, no TensorFlow import)."""

from __future__ import annotations

import numpy as np

from pipeline.core.config import AddTwoNumbersData, FindMaxData, PlantedFeatureData, PlantedRegionData, PlantedStepData
from pipeline.data.synthetic import (
    Dataset,
    add_two_numbers,
    find_max,
    planted_feature,
    planted_region,
    planted_step,
    sequence_lengths,
)


def generate(data_cfg, rng: np.random.Generator) -> Dataset:
    """All samples of the configured task."""
    if isinstance(data_cfg, PlantedStepData):
        return planted_step(data_cfg.n_samples, data_cfg.time_steps, data_cfg.n_features, data_cfg.planted_step, rng)
    if isinstance(data_cfg, PlantedRegionData):
        return planted_region(
            data_cfg.n_samples,
            data_cfg.time_steps,
            data_cfg.n_features,
            data_cfg.region_length,
            data_cfg.amplitude,
            rng,
        )
    if isinstance(data_cfg, PlantedFeatureData):
        return planted_feature(data_cfg.n_samples, data_cfg.n_features, data_cfg.planted_index, rng)
    if isinstance(data_cfg, FindMaxData):
        return find_max(data_cfg.n_samples, data_cfg.time_steps, rng, data_cfg.min_length)
    if isinstance(data_cfg, AddTwoNumbersData):
        return add_two_numbers(data_cfg.n_samples, data_cfg.time_steps, rng, data_cfg.min_length)
    raise TypeError(f"no generator for data config {type(data_cfg).__name__}")


def split(dataset: Dataset, val_fraction: float, test_fraction: float, rng: np.random.Generator) -> dict[str, Dataset]:
    """Shuffle, then cut into train / val / test by the given fractions."""
    order = rng.permutation(len(dataset))
    n_val = int(len(dataset) * val_fraction)
    n_test = int(len(dataset) * test_fraction)
    return {
        "test": dataset.take(order[:n_test]),
        "val": dataset.take(order[n_test : n_test + n_val]),
        "train": dataset.take(order[n_test + n_val :]),
    }


__all__ = [
    "Dataset",
    "add_two_numbers",
    "find_max",
    "generate",
    "planted_feature",
    "planted_region",
    "planted_step",
    "sequence_lengths",
    "split",
]
