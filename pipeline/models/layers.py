"""Keras attention layers, serializable and loadable with `safe_mode=True`."""

from __future__ import annotations

import math
from itertools import combinations

import keras
import numpy as np
from keras import ops

from pipeline.core.contract import CONV_PADDINGS, HEAD_READOUTS, MIL_POOLINGS, TASK_TYPES, TEMPORAL_SCORES

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


def _uniform_scores(states):
    """[batch, time] zeros: scores whose softmax is uniform over the valid steps (the uniform-
    attention ablation)."""
    return ops.zeros_like(states[:, :, 0])


def _check_uniform(uniform) -> bool:
    if not isinstance(uniform, bool):
        raise ValueError(f"uniform must be a bool, got {uniform!r}")
    return uniform


@keras.saving.register_keras_serializable(package="pipeline")
class WeightedSum(keras.layers.Layer):
    """Values pooled by given attention weights: values [batch, time, units] and attention
    [batch, time] (rows summing to 1, padded steps 0) -> [batch, units], Σ_t a_t v_t."""

    def call(self, values, attention):
        return ops.sum(values * ops.expand_dims(attention, -1), axis=1)

    def compute_mask(self, values, attention=None, mask=None):
        return None

    def compute_output_shape(self, values_shape, attention_shape=None):
        return values_shape[0], values_shape[2]


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
    Two baselines without attention: "last_state", a one-hot on the last step (context = h_T),
    and "mean", uniform weights (context = the mean of the states: global average pooling).
    With a mask (padded sequences), padded steps get exactly 0 weight and "the last state" is
    the last valid one.

    Args:
        score: one of "location", "dot", "general", "additive", "scaled_dot", "last_state", "mean".
        query: "last" (the state at the last step) or "learned" (a trained vector); unused by
            "location".
        position_bias: add a learned score p_t per time step, a prior over positions. Needs a
            fixed number of time steps.
        uniform: weigh every valid step alike whatever the scores (the uniform-attention
            ablation of a trained model; its weights are kept).

    Call arguments:
        states: float32 [batch, time, units], e.g. a recurrent layer's `return_sequences` output.
        mask: optional bool [batch, time], True on valid steps (Keras passes it from Masking).

    Returns:
        (context [batch, units], attention [batch, time]); each attention row sums to 1.
    """

    def __init__(self, score="location", query="last", position_bias=False, uniform=False, **kwargs):
        super().__init__(**kwargs)
        self.uniform = _check_uniform(uniform)
        if score not in TEMPORAL_SCORES:
            raise ValueError(f"score must be one of {TEMPORAL_SCORES}, got {score!r}")
        if query not in QUERIES:
            raise ValueError(f"query must be one of {QUERIES}, got {query!r}")
        if not isinstance(position_bias, bool):
            raise ValueError(f"position_bias must be a bool, got {position_bias!r}")
        self.score = score
        self.query = query
        self.position_bias = position_bias

    def build(self, states_shape):
        if len(states_shape) != 3:
            raise ValueError(f"TemporalAttention expects states [batch, time, units], got shape {states_shape}")
        _, time, units = states_shape
        if self.position_bias and time is None:
            raise ValueError(
                "TemporalAttention(position_bias=True) needs a fixed number of time steps, "
                f"got states of shape {states_shape}"
            )
        self.units = units
        if self.score in ("last_state", "mean"):
            pass  # no weights: the baselines read the last state or average all of them
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
            self.position_scores = self.add_weight(name="position_scores", shape=(time,), initializer="zeros")

    def _query(self, states, last_step):
        """[batch, units]: the last valid state, or the learned vector repeated over the batch."""
        if self.query == "last":
            return _select(states, last_step)
        return ops.zeros_like(states[:, 0, :]) + self.query_vector

    def _scores(self, states, last_step):
        """[batch, time] raw scores."""
        if self.score == "mean":
            return ops.zeros_like(states[:, :, 0])
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
        if self.uniform:
            scores = _uniform_scores(states)
        elif self.score == "last_state":
            return _select(states, last_step), last_step
        else:
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
            "uniform": self.uniform,
        }


@keras.saving.register_keras_serializable(package="pipeline")
class GatedAttentionPooling(_AttentionPooling):
    """Attention that selects steps instead of singling one out: the attention pooling of MILLET
    (Early et al. 2024, "Inherently interpretable time series classification via multiple instance
    learning"), whose logits equal those of MILLET's additive pooling.

    Each step gets a gate g_t = sigmoid(v · tanh(W h_t + b) + c) in (0, 1), and the context is
    the mean of the gated states, (1/T) Σ_t g_t h_t = ḡ Σ_t a_t h_t: attention a_t = g_t / Σ_s g_s
    (a softmax over t of log g_t, scores that saturate at 0, so steps are turned down rather than
    made to compete for one winner) scaled by the mean gate ḡ. With every gate alike this is
    global average pooling up to the scale; padded steps get gate 0 and T counts valid steps.
    A floor f keeps every step's gate in (f, 1): g_t = f + (1 - f) sigmoid(...), so the context is
    f times the global average plus (1 - f) times the gated mean of the states, and attention stays
    at least f / T on every valid step. The attention is the same for every class; the head's
    `contribution` of each step (LinearHead, with the pooling weights g_t / T) is class-specific.

    Args:
        units: hidden units of the gate's scorer (W [units_in, units]).
        floor: the least gate f in [0, 1) (0: MILLET's gates).
        uniform: weigh every valid step alike, a_t = 1/T, keeping each series' mean gate ḡ (the
            uniform-attention ablation of a trained model; its weights are kept).

    Call arguments:
        states: float32 [batch, time, units_in]; mask: optional bool [batch, time].

    Returns:
        (context [batch, units_in], attention [batch, time], pooling weights [batch, time]: the w_t
        with context = Σ_t w_t h_t, ḡ a_t); each attention row sums to 1.
    """

    def __init__(self, units: int = 8, floor: float = 0.0, uniform: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.uniform = _check_uniform(uniform)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        if not 0 <= floor < 1:
            raise ValueError(f"floor must be in [0, 1), got {floor!r}")
        self.units = units
        self.floor = float(floor)

    def build(self, states_shape):
        units_in = states_shape[-1]
        self.gate_kernel = self.add_weight(name="gate_kernel", shape=(units_in, self.units))
        self.gate_bias = self.add_weight(name="gate_bias", shape=(self.units,), initializer="zeros")
        self.gate_vector = self.add_weight(name="gate_vector", shape=(self.units, 1))
        self.gate_offset = self.add_weight(name="gate_offset", shape=(1,), initializer="zeros")

    def call(self, states, mask=None):
        # Batched matmuls throughout ([1, in, out] weights, [batch, 1, time] attention): exported to
        # ONNX, each is one MatMul on the states, where a Tensordot (reshapes around a Shape of the
        # states) or a product-and-sum would read them again, and again dequantized in int8 models.
        hidden = ops.tanh(ops.matmul(states, self.gate_kernel[None]) + self.gate_bias)  # [batch, time, units]
        gates = ops.sigmoid(ops.squeeze(ops.matmul(hidden, self.gate_vector[None]), axis=-1) + self.gate_offset)
        if self.floor:
            gates = self.floor + (1 - self.floor) * gates
        valid = ops.ones_like(gates) if mask is None else ops.cast(mask, gates.dtype)  # [batch, time]
        gates = gates * valid
        steps = ops.sum(valid, axis=1, keepdims=True)  # [batch, 1]
        mean_gate = ops.sum(gates, axis=1, keepdims=True) / steps
        attention = valid / steps if self.uniform else gates / ops.sum(gates, axis=1, keepdims=True)
        weighted_sum = ops.squeeze(ops.matmul(ops.expand_dims(attention, 1), states), axis=1)  # [batch, units_in]
        return weighted_sum * mean_gate, attention, attention * mean_gate

    def compute_mask(self, states, mask=None):
        return [None, None, None]

    def compute_output_shape(self, states_shape):
        batch, time, units = states_shape
        return (batch, units), (batch, time), (batch, time)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "floor": self.floor, "uniform": self.uniform}


@keras.saving.register_keras_serializable(package="pipeline")
class SinusoidalPositions(keras.layers.Layer):
    """Adds the sinusoidal encoding of each step's position (Vaswani et al. 2017) to the states,
    as MILLET does to its instance embeddings before the pooling, so the gates and the head can
    tell where in the series a state lies: PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] =
    cos(t / 10000^(2i/d)), d the number of units. Computed for the input's own number of steps
    (time stays dynamic); the mask passes through.

    states [batch, time, units] -> [batch, time, units].
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, states):
        units = states.shape[-1]  # static: the encoder's filters
        steps = ops.cast(ops.arange(ops.shape(states)[1]), states.dtype)[:, None]  # [time, 1]
        pair = np.arange(units) // 2  # i of each unit
        frequencies = np.exp(-math.log(10000.0) * 2 * pair / units).astype("float32")  # [units]
        angles = steps * frequencies  # [time, units]
        is_sine = (np.arange(units) % 2 == 0).astype("float32")
        encoding = is_sine * ops.sin(angles) + (1 - is_sine) * ops.cos(angles)
        return states + encoding[None]

    def compute_output_shape(self, states_shape):
        return states_shape


@keras.saving.register_keras_serializable(package="pipeline")
class InputAttention(keras.layers.Layer):
    """Attention over time on the raw inputs (the classic "attention before the LSTM").

    For each feature f: a_f = softmax over t of (x[:, :, f] · W + b), W [time, time], b [time];
    the inputs are weighted step by step, x'[:, t, f] = a_f[t] · x[:, t, f].

    Args:
        shared: average the per-feature vectors into one vector shared by all features.
        uniform: weigh every step 1 / time whatever the scores (the uniform-attention ablation).

    Call arguments:
        x: float32 [batch, time, features], with a fixed number of time steps.

    Returns:
        (weighted inputs [batch, time, features], attention [batch, time], the mean of the
        per-feature vectors; each row sums to 1).
    """

    def __init__(self, shared: bool = False, uniform: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(shared, bool):
            raise ValueError(f"shared must be a bool, got {shared!r}")
        self.shared = shared
        self.uniform = _check_uniform(uniform)

    def build(self, x_shape):
        if len(x_shape) != 3 or x_shape[1] is None:
            raise ValueError(f"InputAttention expects x [batch, time, features] with a fixed time, got {x_shape}")
        time = x_shape[1]
        self.kernel = self.add_weight(name="kernel", shape=(time, time))
        self.bias = self.add_weight(name="bias", shape=(time,), initializer="zeros")

    def call(self, x):
        per_feature = ops.transpose(x, (0, 2, 1))  # [batch, features, time]
        scores = ops.matmul(per_feature, self.kernel) + self.bias
        weights = ops.softmax(ops.zeros_like(scores) if self.uniform else scores, axis=-1)
        if self.shared:
            weights = ops.mean(weights, axis=1, keepdims=True)  # [batch, 1, time]
        weighted = x * ops.transpose(weights, (0, 2, 1))
        return weighted, ops.mean(weights, axis=1)

    def compute_output_shape(self, x_shape):
        return x_shape, (x_shape[0], x_shape[1])

    def get_config(self):
        return {**super().get_config(), "shared": self.shared, "uniform": self.uniform}


@keras.saving.register_keras_serializable(package="pipeline")
class MultiHeadAttentionPooling(_AttentionPooling):
    """Pools states with Keras MultiHeadAttention, queried by one learned vector.

    The context is a sum over steps and heads: step t of head h adds a_ht * W_O,h (W_V,h s_t + b_V,h)
    (then the output bias). A head may put most of its weight on steps whose projected values are
    small, so its weights say little about what the context holds (Kobayashi et al. 2020,
    "Attention is not only a weight"). The default readout therefore weighs each step by the norm
    of what it adds: || sum_h a_ht * W_O,h (W_V,h s_t + b_V,h) ||, normalised over the steps.

    Args:
        heads: number of attention heads.
        key_dim: size of each head's query and key projections.
        readout: "norm" (above) or "heads_mean" (the heads' softmax weights averaged).
        uniform: every head weighs every valid step alike (the uniform-attention ablation): the
            context is the output projection of the mean of the value projections.

    Call arguments:
        states: float32 [batch, time, units].
        mask: optional bool [batch, time], True on valid steps; padded steps get 0 weight.

    Returns:
        (context [batch, units], attention [batch, time]: each row sums to 1, step values
        [batch, time, units]: what each step adds to the context, which is their sum plus the
        output projection's bias).
    """

    def __init__(self, heads: int = 4, key_dim: int = 8, readout: str = "norm", uniform: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.uniform = _check_uniform(uniform)
        for name, value in (("heads", heads), ("key_dim", key_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if readout not in HEAD_READOUTS:
            raise ValueError(f"readout must be one of {HEAD_READOUTS}, got {readout!r}")
        self.heads = heads
        self.key_dim = key_dim
        self.readout = readout
        self.attention = keras.layers.MultiHeadAttention(heads, key_dim, name="multi_head")

    def build(self, states_shape):
        if len(states_shape) != 3:
            raise ValueError(f"MultiHeadAttentionPooling expects states [batch, time, units], got {states_shape}")
        units = states_shape[-1]
        self.query = self.add_weight(name="query", shape=(1, 1, units))
        self.attention.build((states_shape[0], 1, units), states_shape)

    def call(self, states, mask=None):
        if self.uniform:
            scores = _uniform_scores(states)
            if mask is not None:
                scores = ops.where(mask, scores, MASKED_SCORE)
            uniform = ops.softmax(scores, axis=-1)  # [batch, time]
            added = self._added(states, ops.repeat(uniform[:, None, :], self.heads, axis=1))
            return ops.sum(added, axis=1) + self.attention.output_dense.bias, uniform, added
        query = ops.zeros_like(states[:, :1, :]) + self.query  # [batch, 1, units]
        attention_mask = None if mask is None else ops.expand_dims(mask, 1)  # [batch, 1, time]
        context, scores = self.attention(query, states, attention_mask=attention_mask, return_attention_scores=True)
        weights = scores[:, :, 0, :]  # [batch, heads, time]
        added = self._added(states, weights)
        if self.readout == "heads_mean":
            return context[:, 0, :], ops.mean(weights, axis=1), added
        norms = ops.sqrt(ops.sum(ops.square(added), axis=-1))  # 0 on padded steps: their weights are 0
        return context[:, 0, :], norms / ops.maximum(ops.sum(norms, axis=-1, keepdims=True), 1e-12), added

    def _added(self, states, weights):
        """[batch, time, units]: what each step adds to the context, Σ_h a_ht W_O,h (W_V,h s_t +
        b_V,h), for weights [batch, heads, time]; the context is their sum plus the output bias."""
        values = self.attention.value_dense(ops.copy(states))  # [batch, time, heads, key_dim]; no mask passed on
        weighted = values * ops.expand_dims(ops.transpose(weights, (0, 2, 1)), -1)
        return ops.einsum("bthd,hdu->btu", weighted, self.attention.output_dense.kernel)

    def compute_mask(self, states, mask=None):
        return [None, None, None]

    def compute_output_shape(self, states_shape):
        batch, time, units = states_shape
        return (batch, units), (batch, time), states_shape

    def get_config(self):
        return {
            **super().get_config(),
            "heads": self.heads,
            "key_dim": self.key_dim,
            "readout": self.readout,
            "uniform": self.uniform,
        }


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


def _check_head(outputs, task_type) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {list(TASK_TYPES)}, got {task_type!r}")
    if not isinstance(outputs, int) or outputs < 1:
        raise ValueError(f"outputs must be a positive integer, got {outputs!r}")


def _activate(logit, task_type: str):
    """The prediction of a head's logit [batch, outputs]: softmax, sigmoid, or the value itself."""
    activation = TASK_TYPES[task_type].activation
    return keras.activations.get(activation)(logit) if activation else logit


@keras.saving.register_keras_serializable(package="pipeline")
class LinearHead(keras.layers.Layer):
    """The output layer: logit = context · W + b, then the task's activation (softmax for
    multiclass, sigmoid for binary, none for regression).

    Where the context is a weighted sum over steps, context = Σ_t w_t v_t (the pooling's own
    weights w [batch, time] and values v [batch, time, units]), the logit decomposes exactly over
    the steps: contribution_tk = w_t (v_t · W)_k, and Σ_t contribution_t + b = logit. Without
    weights (a pooling that sums its values as they are) w_t = 1. Padded steps have w_t = 0 or
    v_t = 0, so they contribute 0.

    Args:
        outputs: classes of a multiclass head, else 1.
        task_type: "multiclass", "binary" or "regression".

    Call arguments:
        context: float32 [batch, units]; values: optional float32 [batch, time, units];
        weights: optional float32 [batch, time].

    Returns:
        (prediction [batch, outputs], logit [batch, outputs]), and with `values` the contribution
        [batch, time, outputs] as a third output.
    """

    def __init__(self, outputs: int = 1, task_type: str = "multiclass", **kwargs):
        super().__init__(**kwargs)
        _check_head(outputs, task_type)
        self.outputs, self.task_type = outputs, task_type

    def build(self, context_shape, values_shape=None, weights_shape=None):
        self.kernel = self.add_weight(name="kernel", shape=(context_shape[-1], self.outputs))
        self.bias = self.add_weight(name="bias", shape=(self.outputs,), initializer="zeros")

    def call(self, context, values=None, weights=None):
        logit = ops.matmul(context, self.kernel) + self.bias
        if values is None:
            return _activate(logit, self.task_type), logit
        contribution = ops.matmul(values, self.kernel[None])  # [batch, time, outputs]
        if weights is not None:
            contribution = contribution * ops.expand_dims(weights, -1)
        return _activate(logit, self.task_type), logit, contribution

    def compute_mask(self, context, values=None, weights=None, mask=None):
        return None if values is None else [None, None, None]

    def compute_output_shape(self, context_shape, values_shape=None, weights_shape=None):
        shape = (context_shape[0], self.outputs)
        return (shape, shape) if values_shape is None else (shape, shape, (*values_shape[:2], self.outputs))

    def get_config(self):
        return {**super().get_config(), "outputs": self.outputs, "task_type": self.task_type}


@keras.saving.register_keras_serializable(package="pipeline")
class MilPooling(keras.layers.Layer):
    """A classifier applied at every step, its per-step logits pooled over time: MILLET's
    instance and conjunctive poolings (Early et al. 2024), whose explanation is class-specific and
    signed by construction.

    With z_t = W h_t + b the logits of step t [outputs] and T the valid steps:
        instance     logit = (1/T) Σ_t z_t; contribution_t = (W h_t) / T (bias b)
        conjunctive  a_t = sigmoid(v · tanh(U h_t + c) + d) in (0, 1); logit = (1/T) Σ_t a_t z_t;
                     contribution_t = a_t z_t / T (bias 0)
    so Σ_t contribution_t + bias = logit exactly; padded steps contribute 0. The attention
    returned is a_t / Σ_s a_s (conjunctive) or uniform over the valid steps (instance, which has
    none).

    Args:
        pooling: "instance" or "conjunctive".
        outputs: classes of a multiclass head, else 1.
        task_type: "multiclass", "binary" or "regression".
        units: hidden units of the conjunctive attention's scorer (U [units_in, units]).
        uniform: a_t = 1 on every valid step (the uniform-attention ablation; instance pooling is
            uniform already).

    Call arguments:
        states: float32 [batch, time, units_in]; mask: optional bool [batch, time].

    Returns:
        (prediction [batch, outputs], attention [batch, time], logit [batch, outputs],
        contribution [batch, time, outputs]).
    """

    def __init__(
        self,
        pooling: str = "conjunctive",
        outputs: int = 1,
        task_type: str = "multiclass",
        units: int = 8,
        uniform: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pooling not in MIL_POOLINGS:
            raise ValueError(f"pooling must be one of {MIL_POOLINGS}, got {pooling!r}")
        _check_head(outputs, task_type)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        self.pooling, self.outputs, self.task_type, self.units = pooling, outputs, task_type, units
        self.uniform = _check_uniform(uniform)

    def build(self, states_shape):
        units_in = states_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=(units_in, self.outputs))
        self.bias = self.add_weight(name="bias", shape=(self.outputs,), initializer="zeros")
        if self.pooling == "conjunctive":
            self.gate_kernel = self.add_weight(name="gate_kernel", shape=(units_in, self.units))
            self.gate_bias = self.add_weight(name="gate_bias", shape=(self.units,), initializer="zeros")
            self.gate_vector = self.add_weight(name="gate_vector", shape=(self.units, 1))
            self.gate_offset = self.add_weight(name="gate_offset", shape=(1,), initializer="zeros")

    def _gates(self, states, valid):
        """[batch, time]: a_t on valid steps, 0 on padding."""
        if self.pooling == "instance" or self.uniform:
            return valid
        hidden = ops.tanh(ops.matmul(states, self.gate_kernel[None]) + self.gate_bias)
        return ops.sigmoid(ops.squeeze(ops.matmul(hidden, self.gate_vector[None]), axis=-1) + self.gate_offset) * valid

    def call(self, states, mask=None):
        valid = ops.ones_like(states[:, :, 0]) if mask is None else ops.cast(mask, states.dtype)  # [batch, time]
        steps = ops.sum(valid, axis=1, keepdims=True)  # [batch, 1]
        gates = self._gates(states, valid)
        evidence = ops.matmul(states, self.kernel[None])  # [batch, time, outputs]: W h_t
        if self.pooling == "conjunctive":
            evidence = evidence + self.bias
        contribution = evidence * ops.expand_dims(gates / steps, -1)  # 0 on padding
        logit = ops.sum(contribution, axis=1) + (self.bias if self.pooling == "instance" else 0.0)
        attention = gates / ops.maximum(ops.sum(gates, axis=1, keepdims=True), 1e-12)
        return _activate(logit, self.task_type), attention, logit, contribution

    def compute_mask(self, states, mask=None):
        return [None, None, None, None]

    def compute_output_shape(self, states_shape):
        batch, time, _ = states_shape
        return (batch, self.outputs), (batch, time), (batch, self.outputs), (batch, time, self.outputs)

    def get_config(self):
        return {
            **super().get_config(),
            "pooling": self.pooling,
            "outputs": self.outputs,
            "task_type": self.task_type,
            "units": self.units,
            "uniform": self.uniform,
        }


@keras.saving.register_keras_serializable(package="pipeline")
class ClassAttentionPooling(keras.layers.Layer):
    """The head applied at every step, each output pooled over time by its own attention:
    auto-pool (McFee et al. 2018, "Adaptive pooling operators for weakly labeled sound event
    detection").

    z_t = W h_t + b (the outputs' evidence at step t, [outputs]); for each output k,
    a_kt = softmax over t of (alpha_k * z_tk), and the pooled output is sum_t a_kt z_tk, then the
    head's activation. alpha starts at 0: uniform weights, exactly global average pooling
    followed by the dense head; a positive alpha_k moves the weight of output k to the steps
    that hold the most evidence for it. The attention returned is that of the predicted output
    (of the one output, for a binary or regression head), so the prediction is the weighted sum of
    per-step evidence with those very weights.

    Args:
        outputs: classes of a multiclass head, else 1.
        task_type: "multiclass" (softmax), "binary" (sigmoid) or "regression" (linear).
        uniform: pool with alpha = 0 whatever its trained value (the uniform-attention ablation:
            global average pooling of the evidence).

    Call arguments:
        states: float32 [batch, time, units]; mask: optional bool [batch, time].

    Returns:
        (prediction [batch, outputs], attention [batch, time], logit [batch, outputs],
        contribution [batch, time, outputs]: a_kt (W h_t)_k, so that Σ_t contribution_t + b is the
        logit); padded steps get weight 0.
    """

    def __init__(self, outputs: int = 1, task_type: str = "multiclass", uniform: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.uniform = _check_uniform(uniform)
        _check_head(outputs, task_type)
        self.outputs, self.task_type = outputs, task_type

    def build(self, states_shape):
        units = states_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=(units, self.outputs))
        self.bias = self.add_weight(name="bias", shape=(self.outputs,), initializer="zeros")
        self.alpha = self.add_weight(name="alpha", shape=(self.outputs,), initializer="zeros")

    def call(self, states, mask=None):
        products = ops.matmul(states, self.kernel)  # [batch, time, outputs]: W h_t
        evidence = products + self.bias
        scores = ops.zeros_like(evidence) if self.uniform else evidence * self.alpha
        if mask is not None:
            scores = ops.where(ops.expand_dims(mask, -1), scores, MASKED_SCORE)
        weights = ops.softmax(scores, axis=1)  # [batch, time, outputs]
        pooled = ops.sum(weights * evidence, axis=1)  # [batch, outputs]: the logit
        prediction = _activate(pooled, self.task_type)
        contribution = weights * products
        if self.outputs == 1:
            return prediction, weights[:, :, 0], pooled, contribution
        chosen = ops.cast(ops.equal(pooled, ops.max(pooled, axis=-1, keepdims=True)), pooled.dtype)
        chosen = chosen / ops.sum(chosen, axis=-1, keepdims=True)  # a tie shares the weight
        return prediction, ops.sum(weights * ops.expand_dims(chosen, 1), axis=-1), pooled, contribution

    def compute_mask(self, states, mask=None):
        return [None, None, None, None]

    def compute_output_shape(self, states_shape):
        batch, time, _ = states_shape
        return (batch, self.outputs), (batch, time), (batch, self.outputs), (batch, time, self.outputs)

    def get_config(self):
        return {**super().get_config(), "outputs": self.outputs, "task_type": self.task_type, "uniform": self.uniform}


def replicas_in_sync() -> int:
    """The replicas that train the layers built now: those of the tf.distribute strategy in
    whose scope this runs, 1 outside any."""
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="pipeline")
class ConvEncoder(keras.layers.Layer):
    """The fully convolutional encoder of time-series classification (Wang et al. 2017):
    blocks of Conv1D ("same" padding) -> BatchNormalization -> ReLU, one per filter count.
    Padded steps are set to 0 after every block, so a series gives the same states whatever
    its padding. Built in the scope of a tf.distribute strategy of several replicas, the
    BatchNormalization statistics are the global batch's (synchronized over the replicas), so
    a batch split over replicas or workers is normalised as in one process, and no replica
    normalises a part of one series alone.

    Args:
        filters: filters of each block, e.g. [128, 256, 128].
        kernel_sizes: kernel size of each block, e.g. [8, 5, 3].
        norm_folded: blocks of Conv1D -> ReLU whose convolutions already hold the inference-mode
            BatchNormalization (`folded_weights`): an export copy, not for training.
        padding: what a convolution sees beyond the series' ends: "zero", or "replicate" (the
            first and the last valid step repeated, as MILLET's FCN: zeros at the ends are a
            feature the explanation is drawn to).

    Call arguments:
        x: float32 [batch, time, channels]; mask: optional bool [batch, time].

    Returns:
        states float32 [batch, time, filters[-1]]; the mask passes through.
    """

    def __init__(self, filters=(128, 256, 128), kernel_sizes=(8, 5, 3), norm_folded=False, padding="zero", **kwargs):
        super().__init__(**kwargs)
        filters, kernel_sizes = list(filters), list(kernel_sizes)
        if not filters or len(filters) != len(kernel_sizes):
            raise ValueError(f"need one kernel size per block, got filters {filters} and kernel_sizes {kernel_sizes}")
        if min(filters + kernel_sizes) < 1:
            raise ValueError(f"filters and kernel sizes must be positive, got {filters}, {kernel_sizes}")
        if padding not in CONV_PADDINGS:
            raise ValueError(f"padding must be one of {CONV_PADDINGS}, got {padding!r}")
        self.filters, self.kernel_sizes, self.norm_folded, self.padding = filters, kernel_sizes, norm_folded, padding
        distributed = replicas_in_sync() > 1
        conv_padding = "same" if padding == "zero" else "valid"  # replicate: the ends are padded in call
        self.blocks = [
            (
                keras.layers.Conv1D(f, k, padding=conv_padding, name=f"conv{i}"),
                None if norm_folded else keras.layers.BatchNormalization(name=f"norm{i}", synchronized=distributed),
            )
            for i, (f, k) in enumerate(zip(filters, kernel_sizes))
        ]
        self.supports_masking = True

    def build(self, x_shape):
        shape = tuple(x_shape)
        for conv, norm in self.blocks:
            conv.build(shape)
            shape = (*shape[:2], conv.filters)  # "same" length, whichever padding
            if norm is not None:
                norm.build(shape)

    def call(self, x, mask=None, training=None):
        valid = None if mask is None else ops.expand_dims(ops.cast(mask, x.dtype), -1)
        if valid is not None:
            x = x * valid  # zero padding; the product carries no mask into the Conv1D layers
        for (conv, norm), kernel in zip(self.blocks, self.kernel_sizes):
            if self.padding == "replicate":
                x = replicate_ends(x, valid, kernel)
            x = conv(x) if norm is None else norm(conv(x), training=training)
            x = ops.relu(x)
            if valid is not None:
                x = x * valid
        return x

    def folded_weights(self) -> list[np.ndarray]:
        """The weights of a `norm_folded` copy: per block, the Conv1D kernel [k, in, out] and bias
        [out] with the BatchNormalization's inference transform y = (x - mean) * s + beta,
        s = gamma / sqrt(variance + epsilon), folded in: kernel * s and (bias - mean) * s + beta."""
        weights = []
        for conv, norm in self.blocks:
            kernel, bias = conv.get_weights()
            gamma, beta, mean, variance = norm.get_weights()
            scale = gamma / np.sqrt(variance + norm.epsilon)
            weights += [kernel * scale, (bias - mean) * scale + beta]
        return weights

    def compute_mask(self, x, mask=None):
        return mask

    def compute_output_shape(self, x_shape):
        return (*tuple(x_shape)[:2], self.filters[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_sizes": self.kernel_sizes,
            "norm_folded": self.norm_folded,
            "padding": self.padding,
        }


def replicate_ends(x, valid, kernel: int):
    """x [batch, time, channels] with (kernel - 1) steps added for a "valid" convolution of the
    same length: the first step repeated before, the last valid step after, as "same" padding
    places them (the longer half after); padded steps (valid [batch, time, 1] = 0) hold the
    last valid step too, so a series gives the same states whatever its padding. Slices, sums
    and products only: it exports to plain ONNX."""
    if valid is not None:  # the last valid step: where valid falls from 1 to 0 (prefix masks)
        following = ops.concatenate([valid[:, 1:], ops.zeros_like(valid[:, :1])], axis=1)
        last = ops.sum(x * (valid - following), axis=1, keepdims=True)  # [batch, 1, channels]
        x = x * valid + last * (1.0 - valid)
    before, after = (kernel - 1) // 2, kernel // 2
    return ops.concatenate([*([x[:, :1]] * before), x, *([x[:, -1:]] * after)], axis=1)


KERNEL_LENGTH = 9
# The 84 kernels of MiniRocket: weight 2 at three of the nine positions, -1 at the others.
KERNEL_POSITIONS = np.array(list(combinations(range(KERNEL_LENGTH), 3)))


def dilated_conv_rows(rows, kernel, dilation: int):
    """A dilated convolution with zero "same" padding, as one product of the kernel with the
    shifted copies of the series (no convolution op: its dilated export goes through
    space-to-batch reshapes and transposes).

    rows float32 [batch, channels, time]; kernel [taps, channels, filters] (odd taps).
    Returns float32 [batch, filters, time]."""
    taps, channels, filters = kernel.shape
    reach = (taps - 1) * dilation
    padded = ops.pad(rows, [[0, 0], [0, 0], [reach // 2, reach - reach // 2]])
    ends = [tap * dilation - reach or None for tap in range(taps)]  # negative: from the padded end
    shifted = ops.concatenate(
        [padded[:, :, tap * dilation : end] for tap, end in enumerate(ends)], axis=1
    )  # [batch, taps * channels, time], tap-major as the kernel's rows
    return ops.matmul(ops.transpose(ops.reshape(kernel, (taps * channels, filters))), shifted)


@keras.saving.register_keras_serializable(package="pipeline")
class MiniRocketFeatures(keras.layers.Layer):
    """The MiniRocket transform with fixed, non-trainable weights.

    For each dilation d: C = Conv1D(x, 84 kernels of length 9, dilation d, zero "same" padding),
    each kernel summing the channels it was given; then for each kernel and each of its biases b,
    the feature PPV = share of steps with C > b. Every other kernel (alternating with the
    dilation) counts only the steps at least 4d away from both ends, as sktime does. Padded steps
    (the mask) count nowhere.

    Args:
        dilations: the dilations, e.g. [1, 2, 4, ...].
        features_per_dilation: biases per kernel at each dilation.
        channels: channels of the input.

    Call arguments:
        x: float32 [batch, time, channels]; mask: optional bool [batch, time].

    Returns:
        float32 [batch, 84 * sum(features_per_dilation)], in sktime's order (dilation, kernel, bias).
    """

    def __init__(self, dilations, features_per_dilation, channels, **kwargs):
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        self.dilations = [int(d) for d in dilations]
        self.features_per_dilation = [int(n) for n in features_per_dilation]
        self.channels = int(channels)
        if len(self.dilations) != len(self.features_per_dilation) or not self.dilations:
            raise ValueError(
                f"need one feature count per dilation, got dilations {self.dilations} and "
                f"features_per_dilation {self.features_per_dilation}"
            )
        self.supports_masking = True

    def build(self, x_shape):
        kernels = len(KERNEL_POSITIONS)
        self.kernels = [
            self.add_weight(
                name=f"kernel_d{d}", shape=(KERNEL_LENGTH, self.channels, kernels), initializer="zeros", trainable=False
            )
            for d in self.dilations
        ]
        self.biases = [
            self.add_weight(name=f"biases_d{d}", shape=(kernels, n), initializer="zeros", trainable=False)
            for d, n in zip(self.dilations, self.features_per_dilation)
        ]

    def call(self, x, mask=None):
        # Time is the innermost axis throughout: the comparison with the biases broadcasts over
        # long rows, and one batched product counts the weighted steps.
        valid = ops.ones_like(x[:, :, 0]) if mask is None else ops.cast(mask, x.dtype)  # [batch, time]
        rows = ops.transpose(x * ops.expand_dims(valid, -1), (0, 2, 1))  # [batch, channels, time], padding 0
        length = ops.sum(valid, axis=1, keepdims=True)  # [batch, 1]
        steps = ops.cast(ops.arange(ops.shape(x)[1]), x.dtype)[None, :]  # [1, time]
        features = []
        for index, (dilation, kernel, biases) in enumerate(zip(self.dilations, self.kernels, self.biases)):
            margin = float((KERNEL_LENGTH - 1) * dilation // 2)
            inner = valid * ops.cast((steps >= margin) & (steps < length - margin), x.dtype)
            inner_kernels = np.arange(len(KERNEL_POSITIONS)) % 2 != index % 2  # sktime's _padding1 == 1
            weights = ops.where(inner_kernels[None, :, None], inner[:, None, :], valid[:, None, :])  # [batch, 84, time]
            conv = dilated_conv_rows(rows, kernel, dilation)  # [batch, 84, time]
            positive = ops.cast(ops.expand_dims(conv, 2) > ops.expand_dims(biases, -1), x.dtype)  # [batch, 84, n, time]
            counted = ops.squeeze(ops.matmul(positive, ops.expand_dims(weights, -1)), -1)  # [batch, 84, n]
            steps_counted = ops.maximum(ops.sum(weights, axis=2), 1.0)  # [batch, 84]
            features.append(ops.reshape(counted / ops.expand_dims(steps_counted, -1), (-1, int(np.prod(biases.shape)))))
        return ops.concatenate(features, axis=-1)

    def compute_mask(self, x, mask=None):
        return None

    def compute_output_shape(self, x_shape):
        return (x_shape[0], len(KERNEL_POSITIONS) * sum(self.features_per_dilation))

    def get_config(self):
        return {
            **super().get_config(),
            "dilations": self.dilations,
            "features_per_dilation": self.features_per_dilation,
            "channels": self.channels,
        }
