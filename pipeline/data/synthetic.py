"""Tasks with a planted answer: the position the model should attend to is known.

Shapes: x float32 [n, features] (vector tasks) or [n, time, features] (sequence tasks);
y float32 [n, 1] with values 0/1; target_positions int64 [n, k], the true attention positions.
NumPy only: no TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 [n, features] or [n, time, features]
    y: np.ndarray  # float32 [n, 1]
    target_positions: np.ndarray  # int64 [n, k]

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: slice | np.ndarray) -> "Dataset":
        return Dataset(self.x[index], self.y[index], self.target_positions[index])


def _binary_targets(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2, size=(n, 1)).astype(np.float32)


def planted_feature(
    n_samples: int, n_features: int, planted_index: int, rng: np.random.Generator
) -> Dataset:
    """x [n, n_features] standard normal, except x[:, planted_index] = y."""
    y = _binary_targets(n_samples, rng)
    x = rng.standard_normal((n_samples, n_features)).astype(np.float32)
    x[:, planted_index] = y[:, 0]
    positions = np.full((n_samples, 1), planted_index, dtype=np.int64)
    return Dataset(x, y, positions)


def planted_step(
    n_samples: int, time_steps: int, n_features: int, planted_step: int, rng: np.random.Generator
) -> Dataset:
    """x [n, time_steps, n_features] standard normal, except x[:, planted_step, :] = y."""
    y = _binary_targets(n_samples, rng)
    x = rng.standard_normal((n_samples, time_steps, n_features)).astype(np.float32)
    x[:, planted_step, :] = y
    positions = np.full((n_samples, 1), planted_step, dtype=np.int64)
    return Dataset(x, y, positions)
