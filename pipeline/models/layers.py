"""Keras attention layers, serializable and loadable with `safe_mode=True`."""

from __future__ import annotations

import math

import keras
from keras import ops

SCORES = ("location", "dot", "general", "additive", "scaled_dot", "last_state")
QUERIES = ("last", "learned")
MASKED_SCORE = -1e9


def _last_step(states, mask):
    """[batch, time] one-hot on each sequence's last valid step (the last step without a mask)."""
    valid = ops.ones_like(states[:, :, 0]) if mask is None else ops.cast(mask, states.dtype)
    last = ops.sum(valid, axis=1, keepdims=True) - 1.0  # [batch, 1]
    steps = ops.cast(ops.arange(ops.shape(states)[1]), states.dtype)
    return ops.cast(ops.equal(steps, last), states.dtype)


def _select(states, one_hot):
    """[batch, units]: the state each one-hot row [batch, time] points at."""
    return ops.sum(states * ops.expand_dims(one_hot, -1), axis=1)


class _AttentionPooling(keras.layers.Layer):
    """Shared by the pooling layers: states [batch, time, units] in, (context [batch, units],
    attention [batch, time]) out; the mask is consumed here and not passed on."""

    def compute_mask(self, states, mask=None):
        return [None, None]

    def compute_output_shape(self, states_shape):
        batch, time, units = states_shape
        return (batch, units), (batch, time)


@keras.saving.register_keras_serializable(package="pipeline")
class TemporalAttention(_AttentionPooling):
    """Attention pooling over time: one score per step, softmax over steps, weighted sum.

    With h_t the state at step t and q the query (the last state h_T, or a learned vector):
        location    s_t = w · h_t                       (a scorer of the state alone)
        dot         s_t = q · h_t                       (Luong)
        general     s_t = q · W h_t                     (Luong)
        scaled_dot  s_t = q · h_t / sqrt(units)
        additive    s_t = v · tanh(W1 q + W2 h_t)       (Bahdanau)
    then s_t += p_t if `position_bias`; a = softmax(s over t); context = Σ_t a_t h_t.
    "last_state" is the no-attention baseline: a is one-hot on the last step, context = h_T.
    With a mask (padded sequences), padded steps get exactly 0 weight and "the last state" is
    the last valid one.

    Args:
        score: one of "location", "dot", "general", "additive", "scaled_dot", "last_state".
        query: "last" (the state at the last step) or "learned" (a trained vector); unused by
            "location".
        position_bias: add a learned score p_t per time step, a prior over positions. Needs a
            fixed number of time steps.

    Call arguments:
        states: float32 [batch, time, units], e.g. a recurrent layer's `return_sequences` output.
        mask: optional bool [batch, time], True on valid steps (Keras passes it from Masking).

    Returns:
        (context [batch, units], attention [batch, time]); each attention row sums to 1.
    """

    def __init__(self, score="location", query="last", position_bias=False, **kwargs):
        super().__init__(**kwargs)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if query not in QUERIES:
            raise ValueError(f"query must be one of {QUERIES}, got {query!r}")
        if not isinstance(position_bias, bool):
            raise ValueError(f"position_bias must be a bool, got {position_bias!r}")
        self.score = score
        self.query = query
        self.position_bias = position_bias

    def build(self, states_shape):
        if len(states_shape) != 3:
            raise ValueError(
                f"TemporalAttention expects states [batch, time, units], got shape {states_shape}"
            )
        _, time, units = states_shape
        if self.position_bias and time is None:
            raise ValueError(
                "TemporalAttention(position_bias=True) needs a fixed number of time steps, "
                f"got states of shape {states_shape}"
            )
        self.units = units
        if self.score == "last_state":
            pass  # no weights: the baseline reads the last state
        elif self.score == "location":
            self.score_kernel = self.add_weight(name="score_kernel", shape=(units, 1))
        elif self.query == "learned":
            self.query_vector = self.add_weight(name="query_vector", shape=(units,))
        if self.score == "general":
            self.bilinear_kernel = self.add_weight(name="bilinear_kernel", shape=(units, units))
        if self.score == "additive":
            self.query_kernel = self.add_weight(name="query_kernel", shape=(units, units))
            self.state_kernel = self.add_weight(name="state_kernel", shape=(units, units))
            self.additive_bias = self.add_weight(name="additive_bias", shape=(units,), initializer="zeros")
            self.additive_vector = self.add_weight(name="additive_vector", shape=(units, 1))
        if self.position_bias:
            self.position_scores = self.add_weight(
                name="position_scores", shape=(time,), initializer="zeros"
            )

    def _query(self, states, last_step):
        """[batch, units]: the last valid state, or the learned vector repeated over the batch."""
        if self.query == "last":
            return _select(states, last_step)
        return ops.zeros_like(states[:, 0, :]) + self.query_vector

    def _scores(self, states, last_step):
        """[batch, time] raw scores."""
        if self.score == "location":  # a product and a sum: no reshapes around a matmul in ONNX
            return ops.sum(states * self.score_kernel[:, 0], axis=-1)
        query = self._query(states, last_step)
        if self.score == "additive":
            hidden = ops.tanh(
                ops.expand_dims(ops.matmul(query, self.query_kernel), 1)
                + ops.matmul(states, self.state_kernel)
                + self.additive_bias
            )
            return ops.squeeze(ops.matmul(hidden, self.additive_vector), axis=-1)
        if self.score == "general":
            query = ops.matmul(query, self.bilinear_kernel)
        scores = ops.sum(states * ops.expand_dims(query, 1), axis=-1)
        return scores / math.sqrt(self.units) if self.score == "scaled_dot" else scores

    def call(self, states, mask=None):
        last_step = _last_step(states, mask)
        if self.score == "last_state":
            return _select(states, last_step), last_step
        scores = self._scores(states, last_step)
        if self.position_bias:
            scores = scores + self.position_scores
        if mask is not None:
            scores = ops.where(mask, scores, MASKED_SCORE)  # exp underflows to exactly 0
        attention = ops.softmax(scores, axis=-1)  # [batch, time]
        context = ops.sum(states * ops.expand_dims(attention, -1), axis=1)  # [batch, units]
        return context, attention

    def get_config(self):
        return {
            **super().get_config(),
            "score": self.score,
            "query": self.query,
            "position_bias": self.position_bias,
        }


@keras.saving.register_keras_serializable(package="pipeline")
class InputAttention(keras.layers.Layer):
    """Attention over time on the raw inputs (the classic "attention before the LSTM").

    For each feature f: a_f = softmax over t of (x[:, :, f] · W + b), W [time, time], b [time];
    the inputs are weighted step by step, x'[:, t, f] = a_f[t] · x[:, t, f].

    Args:
        shared: average the per-feature vectors into one vector shared by all features.

    Call arguments:
        x: float32 [batch, time, features], with a fixed number of time steps.

    Returns:
        (weighted inputs [batch, time, features], attention [batch, time], the mean of the
        per-feature vectors; each row sums to 1).
    """

    def __init__(self, shared: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(shared, bool):
            raise ValueError(f"shared must be a bool, got {shared!r}")
        self.shared = shared

    def build(self, x_shape):
        if len(x_shape) != 3 or x_shape[1] is None:
            raise ValueError(
                f"InputAttention expects x [batch, time, features] with a fixed time, got {x_shape}"
            )
        time = x_shape[1]
        self.kernel = self.add_weight(name="kernel", shape=(time, time))
        self.bias = self.add_weight(name="bias", shape=(time,), initializer="zeros")

    def call(self, x):
        per_feature = ops.transpose(x, (0, 2, 1))  # [batch, features, time]
        weights = ops.softmax(ops.matmul(per_feature, self.kernel) + self.bias, axis=-1)
        if self.shared:
            weights = ops.mean(weights, axis=1, keepdims=True)  # [batch, 1, time]
        weighted = x * ops.transpose(weights, (0, 2, 1))
        return weighted, ops.mean(weights, axis=1)

    def compute_output_shape(self, x_shape):
        return x_shape, (x_shape[0], x_shape[1])

    def get_config(self):
        return {**super().get_config(), "shared": self.shared}


@keras.saving.register_keras_serializable(package="pipeline")
class MultiHeadAttentionPooling(_AttentionPooling):
    """Pools states with Keras MultiHeadAttention, queried by one learned vector.

    Args:
        heads: number of attention heads.
        key_dim: size of each head's query and key projections.

    Call arguments:
        states: float32 [batch, time, units].
        mask: optional bool [batch, time], True on valid steps; padded steps get 0 weight.

    Returns:
        (context [batch, units], attention [batch, time]: the heads' weights averaged, so
        each row sums to 1).
    """

    def __init__(self, heads: int = 4, key_dim: int = 8, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("heads", heads), ("key_dim", key_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.heads = heads
        self.key_dim = key_dim
        self.attention = keras.layers.MultiHeadAttention(heads, key_dim, name="multi_head")

    def build(self, states_shape):
        if len(states_shape) != 3:
            raise ValueError(
                f"MultiHeadAttentionPooling expects states [batch, time, units], got {states_shape}"
            )
        units = states_shape[-1]
        self.query = self.add_weight(name="query", shape=(1, 1, units))
        self.attention.build((states_shape[0], 1, units), states_shape)

    def call(self, states, mask=None):
        query = ops.zeros_like(states[:, :1, :]) + self.query  # [batch, 1, units]
        attention_mask = None if mask is None else ops.expand_dims(mask, 1)  # [batch, 1, time]
        context, scores = self.attention(
            query, states, attention_mask=attention_mask, return_attention_scores=True
        )
        return context[:, 0, :], ops.mean(scores[:, :, 0, :], axis=1)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "key_dim": self.key_dim}


NORMALIZATIONS = ("per_series", "per_channel", "none")


@keras.saving.register_keras_serializable(package="pipeline")
class Standardize(keras.layers.Layer):
    """z-normalisation inside the model, so that a deployed model takes raw series.

        per_series   each series and channel by its own mean and standard deviation over its
                     valid steps (computed at inference; nothing fitted)
        per_channel  each channel by the mean and standard deviation fitted on the training split
        none         values unchanged
    Padded steps (mask False) come out as exactly 0, so the layers after see zero padding.

    Args:
        mode: one of "per_series", "per_channel", "none".
        mean, std: per channel (lists of `channels` floats), for "per_channel" only.

    Call arguments:
        x: float32 [batch, time, channels]; mask: optional bool [batch, time], True on valid steps.

    Returns:
        float32 [batch, time, channels]; the mask passes through.
    """

    def __init__(self, mode="per_series", mean=None, std=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in NORMALIZATIONS:
            raise ValueError(f"mode must be one of {NORMALIZATIONS}, got {mode!r}")
        if (mode == "per_channel") != (mean is not None and std is not None):
            raise ValueError(f"mean and std are given for mode 'per_channel' only (mode {mode!r})")
        if mode == "per_channel" and (len(mean) != len(std) or min(std) <= 0):
            raise ValueError(f"need one mean and one positive std per channel, got {mean}, {std}")
        self.mode = mode
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]
        self.supports_masking = True

    def call(self, x, mask=None):
        valid = None if mask is None else ops.expand_dims(ops.cast(mask, x.dtype), -1)
        if self.mode == "per_channel":
            x = (x - ops.convert_to_tensor(self.mean, x.dtype)) / ops.convert_to_tensor(self.std, x.dtype)
        elif self.mode == "per_series":
            weights = ops.ones_like(x[:, :, :1]) if valid is None else valid
            count = ops.sum(weights, axis=1, keepdims=True)  # [batch, 1, 1]
            mean = ops.sum(x * weights, axis=1, keepdims=True) / count
            variance = ops.sum(ops.square(x - mean) * weights, axis=1, keepdims=True) / count
            std = ops.sqrt(variance)
            x = (x - mean) / ops.where(std > 1e-8, std, ops.ones_like(std))  # constant series -> 0
        return x if valid is None else x * valid

    def compute_mask(self, x, mask=None):
        return mask

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="pipeline")
class ConvEncoder(keras.layers.Layer):
    """The fully convolutional encoder of time-series classification (Wang et al. 2017):
    blocks of Conv1D ("same" padding) -> BatchNormalization -> ReLU, one per filter count.
    Padded steps are set to 0 after every block, so a series gives the same states whatever
    its padding.

    Args:
        filters: filters of each block, e.g. [128, 256, 128].
        kernel_sizes: kernel size of each block, e.g. [8, 5, 3].

    Call arguments:
        x: float32 [batch, time, channels]; mask: optional bool [batch, time].

    Returns:
        states float32 [batch, time, filters[-1]]; the mask passes through.
    """

    def __init__(self, filters=(128, 256, 128), kernel_sizes=(8, 5, 3), **kwargs):
        super().__init__(**kwargs)
        filters, kernel_sizes = list(filters), list(kernel_sizes)
        if not filters or len(filters) != len(kernel_sizes):
            raise ValueError(
                f"need one kernel size per block, got filters {filters} and kernel_sizes {kernel_sizes}"
            )
        if min(filters + kernel_sizes) < 1:
            raise ValueError(f"filters and kernel sizes must be positive, got {filters}, {kernel_sizes}")
        self.filters, self.kernel_sizes = filters, kernel_sizes
        self.blocks = [
            (
                keras.layers.Conv1D(f, k, padding="same", name=f"conv{i}"),
                keras.layers.BatchNormalization(name=f"norm{i}"),
            )
            for i, (f, k) in enumerate(zip(filters, kernel_sizes))
        ]
        self.supports_masking = True

    def build(self, x_shape):
        shape = tuple(x_shape)
        for conv, norm in self.blocks:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)

    def call(self, x, mask=None, training=None):
        valid = None if mask is None else ops.expand_dims(ops.cast(mask, x.dtype), -1)
        if valid is not None:
            x = x * valid  # zero padding; the product carries no mask into the Conv1D layers
        for conv, norm in self.blocks:
            x = ops.relu(norm(conv(x), training=training))
            if valid is not None:
                x = x * valid
        return x

    def compute_mask(self, x, mask=None):
        return mask

    def compute_output_shape(self, x_shape):
        return (*tuple(x_shape)[:2], self.filters[-1])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_sizes": self.kernel_sizes}
