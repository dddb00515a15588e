"""Keras attention layers, serializable and loadable with `safe_mode=True`."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pipeline")
class TemporalAttention(keras.layers.Layer):
    """Attention pooling over time: one score per step, softmax over steps, weighted sum.

    score_t = h_t · w + b;  a = softmax(score over t);  context = Σ_t a_t h_t

    Args:
        use_bias: add a learned bias to every score (it cancels in the softmax but keeps the
            classic `Dense(1)` scorer's parameters).

    Call arguments:
        states: float32 [batch, time, units], e.g. the LSTM's `return_sequences=True` output.

    Returns:
        (context [batch, units], attention [batch, time]); each attention row sums to 1.
    """

    def __init__(self, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(use_bias, bool):
            raise ValueError(f"use_bias must be a bool, got {use_bias!r}")
        self.use_bias = use_bias

    def build(self, states_shape):
        if len(states_shape) != 3:
            raise ValueError(
                f"TemporalAttention expects states [batch, time, units], got shape {states_shape}"
            )
        units = states_shape[-1]
        self.score_kernel = self.add_weight(
            name="score_kernel", shape=(units, 1), initializer="glorot_uniform"
        )
        self.score_bias = (
            self.add_weight(name="score_bias", shape=(1,), initializer="zeros")
            if self.use_bias
            else None
        )

    def _scores(self, states):
        scores = ops.squeeze(ops.matmul(states, self.score_kernel), axis=-1)  # [batch, time]
        return scores + self.score_bias if self.use_bias else scores

    def call(self, states):
        attention = ops.softmax(self._scores(states), axis=-1)  # [batch, time]
        context = ops.sum(states * ops.expand_dims(attention, -1), axis=1)  # [batch, units]
        return context, attention

    def compute_output_shape(self, states_shape):
        batch, time, units = states_shape
        return (batch, units), (batch, time)

    def get_config(self):
        return {**super().get_config(), "use_bias": self.use_bias}
