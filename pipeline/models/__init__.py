"""The model factory: a config section in, a Keras model with outputs `prediction` and `attention`.

Every model takes `x` ([batch, features] or [batch, time, features]) and returns a dict:
    prediction float32 [batch, 1]  (sigmoid probability of class 1, or a real value for
                                    regression tasks)
    attention  float32 [batch, positions]  (rows are probability distributions)
This module imports TensorFlow/Keras: only training, export and tests use it.
"""

from __future__ import annotations

import keras

from pipeline.config import (
    FeatureAttentionModel,
    InputAttentionModel,
    MultiHeadPoolingModel,
    RecurrentAttentionModel,
)
from pipeline.contract import INPUT_NAME, PAD_VALUE
from pipeline.models.layers import InputAttention, MultiHeadAttentionPooling, TemporalAttention


OUTPUT_ACTIVATION = {"binary": "sigmoid", "regression": None}


def feature_attention(
    cfg: FeatureAttentionModel, input_shape: tuple[int, ...], task_type: str = "binary",
    padded: bool = False,
) -> keras.Model:
    """probs = Dense(n, softmax)(v); Dense(hidden_units)(v * probs); Dense(1, sigmoid).

    x [batch, n] -> prediction [batch, 1], attention [batch, n].
    """
    (n_features,) = input_shape
    x = keras.Input(shape=(n_features,), name=INPUT_NAME)
    attention = keras.layers.Dense(n_features, activation="softmax", name="attention")(x)
    weighted = keras.layers.Multiply(name="attended_features")([x, attention])
    hidden = keras.layers.Dense(cfg.hidden_units, name="hidden")(weighted)
    return keras.Model(
        x, {"prediction": _head(hidden, task_type), "attention": attention}, name=cfg.name
    )


RECURRENT_CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def _encoder(cell: str, units: int, bidirectional: bool = False, sequences: bool = True,
             recurrent_l2: float = 0.0) -> keras.layers.Layer:
    """An LSTM or GRU layer (states [batch, time, units], or its last state [batch, units])."""
    regularizer = keras.regularizers.L2(recurrent_l2) if recurrent_l2 > 0 else None
    layer = RECURRENT_CELLS[cell](
        units, return_sequences=sequences, recurrent_regularizer=regularizer, name=cell
    )
    return keras.layers.Bidirectional(layer, name=f"bi{cell}") if bidirectional else layer


def _head(features, task_type: str):
    return keras.layers.Dense(1, activation=OUTPUT_ACTIVATION[task_type], name="prediction")(features)


def _masked(x, padded: bool):
    """Mask the steps that hold PAD_VALUE on every feature (variable-length data)."""
    return keras.layers.Masking(mask_value=PAD_VALUE, name="padding_mask")(x) if padded else x


def recurrent_attention(
    cfg: RecurrentAttentionModel, input_shape: tuple[int, ...], task_type: str = "binary",
    padded: bool = False,
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
    states = _encoder(cfg.cell, cfg.units, cfg.bidirectional, recurrent_l2=cfg.recurrent_l2)(
        _masked(x, padded)
    )
    context, attention = TemporalAttention(
        score=cfg.score, query=cfg.query, position_bias=cfg.position_bias, name="temporal_attention"
    )(states)
    return keras.Model(
        x, {"prediction": _head(context, task_type), "attention": attention}, name=cfg.name
    )


def input_attention(
    cfg: InputAttentionModel, input_shape: tuple[int, ...], task_type: str = "binary",
    padded: bool = False,
) -> keras.Model:
    """InputAttention on x -> LSTM or GRU (last state) -> Dense(1). Fixed time.

    x [batch, time, features] -> prediction [batch, 1], attention [batch, time].
    Fixed-length data only (the config refuses padded data for it).
    """
    if padded:
        raise ValueError("attention_before_lstm takes fixed-length sequences only")
    x = keras.Input(shape=tuple(input_shape), name=INPUT_NAME)
    weighted, attention = InputAttention(shared=cfg.shared, name="input_attention")(x)
    last_state = _encoder(cfg.cell, cfg.units, sequences=False)(weighted)
    return keras.Model(
        x, {"prediction": _head(last_state, task_type), "attention": attention}, name=cfg.name
    )


def multihead_pooling(
    cfg: MultiHeadPoolingModel, input_shape: tuple[int, ...], task_type: str = "binary",
    padded: bool = False,
) -> keras.Model:
    """LSTM or GRU states -> MultiHeadAttentionPooling (learned query) -> Dense(1).

    x [batch, time, features] -> prediction [batch, 1], attention [batch, time] (mean of heads).
    """
    x = keras.Input(shape=(None, input_shape[-1]), name=INPUT_NAME)
    states = _encoder(cfg.cell, cfg.units, cfg.bidirectional)(_masked(x, padded))
    context, attention = MultiHeadAttentionPooling(cfg.heads, cfg.key_dim, name="pooling")(states)
    return keras.Model(
        x, {"prediction": _head(context, task_type), "attention": attention}, name=cfg.name
    )


BUILDERS = {
    FeatureAttentionModel: feature_attention,
    RecurrentAttentionModel: recurrent_attention,
    InputAttentionModel: input_attention,
    MultiHeadPoolingModel: multihead_pooling,
}


def build_model(model_cfg, input_shape, task_type: str = "binary", padded: bool = False) -> keras.Model:
    """The model `model_cfg` describes, for inputs of `input_shape` (without batch); the
    prediction head is a sigmoid for "binary" tasks and linear for "regression" tasks.
    `padded`: sequences vary in length, padded with PAD_VALUE; the model masks those steps."""
    return BUILDERS[type(model_cfg)](model_cfg, tuple(input_shape), task_type, padded)


def load_model(path) -> keras.Model:
    """A saved .keras model; safe_mode refuses Lambda layers and any pickled code."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)
