"""Training's determinism and input: seeded, deterministic ops; each epoch's batches drawn from
(seed, epoch) alone, so that a resumed training sees the batches an uninterrupted one did; window
slicing, the series augmentation."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.data import sequence_lengths


def make_deterministic(seed: int) -> None:
    """Same seed, same numbers on CPU: seeded Python/NumPy/TF RNGs and deterministic TF ops."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def window_slices(x: np.ndarray, fraction: float, rng: np.random.Generator, padded: bool = False) -> np.ndarray:
    """Window slicing (Le Guennec et al. 2016): each series of x [n, time, channels] replaced by a
    window of `fraction` of its valid steps, at a start drawn from `rng`, stretched back by linear
    interpolation to the series' valid length; padding stays where it was. Series of fewer than
    3 valid steps are kept as they are."""
    out = x.copy()
    lengths = sequence_lengths(x) if padded else np.full(len(x), x.shape[1])
    for row, length in enumerate(lengths):
        if length < 3:
            continue
        window = max(2, round(fraction * length))
        start = rng.integers(0, length - window + 1)
        positions = start + np.linspace(0.0, window - 1, length)  # [length], in the window's steps
        left = np.minimum(np.floor(positions).astype(int), length - 2)
        weight = (positions - left)[:, None]  # [length, 1]
        out[row, :length] = (1 - weight) * x[row, left] + weight * x[row, left + 1]
    return out


class EpochBatches(keras.callbacks.Callback):
    """The training split as a tf.data pipeline with prefetch. Epoch e visits the samples in a
    permutation drawn from (seed, e) alone, so a run resumed at epoch e sees the same batches as
    an uninterrupted one. x [samples, ...], y [samples, ...] -> batches of `batch_size`; a last
    batch of one sample joins the batch before it (BatchNormalization cannot normalise a batch
    of one). With `window_slice` (series x [samples, time, channels] only), each series of a
    batch is a random window of that fraction of its valid steps, stretched back to their
    number (drawn from (seed, e) too; `padded`: the series end in padding)."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        seed: int,
        window_slice: float | None = None,
        padded: bool = False,
    ):
        super().__init__()
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.window_slice, self.padded = window_slice, padded
        self.epoch = 0
        self._epoch_x = self._epoch_y = None  # tf.Variable: the epoch's samples, once dataset() is made

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch  # before the epoch's iterator starts
        if self._epoch_x is not None:
            self._draw_epoch()

    def _epoch(self) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's samples (x, y) in its permutation, each series a window with window_slice."""
        draws = np.random.default_rng([self.seed, self.epoch])
        order = draws.permutation(len(self.x))
        x = self.x[order]
        if self.window_slice:
            x = window_slices(x, self.window_slice, draws, self.padded)
        return x, self.y[order]

    def _batches(self):
        x, y = self._epoch()
        for start, stop in self.bounds():
            yield x[start:stop], y[start:stop]

    def bounds(self) -> list[tuple[int, int]]:
        """(start, stop) of each batch in an epoch's permutation."""
        starts = list(range(0, len(self.x), self.batch_size))
        if len(starts) > 1 and len(self.x) - starts[-1] == 1:
            starts.pop()  # the lone last sample goes to the batch before it
        return list(zip(starts, [*starts[1:], len(self.x)]))

    def _signature(self) -> tuple[tf.TensorSpec, tf.TensorSpec]:
        return tuple(tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in (self.x, self.y))

    def dataset(self) -> tf.data.Dataset:
        """The batches of _batches(), cut by TensorFlow from variables that hold the epoch's
        samples, drawn at the epoch's start: under op determinism, faster than tf.data's
        from_generator over the same batches (pipeline.tools.trainbench measures both)."""
        self._epoch_x = tf.Variable(self.x, trainable=False, name="epoch_x")
        self._epoch_y = tf.Variable(self.y, trainable=False, name="epoch_y")
        self._draw_epoch()
        bounds = tf.constant(self.bounds(), tf.int64)  # [batches, 2]
        return (
            tf.data.Dataset.from_tensor_slices(bounds)
            .map(lambda b: (self._epoch_x[b[0] : b[1]], self._epoch_y[b[0] : b[1]]))
            .prefetch(tf.data.AUTOTUNE)
        )

    def _draw_epoch(self) -> None:
        x, y = self._epoch()
        self._epoch_x.assign(x)
        self._epoch_y.assign(y)

    def replica_dataset(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        """One input pipeline's share of every batch, for Strategy.distribute_datasets_from_function:
        each batch is cut into one part per replica of all workers (sizes differing by at most
        one), and this pipeline yields the parts of its own replicas, each as (x part, y part,
        the batch's size), so that a step over all replicas covers the batch exactly once."""
        replicas = context.num_replicas_in_sync
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def parts():
            for x, y in self._batches():
                count = np.int32(len(x))
                for part in range(first, first + local):
                    rows = np.array_split(np.arange(count), replicas)[part]
                    yield x[rows], y[rows], count

        signature = (*self._signature(), tf.TensorSpec((), tf.int32))
        return tf.data.Dataset.from_generator(parts, output_signature=signature).prefetch(tf.data.AUTOTUNE)
