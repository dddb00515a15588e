"""Augmentation of training batches. NumPy only.

window_slices(x, fraction, rng, padded) -> x' of x's shape
"""

from __future__ import annotations

import numpy as np

from pipeline.core.contract import PAD_VALUE


def valid_lengths(x: np.ndarray, padded: bool) -> np.ndarray:
    """int [n]: each series' steps before its padding (x [n, time, channels]); padded steps hold
    PAD_VALUE on every channel, as the model's masking reads them. Without `padded`: time."""
    if not padded:
        return np.full(len(x), x.shape[1])
    valid = ~np.all(x == PAD_VALUE, axis=2)  # [n, time]
    return np.where(valid.any(axis=1), x.shape[1] - np.argmax(valid[:, ::-1], axis=1), 0)


def window_slices(x: np.ndarray, fraction: float, rng: np.random.Generator, padded: bool = False) -> np.ndarray:
    """Window slicing (Le Guennec et al. 2016): each series of x [n, time, channels] replaced by a
    window of `fraction` of its valid steps, at a start drawn from `rng`, stretched back by linear
    interpolation to the series' valid length; padding stays where it was. Series of fewer than
    3 valid steps are kept as they are."""
    out = x.copy()
    for row, length in enumerate(valid_lengths(x, padded)):
        if length < 3:
            continue
        window = max(2, round(fraction * length))
        start = rng.integers(0, length - window + 1)
        positions = start + np.linspace(0.0, window - 1, length)  # [length], in the window's steps
        left = np.minimum(np.floor(positions).astype(int), length - 2)
        weight = (positions - left)[:, None]  # [length, 1]
        out[row, :length] = (1 - weight) * x[row, left] + weight * x[row, left + 1]
    return out
