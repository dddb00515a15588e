"""MiniRocket (Dempster et al. 2021) as a Keras model, so that it goes through the same export,
ONNX evaluation and deployment as the attention models.

sktime's `MiniRocketMultivariate` chooses the transform from the training split (dilations, the
channels of each kernel, the biases: quantiles of the convolution outputs); `MiniRocketFeatures`
computes that transform with Keras ops (dilated Conv1D with fixed weights, then the proportion
of positive values, PPV); scikit-learn's `RidgeClassifierCV` fits the linear head on those very
features, its regularisation chosen by leave-one-out cross-validation on the training split.
Nothing here is trained by gradient descent.
"""

from __future__ import annotations

import keras
import numpy as np

from pipeline.core.config import MiniRocketModel
from pipeline.models import TaskSpec, sequence_input
from pipeline.models.layers import KERNEL_LENGTH, KERNEL_POSITIONS, LinearHead, MiniRocketFeatures, TemporalAttention

RIDGE_ALPHAS = np.logspace(-3, 3, 10)  # the grid of the MiniRocket paper
# Biases are quantiles of the convolution outputs, so on series with flat stretches (a device
# switched off) many biases sit on a crowd of outputs that equal them but for float rounding, and
# TensorFlow and ONNX Runtime round differently: on ACSF1 some features differed by 0.6 between
# the two and 3 % of the test series changed class. Raising every bias by this share of the
# largest |bias| counts such ties as not positive in both.
TIE_MARGIN = 1e-5


def transform_weights(parameters, channels: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The conv kernels [9, channels, 84] and biases [84, n] of each dilation, from the
    `parameters` of a fitted sktime MiniRocketMultivariate: (channels per combination, channel
    indices, dilations, features per dilation, biases)."""
    per_combination, channel_indices, _dilations, features_per_dilation, biases = parameters
    kernels, bias_blocks = [], []
    combination, channel_start, feature_start = 0, 0, 0
    for n_features in features_per_dilation:
        kernel = np.zeros((KERNEL_LENGTH, channels, len(KERNEL_POSITIONS)), dtype=np.float32)
        for k, positions in enumerate(KERNEL_POSITIONS):
            taps = np.full(KERNEL_LENGTH, -1.0, dtype=np.float32)
            taps[positions] = 2.0
            chosen = channel_indices[channel_start : channel_start + per_combination[combination]]
            kernel[:, chosen, k] = taps[:, None]
            channel_start += per_combination[combination]
            combination += 1
        end = feature_start + len(KERNEL_POSITIONS) * n_features
        kernels.append(kernel)
        bias_blocks.append(np.asarray(biases[feature_start:end], np.float32).reshape(len(KERNEL_POSITIONS), n_features))
        feature_start = end
    return kernels, bias_blocks


def fit_minirocket(
    cfg: MiniRocketModel, task: TaskSpec, x: np.ndarray, y: np.ndarray, seed: int
) -> tuple[keras.Model, dict]:
    """The fitted MiniRocket classifier as a Keras model with outputs `prediction` (softmax of
    the ridge scores, [batch, classes]), `logit` (the ridge scores) and `attention` (uniform over the valid steps: the
    transform weighs every step alike), and a report (the ridge's alpha, training accuracy).

    x float32 [n, time, channels]: the raw training series (the model normalises them as the
    task says); y [n, 1]: class indices."""
    from sklearn.linear_model import RidgeClassifierCV
    from sktime.transformations.rocket import MiniRocketMultivariate

    inputs, normalised_tensor = sequence_input(task, fixed_time=False)
    normalised = keras.Model(inputs, normalised_tensor).predict(x, batch_size=256, verbose=0)
    channels = x.shape[2]
    rocket = MiniRocketMultivariate(
        num_kernels=cfg.num_kernels,
        max_dilations_per_kernel=cfg.max_dilations_per_kernel,
        random_state=seed,
    ).fit(normalised.transpose(0, 2, 1))
    kernels, biases = transform_weights(rocket.parameters, channels)
    margin = TIE_MARGIN * max(float(np.abs(b).max()) for b in biases)
    biases = [b + np.float32(margin) for b in biases]
    dilations = [int(d) for d in rocket.parameters[2]]

    features_layer = MiniRocketFeatures(dilations, [b.shape[1] for b in biases], channels, name="minirocket")
    features = features_layer(normalised_tensor)
    features_layer.set_weights([*kernels, *biases])
    train_features = keras.Model(inputs, features).predict(x, batch_size=64, verbose=0)

    ridge = RidgeClassifierCV(alphas=RIDGE_ALPHAS).fit(train_features, y[:, 0].astype(int))
    coef = ridge.coef_.reshape(-1, train_features.shape[1]).T  # [features, 1 or classes]
    intercept = np.atleast_1d(ridge.intercept_)
    n_classes = task.n_classes
    if n_classes == 2:  # one score d for class 1: logits (-d/2, d/2) give the same decision
        coef, intercept = np.concatenate([-coef / 2, coef / 2], axis=1), np.array([-intercept[0] / 2, intercept[0] / 2])
    head = LinearHead(n_classes, "multiclass", name="prediction")
    prediction, logit = head(features)
    head.set_weights([coef.astype(np.float32), intercept.astype(np.float32)])
    _, attention = TemporalAttention(score="mean", name="uniform_attention")(normalised_tensor)
    model = keras.Model(inputs, {"prediction": prediction, "attention": attention, "logit": logit}, name=cfg.name)
    report = {
        "train/ridge_alpha": float(ridge.alpha_),
        "train/features": int(train_features.shape[1]),
        "train/final_accuracy": float(ridge.score(train_features, y[:, 0].astype(int))),
    }
    return model, report
