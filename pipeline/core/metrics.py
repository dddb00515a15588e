"""Task and attention metrics, NumPy only. Names match DVC's metrics.json and MLflow.

Shapes: prediction [n, 1] probabilities (binary), [n, 1] values (regression) or [n, classes]
probabilities (multiclass); y [n, 1] (0/1, a value, or a class index); attention [n, positions];
target_positions [n, k] (the k true positions of each sample; k = 0 for real data, where the
true positions are unknown).
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-7


def binary_task_metrics(prediction: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """test/accuracy (threshold 0.5) and test/loss (mean binary cross-entropy)."""
    p = np.clip(prediction.astype(np.float64), EPSILON, 1 - EPSILON)
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    accuracy = np.mean((prediction >= 0.5) == (y >= 0.5))
    return {"test/accuracy": float(accuracy), "test/loss": float(loss)}


def regression_task_metrics(prediction: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """test/mae and test/loss (mean squared error, the training loss)."""
    error = prediction.astype(np.float64) - y
    return {"test/mae": float(np.abs(error).mean()), "test/loss": float((error**2).mean())}


def multiclass_task_metrics(prediction: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """test/accuracy (argmax), test/balanced_accuracy (mean recall over the classes present)
    and test/loss (mean categorical cross-entropy)."""
    truth = y[:, 0].astype(np.int64)
    predicted = prediction.argmax(axis=1)
    p_true = np.clip(prediction[np.arange(len(truth)), truth].astype(np.float64), EPSILON, 1)
    recalls = [np.mean(predicted[truth == c] == c) for c in np.unique(truth)]
    return {
        "test/accuracy": float(np.mean(predicted == truth)),
        "test/balanced_accuracy": float(np.mean(recalls)),
        "test/loss": float(-np.log(p_true).mean()),
    }


def predicted_classes(task_type: str, prediction: np.ndarray) -> np.ndarray:
    """[n] class index: threshold 0.5 for binary, argmax for multiclass tasks."""
    if task_type == "binary":
        return (prediction[:, 0] >= 0.5).astype(np.int64)
    return prediction.argmax(axis=1)


TASK_METRICS = {
    "binary": binary_task_metrics,
    "regression": regression_task_metrics,
    "multiclass": multiclass_task_metrics,
}


def mass_at_target(attention: np.ndarray, target_positions: np.ndarray) -> np.ndarray:
    """Per sample: the attention weight on its true positions, [n]."""
    return np.take_along_axis(attention, target_positions, axis=1).sum(axis=1)


def attention_metrics(
    attention: np.ndarray, target_positions: np.ndarray, lengths: np.ndarray | None = None
) -> dict[str, float]:
    """attention/mass_at_target: mean weight on the true positions;
    attention/argmax_hit: share of samples whose largest weight is on a true position;
    attention/lift: per sample, the mass at target over the uniform share k / length, averaged
        (1 = no better than uniform; `lengths` [n] are the valid steps, all positions if None);
    attention/entropy: mean entropy of the rows in nats (log(positions) for uniform, 0 for one-hot);
    attention/topk_precision: per sample, the share of its k most attended positions that are
        true positions (k = its number of true positions, so it is also the recall), averaged;
    attention/above_uniform_precision and attention/above_uniform_recall: per sample, of the
        positions weighted above the uniform share 1 / length, the share that are true positions,
        and the share of the true positions among them, averaged (a sample weighting no position
        above uniform counts precision 0).
    Without true positions (k = 0) only the entropy is defined.
    """
    entropy = -(attention * np.log(np.clip(attention, EPSILON, 1))).sum(axis=1)
    metrics = {"attention/entropy": float(max(0.0, entropy.mean()))}
    if target_positions.shape[1] == 0:
        return metrics
    mass = mass_at_target(attention, target_positions)
    argmax = attention.argmax(axis=1)
    hit = (target_positions == argmax[:, None]).any(axis=1)
    if lengths is None:
        lengths = np.full(len(attention), attention.shape[1])
    k = target_positions.shape[1]
    uniform_share = k / lengths
    is_target = np.zeros(attention.shape, dtype=bool)
    np.put_along_axis(is_target, target_positions, True, axis=1)
    top_k = np.argsort(-attention, axis=1, kind="stable")[:, :k]
    above = attention > (1.0 / lengths)[:, None]
    found = (above & is_target).sum(axis=1)
    return {
        "attention/mass_at_target": float(mass.mean()),
        "attention/argmax_hit": float(hit.mean()),
        "attention/lift": float((mass / uniform_share).mean()),
        "attention/topk_precision": float(np.take_along_axis(is_target, top_k, axis=1).mean()),
        "attention/above_uniform_precision": float((found / np.maximum(above.sum(axis=1), 1)).mean()),
        "attention/above_uniform_recall": float((found / is_target.sum(axis=1)).mean()),
        **metrics,
    }
