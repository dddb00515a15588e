"""Tasks with a planted answer: the position the model should attend to is known.

Shapes: x float32 [n, features] (vector tasks) or [n, time, features] (sequence tasks);
y float32 [n, 1] (0/1 for binary tasks, a real value for regression tasks);
target_positions int64 [n, k], the k true attention positions of each sample.
NumPy only: no TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.contract import PAD_VALUE, valid_positions


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 [n, features] or [n, time, features]
    y: np.ndarray  # float32 [n, 1]
    target_positions: np.ndarray  # int64 [n, k]

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: slice | np.ndarray) -> Dataset:
        return Dataset(self.x[index], self.y[index], self.target_positions[index])


def _binary_targets(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2, size=(n, 1)).astype(np.float32)


def planted_feature(n_samples: int, n_features: int, planted_index: int, rng: np.random.Generator) -> Dataset:
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


def planted_region(
    n_samples: int,
    time_steps: int,
    n_features: int,
    region_length: int,
    amplitude: float,
    rng: np.random.Generator,
) -> Dataset:
    """x [n, time_steps, n_features] standard normal plus, on `region_length` consecutive steps
    from a random start, +amplitude (y = 1) or -amplitude (y = 0) on every feature; the target
    positions [n, region_length] are those steps."""
    y = _binary_targets(n_samples, rng)
    x = rng.standard_normal((n_samples, time_steps, n_features)).astype(np.float32)
    starts = rng.integers(0, time_steps - region_length + 1, size=n_samples)
    positions = (starts[:, None] + np.arange(region_length)[None, :]).astype(np.int64)
    shift = (amplitude * (2 * y - 1)).astype(np.float32)  # [n, 1]
    x[np.arange(n_samples)[:, None], positions, :] += shift[:, :, None]
    return Dataset(x, y, positions)


def find_max(n_samples: int, time_steps: int, rng: np.random.Generator, min_length: int | None = None) -> Dataset:
    """x [n, time_steps, 1] ~ Beta(1/time_steps, 1) (mostly small, a few large values);
    y = max over the valid steps; the true position is the argmax. With min_length below
    time_steps, lengths are uniform in [min_length, time_steps] and the rest is PAD_VALUE."""
    x = rng.beta(1.0 / time_steps, 1.0, size=(n_samples, time_steps, 1)).astype(np.float32)
    valid = _valid_steps(n_samples, time_steps, min_length, rng)
    values = np.where(valid, x[:, :, 0], -np.inf)
    positions = values.argmax(axis=1)[:, None].astype(np.int64)
    y = np.take_along_axis(x[:, :, 0], positions, axis=1).astype(np.float32)
    x[~valid] = PAD_VALUE
    return Dataset(x, y, positions)


def add_two_numbers(
    n_samples: int, time_steps: int, rng: np.random.Generator, min_length: int | None = None
) -> Dataset:
    """x [n, time_steps, 1] uniform on (0, 1), except two delimiters (exactly 0) at distinct,
    non-adjacent steps before the last valid one; y = mean of the two values right after the
    delimiters, which are the true positions. Variable length and padding as in find_max."""
    x = rng.uniform(np.finfo(np.float32).tiny, 1.0, size=(n_samples, time_steps, 1)).astype(np.float32)
    valid = _valid_steps(n_samples, time_steps, min_length, rng)
    delimiters = _two_apart(valid.sum(axis=1) - 1, rng)
    rows = np.arange(n_samples)[:, None]
    x[rows, delimiters, 0] = 0.0
    positions = (delimiters + 1).astype(np.int64)
    y = x[rows, positions, 0].mean(axis=1, keepdims=True).astype(np.float32)
    x[~valid] = PAD_VALUE
    return Dataset(x, y, positions)


def sequence_lengths(x: np.ndarray) -> np.ndarray:
    """[n] number of valid (not padded) steps of each sequence x [n, time, features]."""
    return valid_positions(x).sum(axis=1)


def _valid_steps(n_samples: int, time_steps: int, min_length: int | None, rng: np.random.Generator) -> np.ndarray:
    """[n, time_steps] bool: steps before each sequence's length (all True at fixed length)."""
    if min_length is None or min_length >= time_steps:
        return np.ones((n_samples, time_steps), dtype=bool)
    lengths = rng.integers(min_length, time_steps + 1, size=n_samples)
    return np.arange(time_steps)[None, :] < lengths[:, None]


def _two_apart(high: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[n, 2] sorted pairs, row i drawn uniformly from range(high[i]), at least 2 apart."""
    pairs = np.zeros((len(high), 2), dtype=np.int64)
    pending = np.arange(len(high))
    while len(pending):
        draw = rng.integers(0, high[pending, None], size=(len(pending), 2))
        apart = np.abs(draw[:, 0] - draw[:, 1]) >= 2
        pairs[pending[apart]] = np.sort(draw[apart], axis=1)
        pending = pending[~apart]
    return pairs
