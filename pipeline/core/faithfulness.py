"""Does the model use what its attention points at? Deletion, sufficiency and occlusion measured on
the exported model, NumPy only (the model is any callable x -> {"prediction", "attention"}, such
as an ONNX Runtime session).

A position is a time step of a sequence (x [n, time, channels]) or a feature of a vector
(x [n, features]). Deleting a position sets it to a baseline value (`baseline_values`): the
training mean, zero, or PAD_VALUE on every channel, which the model's padding mask removes.

Scores: the task metric after deletion (accuracy, or mean absolute error for regression), and the
drop of the originally predicted output: the probability of the class the model chose on the
intact input, or for regression the absolute change of the predicted value. Curves run over
k = 1 and k = fraction x valid length for each configured fraction (at least 1 position).

Metrics (prefix faithfulness/; a score is the accuracy, or the mean absolute error for regression):
    deletion_top1, deletion_random1: the score with the most attended position
        deleted, or a random valid one (averaged over the random draws);
    deletion_aopc, deletion_aopc_random: mean drop of the predicted output over the curve's points
        (AOPC, Samek et al. 2017; ERASER's comprehensiveness), attended and random positions;
    deletion_aopc_gain: deletion_aopc - deletion_aopc_random, the area between the two curves
        (> 0: the attended positions matter more than random ones);
    sufficiency_top1 and sufficiency_top{p}pct: the score keeping only the top-k
        attended positions (every other one deleted);
    occlusion_spearman: per sample, Spearman's rank correlation between the attention and the drop
        caused by deleting each position alone (long inputs: each of `segments` windows, weighed by
        their mean attention), averaged; absent where no sample defines it (constant attention or
        drops).
Attention weights are compared to WEIGHT_DECIMALS: ties (a uniform attention) break at random.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.core.contract import PAD_VALUE, valid_positions
from pipeline.core.errors import StageFailed
from pipeline.core.metrics import TASK_METRICS, predicted_classes

Model = Callable[[np.ndarray], dict[str, np.ndarray]]
BASELINES = ("mean", "zero", "pad")
WEIGHT_DECIMALS = 6  # attention weights that differ by float32 rounding alone count as equal


def distinct_weights(attention: np.ndarray) -> np.ndarray:
    """The attention rounded to WEIGHT_DECIMALS: a uniform softmax computed in float32 is constant
    again, so it orders nothing."""
    return np.round(attention, WEIGHT_DECIMALS)


def baseline_values(mode: str, train_x: np.ndarray) -> np.ndarray:
    """The value a deleted position takes, float32 [channels] (sequences) or [features] (vectors):
    "mean" the training split's mean over its valid positions, "zero", or "pad" (PAD_VALUE)."""
    if mode not in BASELINES:
        raise ValueError(f"baseline must be one of {list(BASELINES)}, got {mode!r}")
    width = train_x.shape[-1]
    if mode == "zero":
        return np.zeros(width, np.float32)
    if mode == "pad":
        return np.full(width, PAD_VALUE, np.float32)
    if train_x.ndim == 2:
        return train_x.mean(axis=0).astype(np.float32)
    return train_x[valid_positions(train_x)].mean(axis=0).astype(np.float32)


def delete(x: np.ndarray, deleted: np.ndarray, values: np.ndarray) -> np.ndarray:
    """x with the positions where `deleted` [n, positions] is true set to `values`."""
    if x.ndim == 2:
        return np.where(deleted, values[None, :], x).astype(np.float32)
    return np.where(deleted[..., None], values[None, None, :], x).astype(np.float32)


def ranks(order_scores: np.ndarray, valid: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """int [n, positions]: 0 for the highest score of each row, counting valid positions only;
    invalid positions rank after every valid one. Equal scores rank in the order of `tie_break`
    [n, positions] (ascending), else of position."""
    scores = np.where(valid, order_scores, -np.inf)
    order = np.lexsort((np.zeros_like(scores) if tie_break is None else tie_break, -scores), axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :], axis=1)
    return rank


@dataclass(frozen=True)
class Task:
    """What a prediction is: task_type "binary" | "multiclass" | "regression", and y [n, 1]."""

    task_type: str
    y: np.ndarray

    @property
    def score_name(self) -> str:
        return "mae" if self.task_type == "regression" else "accuracy"

    def score(self, prediction: np.ndarray) -> float:
        return TASK_METRICS[self.task_type](prediction, self.y)[f"test/{self.score_name}"]

    def chosen(self, prediction: np.ndarray) -> np.ndarray:
        """[n] the class the model chose (zeros for regression, which has none)."""
        if self.task_type == "regression":
            return np.zeros(len(prediction), np.int64)
        return predicted_classes(self.task_type, prediction)

    def output(self, prediction: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """[n]: the probability of each sample's `chosen` class (the predicted value, regression)."""
        if self.task_type == "regression":
            return prediction[:, 0]
        if self.task_type == "binary":
            return np.where(chosen == 1, prediction[:, 0], 1 - prediction[:, 0])
        return prediction[np.arange(len(prediction)), chosen]

    def drop(self, intact: np.ndarray, changed: np.ndarray) -> np.ndarray:
        """[n] how far the predicted output fell: probability lost, or |change| for regression."""
        return np.abs(intact - changed) if self.task_type == "regression" else intact - changed


def curve_sizes(lengths: np.ndarray, fractions: list[float]) -> dict[str, np.ndarray]:
    """The curve's points: {"1": k=1, "5pct": round(0.05 x length) at least 1, ...} -> k [n]."""
    sizes = {"1": np.ones_like(lengths)}
    for fraction in fractions:
        sizes[f"{round(fraction * 100):g}pct"] = np.maximum(1, np.round(fraction * lengths)).astype(np.int64)
    return sizes


def occlusion_spearman(
    model: Model, task: Task, x: np.ndarray, attention: np.ndarray, values: np.ndarray, segments: int
) -> float:
    """Mean over samples of Spearman's rho between attention and occlusion drop per position (or
    per window, for inputs of more than `segments` valid positions); samples whose attention or
    drop is constant over their positions are left out (rho undefined). nan if none is left."""
    from scipy.stats import spearmanr

    valid = valid_positions(x)
    intact = model(x)["prediction"]
    chosen = task.chosen(intact)
    before = task.output(intact, chosen)
    rhos = []
    for i in range(len(x)):
        positions = np.flatnonzero(valid[i])
        if np.ptp(attention[i, positions]) == 0:  # uniform attention (MiniRocket's, GAP's): nothing to occlude for
            continue
        windows = np.array_split(positions, min(segments, len(positions)))
        # windows differ in size, and float32 means of equal weights over them differ in the last bits
        weights = np.array([attention[i, window].mean(dtype=np.float64) for window in windows])
        deleted = np.zeros((len(windows), valid.shape[1]), dtype=bool)
        for w, window in enumerate(windows):
            deleted[w, window] = True
        prediction = model(delete(np.repeat(x[i : i + 1], len(windows), axis=0), deleted, values))["prediction"]
        drops = task.drop(before[i], task.output(prediction, np.full(len(windows), chosen[i])))
        if np.ptp(drops) > 0:
            rhos.append(spearmanr(weights, drops).statistic)
    return float(np.mean(rhos)) if rhos else float("nan")


def faithfulness_metrics(
    model: Model,
    task_type: str,
    x: np.ndarray,
    y: np.ndarray,
    values: np.ndarray,
    *,
    fractions: list[float],
    random_draws: int,
    segments: int,
    occlusion_samples: int,
    seed: int,
) -> tuple[dict[str, float], list[dict]]:
    """(metrics, curve rows) of the module docstring for x [n, ...] with targets y [n, 1]; the
    occlusion correlation is measured on the first `occlusion_samples` samples.

    Curve rows: {"size": "1" | "5pct" | ..., "attended": score, "random": score, "kept": score,
    "attended_drop": mean drop, "random_drop": mean drop}, one per curve point."""
    task = Task(task_type, y)
    intact = model(x)
    attention = distinct_weights(intact["attention"])
    chosen = task.chosen(intact["prediction"])
    before = task.output(intact["prediction"], chosen)
    valid = valid_positions(x)
    rng = np.random.default_rng(seed)
    random_ranks = [ranks(rng.random(valid.shape), valid) for _ in range(random_draws)]
    # equal weights (uniform attention, e.g. GAP's) say nothing about order: ties break at random
    attended_rank = ranks(attention, valid, tie_break=rng.random(valid.shape))

    def scored(deleted: np.ndarray) -> tuple[float, float]:
        prediction = model(delete(x, deleted, values))["prediction"]
        return task.score(prediction), float(task.drop(before, task.output(prediction, chosen)).mean())

    rows = []
    for size, k in curve_sizes(valid.sum(axis=1), fractions).items():
        attended, attended_drop = scored(attended_rank < k[:, None])
        random = [scored(rank < k[:, None]) for rank in random_ranks]
        kept, _ = scored(valid & (attended_rank >= k[:, None]))
        rows.append(
            {
                "size": size,
                "attended": attended,
                "random": float(np.mean([r[0] for r in random])),
                "kept": kept,
                "attended_drop": attended_drop,
                "random_drop": float(np.mean([r[1] for r in random])),
            }
        )
    aopc = float(np.mean([r["attended_drop"] for r in rows]))
    aopc_random = float(np.mean([r["random_drop"] for r in rows]))
    metrics = {
        "faithfulness/deletion_top1": rows[0]["attended"],
        "faithfulness/deletion_random1": rows[0]["random"],
        "faithfulness/deletion_aopc": aopc,
        "faithfulness/deletion_aopc_random": aopc_random,
        "faithfulness/deletion_aopc_gain": aopc - aopc_random,
        **{f"faithfulness/sufficiency_top{r['size']}": r["kept"] for r in rows},
        "faithfulness/occlusion_spearman": occlusion_spearman(
            model,
            Task(task_type, y[:occlusion_samples]),
            x[:occlusion_samples],
            attention[:occlusion_samples],
            values,
            segments,
        ),
    }
    return {k: v for k, v in metrics.items() if np.isfinite(v)}, rows


def measure_faithfulness(
    cfg,
    meta: dict,
    run: Model,
    test,
    train_x: np.ndarray,
) -> tuple[dict[str, float], list[dict]]:
    """faithfulness/* metrics and curve rows on the first evaluate.samples test samples, deleting
    positions with the evaluate.baseline value (its mean: over train_x [n, ...]); `run` is the
    exported model's x -> {prediction, attention} (OnnxModel.run)."""
    settings = cfg.evaluate
    if settings.baseline == "pad" and not meta["padded"]:
        raise StageFailed(
            f"evaluate.baseline=pad: the data of {cfg.data.name!r} is fixed-length, so the "
            "model has no padding mask to delete a position with; use mean or zero"
        )
    values = baseline_values(settings.baseline, train_x)
    x, y = test.x[: settings.samples], test.y[: settings.samples]
    metrics, rows = faithfulness_metrics(
        run,
        meta["task_type"],
        x,
        y,
        values,
        fractions=settings.fractions,
        random_draws=settings.random_draws,
        segments=settings.occlusion_segments,
        occlusion_samples=settings.occlusion_samples,
        seed=cfg.seed,
    )
    return metrics, rows


def uniform_ablation(metrics: dict[str, float], uniform: dict[str, float]) -> dict[str, float]:
    """faithfulness/uniform_score: the test score (accuracy, or MAE for regression) of the
    uniform-attention ablation; faithfulness/uniform_drop: how much worse it is than the model
    (accuracy lost, or MAE gained)."""
    if "test/accuracy" in metrics:
        return {
            "faithfulness/uniform_score": uniform["test/accuracy"],
            "faithfulness/uniform_drop": metrics["test/accuracy"] - uniform["test/accuracy"],
        }
    return {
        "faithfulness/uniform_score": uniform["test/mae"],
        "faithfulness/uniform_drop": uniform["test/mae"] - metrics["test/mae"],
    }
