"""Keras attention layers, serializable and loadable with `safe_mode=True`."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pipeline")
class TemporalAttention(keras.layers.Layer):
    """Attention pooling over time: one score per step, softmax over steps, weighted sum.

    score_t = h_t · w (+ p_t);  a = softmax(score over t);  context = Σ_t a_t h_t

    Args:
        position_bias: add a learned score p_t per time step, a prior over positions that lets
            the attention find a step by where it is, not only by what its state holds. Needs a
            fixed number of steps.

    Call arguments:
        states: float32 [batch, time, units], e.g. an LSTM's `return_sequences=True` output.

    Returns:
        (context [batch, units], attention [batch, time]); each attention row sums to 1.
    """

    def __init__(self, position_bias: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(position_bias, bool):
            raise ValueError(f"position_bias must be a bool, got {position_bias!r}")
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
        self.score_kernel = self.add_weight(
            name="score_kernel", shape=(units, 1), initializer="glorot_uniform"
        )
        self.position_scores = (
            self.add_weight(name="position_scores", shape=(time,), initializer="zeros")
            if self.position_bias
            else None
        )

    def _scores(self, states):
        scores = ops.squeeze(ops.matmul(states, self.score_kernel), axis=-1)  # [batch, time]
        return scores + self.position_scores if self.position_bias else scores

    def call(self, states):
        attention = ops.softmax(self._scores(states), axis=-1)  # [batch, time]
        context = ops.sum(states * ops.expand_dims(attention, -1), axis=1)  # [batch, units]
        return context, attention

    def compute_output_shape(self, states_shape):
        batch, time, units = states_shape
        return (batch, units), (batch, time)

    def get_config(self):
        return {**super().get_config(), "position_bias": self.position_bias}
