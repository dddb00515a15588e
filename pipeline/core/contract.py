"""The names the exported models promise: tests and users bind inputs and outputs by them."""

from dataclasses import dataclass

import numpy as np

INPUT_NAME = "x"
OUTPUT_NAMES = ("prediction", "attention")
# Beside them: `logit` [batch, outputs] (the prediction before its softmax or sigmoid) from every
# model, and `contribution` [batch, positions, outputs] from the models whose logit decomposes
# exactly over the steps (sum over the valid steps plus a constant per output); 0 on padded steps.
LOGIT_NAME = "logit"
CONTRIBUTION_NAME = "contribution"
BATCH_DIM = "batch"
TIME_DIM = "time"
OPSET_MAX = 18  # tf2onnx 1.17 rejects opset 19
PAD_VALUE = -1.0  # padded steps of variable-length sequences hold this on every feature
# The scores of TemporalAttention (pipeline/models/layers.py). The recurrent models take any but
# "mean"; the convolutional ones any but "last_state", and two pooling layers of their own.
TEMPORAL_SCORES = ("location", "dot", "general", "additive", "scaled_dot", "last_state", "mean")
# MILLET's poolings of per-step logits (MilPooling), scores of the convolutional model.
MIL_POOLINGS = ("conjunctive", "instance")
# What the convolutional encoder's convolutions see beyond a series' ends (ConvEncoder).
CONV_PADDINGS = ("zero", "replicate")
# How MultiHeadAttentionPooling reads its heads out as one attention row: "norm" weighs each step
# by the norm of the vector it adds to the pooled context (every head's share, through the value
# and output projections); "heads_mean" averages the heads' softmax weights.
HEAD_READOUTS = ("norm", "heads_mean")
# The ONNX variants the export stage can write (pipeline/onnx/variants.py); fp32 is models/model.onnx.
VARIANTS = ("fp32", "fp16", "int8", "int8_qdq")


@dataclass(frozen=True)
class TaskType:
    """What a task type makes of the model's head: its activation (None: linear), the loss and
    the reported metric as Keras's compile names them, and the same metric per sample as a
    function of keras.metrics (for the training loop written out for several workers)."""

    activation: str | None
    loss: str
    metric: str
    per_sample_metric: str

    def outputs(self, n_classes: int | None) -> int:
        """Columns of the prediction: one per class for a softmax head, else 1."""
        return n_classes if self.activation == "softmax" else 1


# The one table of task types: config.task_type names one, every layer and loop reads it here.
TASK_TYPES = {
    "binary": TaskType("sigmoid", "binary_crossentropy", "accuracy", "binary_accuracy"),
    "multiclass": TaskType("softmax", "sparse_categorical_crossentropy", "accuracy", "sparse_categorical_accuracy"),
    "regression": TaskType(None, "mean_squared_error", "mae", "mean_absolute_error"),
}


def valid_positions(x: np.ndarray) -> np.ndarray:
    """bool [n, positions]: the positions a model sees in x [n, time, channels] (padded steps are
    PAD_VALUE on every channel) or x [n, features] (every feature)."""
    if x.ndim == 2:
        return np.ones(x.shape, dtype=bool)
    return ~(x == PAD_VALUE).all(axis=-1)
