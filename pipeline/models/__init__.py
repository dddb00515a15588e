"""The model factory: a config section in, a Keras model with outputs `prediction` and `attention`.

Every model takes `x` ([batch, features] or [batch, time, features]) and returns a dict:
    prediction float32 [batch, 1]  (sigmoid probability of class 1, or a real value for
                                    regression tasks)
    attention  float32 [batch, positions]  (rows are probability distributions)
This module imports TensorFlow/Keras: only training, export and tests use it.
"""

from __future__ import annotations

import keras

from pipeline.config import FeatureAttentionModel, RecurrentAttentionModel
from pipeline.contract import INPUT_NAME
from pipeline.models.layers import TemporalAttention


OUTPUT_ACTIVATION = {"binary": "sigmoid", "regression": None}


def feature_attention(
    cfg: FeatureAttentionModel, input_shape: tuple[int, ...], task_type: str = "binary"
) -> keras.Model:
    """probs = Dense(n, softmax)(v); Dense(hidden_units)(v * probs); Dense(1, sigmoid).

    x [batch, n] -> prediction [batch, 1], attention [batch, n].
    """
    (n_features,) = input_shape
    x = keras.Input(shape=(n_features,), name=INPUT_NAME)
    attention = keras.layers.Dense(n_features, activation="softmax", name="attention")(x)
    weighted = keras.layers.Multiply(name="attended_features")([x, attention])
    hidden = keras.layers.Dense(cfg.hidden_units, name="hidden")(weighted)
    prediction = keras.layers.Dense(1, activation=OUTPUT_ACTIVATION[task_type], name="prediction")(hidden)
    return keras.Model(x, {"prediction": prediction, "attention": attention}, name=cfg.name)


RECURRENT_CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def recurrent_attention(
    cfg: RecurrentAttentionModel, input_shape: tuple[int, ...], task_type: str = "binary"
) -> keras.Model:
    """LSTM or GRU (return_sequences, optionally bidirectional) -> TemporalAttention -> Dense(1).

    x [batch, time, features] -> prediction [batch, 1], attention [batch, time].
    `recurrent_l2` penalises the recurrent kernel for carrying the input forward, so the state
    at a step holds what that step saw; `position_bias` adds a learned score per step. With the
    bias the model takes exactly `time` steps; without it the time dimension is dynamic.
    A bidirectional encoder concatenates both directions: states are [batch, time, 2 * units].
    """
    time_steps, n_features = input_shape
    x = keras.Input(shape=(time_steps if cfg.position_bias else None, n_features), name=INPUT_NAME)
    regularizer = keras.regularizers.L2(cfg.recurrent_l2) if cfg.recurrent_l2 > 0 else None
    cell = RECURRENT_CELLS[cfg.cell](
        cfg.units, return_sequences=True, recurrent_regularizer=regularizer, name=cfg.cell
    )
    encoder = keras.layers.Bidirectional(cell, name=f"bi{cfg.cell}") if cfg.bidirectional else cell
    states = encoder(x)
    context, attention = TemporalAttention(
        score=cfg.score, query=cfg.query, position_bias=cfg.position_bias, name="temporal_attention"
    )(states)
    prediction = keras.layers.Dense(1, activation=OUTPUT_ACTIVATION[task_type], name="prediction")(
        context
    )
    return keras.Model(x, {"prediction": prediction, "attention": attention}, name=cfg.name)


def build_model(model_cfg, input_shape, task_type: str = "binary") -> keras.Model:
    """The model `model_cfg` describes, for inputs of `input_shape` (without batch); the
    prediction head is a sigmoid for "binary" tasks and linear for "regression" tasks."""
    builder = feature_attention if model_cfg.name == "feature_attention" else recurrent_attention
    return builder(model_cfg, tuple(input_shape), task_type)


def load_model(path) -> keras.Model:
    """A saved .keras model; safe_mode refuses Lambda layers and any pickled code."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)
