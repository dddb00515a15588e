"""The model factory: a config section and a task in, a Keras model with outputs `prediction`,
`attention`, `logit` and, where the logit decomposes exactly over the steps, `contribution`.

Every model takes `x` ([batch, features] or [batch, time, features]) and returns a dict:
    prediction   float32 [batch, 1] for "binary" (sigmoid probability of class 1) and
                 "regression" (a real value) tasks; [batch, classes] for "multiclass" tasks
                 (softmax probabilities)
    attention    float32 [batch, positions]  (rows are probability distributions)
    logit        float32 [batch, 1 or classes]: the prediction before its softmax or sigmoid
    contribution float32 [batch, time, 1 or classes]: each step's share of the logit, so that
                 Σ_t contribution_t plus a constant (the head's bias) is the logit; 0 on padded
                 steps. Models whose head is linear in a pooled sum over the steps have it (every
                 sequence model but attention_before_lstm; for the global average it is CAM);
                 feature_attention, attention_before_lstm and minirocket do not.
Sequence models start with the task's preprocessing (masking of padded steps, z-normalisation),
so the exported model takes raw series. This module imports TensorFlow/Keras: only training,
export and tests use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from pipeline.core.config import (
    ConvAttentionModel,
    FeatureAttentionModel,
    InputAttentionModel,
    MultiHeadPoolingModel,
    RecurrentAttentionModel,
)
from pipeline.core.contract import INPUT_NAME, MIL_POOLINGS, PAD_VALUE, TASK_TYPES
from pipeline.models.layers import (
    ClassAttentionPooling,
    ConvEncoder,
    GatedAttentionPooling,
    InputAttention,
    LinearHead,
    MilPooling,
    MultiHeadAttentionPooling,
    SinusoidalPositions,
    Standardize,
    TemporalAttention,
    WeightedSum,
)


@dataclass(frozen=True)
class TaskSpec:
    """What the prepared data asks of a model (data/prepared/meta.json).

    input_shape: one sample's shape, (features,) or (time, features).
    task_type: "binary", "regression" or "multiclass".
    padded: sequences vary in length, padded with PAD_VALUE; the model masks those steps.
    n_classes: classes of a "multiclass" task.
    normalization: {"mode": "per_series" | "per_channel" | "none", "mean": [...], "std": [...]},
        applied inside the model (None: none).
    """

    input_shape: tuple[int, ...]
    task_type: str = "binary"
    padded: bool = False
    n_classes: int = 1
    normalization: dict | None = field(default=None)

    @classmethod
    def from_meta(cls, meta: dict) -> TaskSpec:
        return cls(
            input_shape=tuple(meta["input_shape"]),
            task_type=meta["task_type"],
            padded=bool(meta["padded"]),
            n_classes=len(meta.get("labels") or []) or 1,
            normalization=meta.get("normalization"),
        )


def feature_attention(cfg: FeatureAttentionModel, task: TaskSpec) -> keras.Model:
    """probs = Dense(n, softmax)(v); Dense(hidden_units)(v * probs); Dense(1, sigmoid).

    x [batch, n] -> prediction [batch, 1], attention [batch, n]. `attention_l2` penalises the
    attention's kernel, so its weights depend on the input only where that pays: a feature whose
    value is 0 in one class adds nothing to v * probs there, and without the penalty the noise of
    the other features decides where such a sample's attention points.
    """
    (n_features,) = task.input_shape
    x = keras.Input(shape=(n_features,), name=INPUT_NAME)
    regularizer = keras.regularizers.L2(cfg.attention_l2) if cfg.attention_l2 > 0 else None
    attention = keras.layers.Dense(n_features, activation="softmax", kernel_regularizer=regularizer, name="attention")(
        x
    )
    weighted = keras.layers.Multiply(name="attended_features")([x, attention])
    hidden = keras.layers.Dense(cfg.hidden_units, name="hidden")(weighted)
    return _model(x, cfg.name, attention, *_head(task)(hidden))


RECURRENT_CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def _encoder(
    cell: str, units: int, bidirectional: bool = False, sequences: bool = True, recurrent_l2: float = 0.0
) -> keras.layers.Layer:
    """An LSTM or GRU layer (states [batch, time, units], or its last state [batch, units])."""
    regularizer = keras.regularizers.L2(recurrent_l2) if recurrent_l2 > 0 else None
    layer = RECURRENT_CELLS[cell](units, return_sequences=sequences, recurrent_regularizer=regularizer, name=cell)
    return keras.layers.Bidirectional(layer, name=f"bi{cell}") if bidirectional else layer


def _head(task: TaskSpec) -> LinearHead:
    """The output layer: softmax over the classes of a multiclass task, a sigmoid for binary, linear
    for regression."""
    outputs = TASK_TYPES[task.task_type].outputs(task.n_classes)
    return LinearHead(outputs, task.task_type, name="prediction")


def _model(x, name: str, attention, prediction, logit, contribution=None) -> keras.Model:
    """The functional model of the contract's outputs (contribution where there is one)."""
    outputs = {"prediction": prediction, "attention": attention, "logit": logit}
    if contribution is not None:
        outputs["contribution"] = contribution
    return keras.Model(x, outputs, name=name)


def sequence_input(task: TaskSpec, fixed_time: bool):
    """(x, preprocessed x): the model input [batch, time, features] (time None unless
    `fixed_time`), masked where it holds PAD_VALUE on every feature (variable-length data) and
    z-normalised as the task says."""
    time_steps, n_features = task.input_shape
    x = keras.Input(shape=(time_steps if fixed_time else None, n_features), name=INPUT_NAME)
    h = keras.layers.Masking(mask_value=PAD_VALUE, name="padding_mask")(x) if task.padded else x
    if task.normalization and task.normalization["mode"] != "none":
        h = Standardize(**task.normalization, name="standardize")(h)
    return x, h


def recurrent_attention(cfg: RecurrentAttentionModel, task: TaskSpec) -> keras.Model:
    """LSTM or GRU (return_sequences, optionally bidirectional) -> TemporalAttention -> Dense(1).

    x [batch, time, features] -> prediction [batch, 1], attention [batch, time].
    `values` "states" pools the recurrent states; "inputs" pools Dense(units) of each step's
    inputs with the weights the states scored, so nothing reaches the head but what the attended
    steps hold (every state after a planted step carries it; its own inputs do not).
    `recurrent_l2` penalises the recurrent kernel for carrying the input forward, so the state
    at a step holds what that step saw; `position_bias` adds a learned score per step. With the
    bias the model takes exactly `time` steps; without it the time dimension is dynamic.
    A bidirectional encoder concatenates both directions: states are [batch, time, 2 * units].
    """
    x, h = sequence_input(task, fixed_time=cfg.position_bias)
    states = _encoder(cfg.cell, cfg.units, cfg.bidirectional, recurrent_l2=cfg.recurrent_l2)(h)
    context, attention = TemporalAttention(
        score=cfg.score, query=cfg.query, position_bias=cfg.position_bias, name="temporal_attention"
    )(states)
    values = states
    if cfg.values == "inputs":  # the states only score the steps; the sum is of the steps' own inputs
        values = keras.layers.Dense(cfg.units, name="values")(h)
        context = WeightedSum(name="attended_inputs")(values, attention)
    return _model(x, cfg.name, attention, *_head(task)(context, values, attention))


def input_attention(cfg: InputAttentionModel, task: TaskSpec) -> keras.Model:
    """InputAttention on x -> LSTM or GRU (last state) -> Dense(1). Fixed time.

    x [batch, time, features] -> prediction [batch, 1], attention [batch, time].
    Fixed-length data only (the config refuses padded data for it).
    """
    if task.padded:
        raise ValueError("attention_before_lstm takes fixed-length sequences only")
    x, h = sequence_input(task, fixed_time=True)
    weighted, attention = InputAttention(shared=cfg.shared, name="input_attention")(h)
    last_state = _encoder(cfg.cell, cfg.units, sequences=False)(weighted)
    return _model(x, cfg.name, attention, *_head(task)(last_state))


def multihead_pooling(cfg: MultiHeadPoolingModel, task: TaskSpec) -> keras.Model:
    """LSTM or GRU states -> MultiHeadAttentionPooling (learned query) -> Dense(1).

    x [batch, time, features] -> prediction [batch, 1], attention [batch, time] (the heads read
    out as `cfg.readout` says).
    """
    x, h = sequence_input(task, fixed_time=False)
    states = _encoder(cfg.cell, cfg.units, cfg.bidirectional)(h)
    context, attention, added = MultiHeadAttentionPooling(cfg.heads, cfg.key_dim, cfg.readout, name="pooling")(states)
    # each step's share of the logit is the head's kernel on what it adds to the context; the
    # constant is the head's bias plus its kernel on the output projection's bias
    return _model(x, cfg.name, attention, *_head(task)(context, added))


def conv_attention(cfg: ConvAttentionModel, task: TaskSpec) -> keras.Model:
    """ConvEncoder (Conv1D-BatchNorm-ReLU blocks) -> attention pooling -> head, in place of the
    global average pooling of the fully convolutional network: with score "gated" (MILLET's
    attention pooling) GatedAttentionPooling then the head; with "conjunctive" or "instance"
    MilPooling (MILLET's poolings of per-step logits); with "class" ClassAttentionPooling (the
    head at every step, pooled per class); else TemporalAttention then the head.

    `positional_encoding` adds the sinusoidal encoding of each step's position to the encoder's
    states [batch, time, filters]; `state_dropout` then drops that fraction of the states while
    training, before the pooling (an identity at inference and in the exported model).

    x [batch, time, features] -> prediction, attention [batch, time], logit, contribution
    [batch, time, outputs]. Time is dynamic unless `position_bias`.
    """
    x, h = sequence_input(task, fixed_time=cfg.position_bias)
    states = ConvEncoder(cfg.filters, cfg.kernel_sizes, padding=cfg.padding, name="conv_encoder")(h)
    if cfg.positional_encoding:  # MILLET's positions, added to the instance embeddings before its dropout
        states = SinusoidalPositions(name="positional_encoding")(states)
    if cfg.state_dropout:  # MILLET's dropout of the instance embeddings before its pooling
        states = keras.layers.Dropout(cfg.state_dropout, name="state_dropout")(states)
    outputs = TASK_TYPES[task.task_type].outputs(task.n_classes)
    if cfg.score == "class":
        prediction, attention, logit, contribution = ClassAttentionPooling(outputs, task.task_type, name="prediction")(
            states
        )
    elif cfg.score in MIL_POOLINGS:
        prediction, attention, logit, contribution = MilPooling(cfg.score, outputs, task.task_type, name="prediction")(
            states
        )
    elif cfg.score == "gated":
        context, attention, weights = GatedAttentionPooling(floor=cfg.gate_floor, name="gated_attention")(states)
        prediction, logit, contribution = _head(task)(context, states, weights)
    else:
        context, attention = TemporalAttention(
            score=cfg.score, query=cfg.query, position_bias=cfg.position_bias, name="temporal_attention"
        )(states)
        prediction, logit, contribution = _head(task)(context, states, attention)
    return _model(x, cfg.name, attention, prediction, logit, contribution)


BUILDERS = {
    FeatureAttentionModel: feature_attention,
    RecurrentAttentionModel: recurrent_attention,
    InputAttentionModel: input_attention,
    MultiHeadPoolingModel: multihead_pooling,
    ConvAttentionModel: conv_attention,
}


def build_model(model_cfg, task: TaskSpec) -> keras.Model:
    """The model `model_cfg` describes, for the task's inputs, preprocessing and head."""
    return BUILDERS[type(model_cfg)](model_cfg, task)


def load_model(path) -> keras.Model:
    """A saved .keras model; safe_mode refuses Lambda layers and any pickled code (StageFailed,
    naming the file)."""
    from pipeline.core.errors import StageFailed

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as err:
        if "safe_mode" not in str(err) and "Lambda" not in str(err):
            raise
        raise StageFailed(
            f"{path}: refused to load: it holds Python code (a Lambda layer or a "
            "pickled function), which safe_mode does not run"
        ) from None


def batch_norm_folded_copy(model: keras.Model) -> keras.Model:
    """The same inference function as the trained `model` with each ConvEncoder's
    BatchNormalization folded into the Conv1D before it (ConvEncoder.folded_weights): one
    convolution per block in the exported graph, whose runtime then fuses the ReLU into it and, in
    int8_qdq, keeps the activations quantized from one convolution to the next. Same inputs and
    outputs; a model without a ConvEncoder is returned as is."""
    if not any(isinstance(layer, ConvEncoder) for layer in model.layers):
        return model

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, ConvEncoder):
            config["norm_folded"] = True
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for source, target in zip(model.layers, copy.layers):
        target.set_weights(source.folded_weights() if isinstance(source, ConvEncoder) else source.get_weights())
    return copy


def uniform_attention_copy(model: keras.Model) -> keras.Model:
    """The uniform-attention ablation of a trained model: the same weights, every attention layer
    weighing each valid position alike (`uniform=True`), and feature attention's softmax Dense
    given zero weights (softmax of zeros: 1 / features). Same inputs and outputs as `model`."""

    def clone(layer):
        config = layer.get_config()
        if "uniform" in config:
            config["uniform"] = True
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if isinstance(layer, keras.layers.Dense) and layer.name == "attention":
            layer.set_weights([np.zeros(w.shape, w.dtype) for w in layer.get_weights()])
    return copy
