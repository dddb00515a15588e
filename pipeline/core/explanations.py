"""Explanations measured in the field's units, on the exported model, NumPy only: AOPCR as MILLET
defines it (Early et al. 2024, "Inherently interpretable time series classification via multiple
instance learning") and NDCG@n on tasks whose true positions are known.

An explanation scores each valid step of each series for the class the model predicts: the
`attention` [n, time] (the same for every class), or the predicted class's column of the
`contribution` [n, time, outputs] (class-specific and signed; for a binary model's one column,
negated where the model predicts class 0), or any post-hoc score such as occlusion.

AOPC: order the valid steps by the explanation, most relevant first; remove the top 5 %, 10 %, ...
50 % of them (floor of the share of the valid length), so the series gets shorter; read the
predicted class's logit of each shortened series. AOPC = Σ over the 10 points of (logit before -
logit after) / 11 (the intact series is the 11th point, where the drop is 0). AOPCR = AOPC - the
mean AOPC of RANDOM_ORDERS random orders of the same series: > 0 where the explanation finds the
steps the logit rests on better than chance. Units are logits, so predicted probabilities near 1
do not saturate it. The model is any callable x [n, time, channels] -> {"logit": [n, outputs]}
that takes any number of steps (an ONNX Runtime session of a model with a dynamic time axis).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.core.contract import CONTRIBUTION_NAME, LOGIT_NAME, valid_positions
from pipeline.core.faithfulness import ranks

Model = Callable[[np.ndarray], dict[str, np.ndarray]]
REMOVED_SHARES = tuple(round(0.05 * step, 2) for step in range(1, 11))  # MILLET: 5 % to 50 % in steps of 5 %
RANDOM_ORDERS = 3  # MILLET's


def chosen_classes(logit: np.ndarray, task_type: str) -> np.ndarray:
    """[n] the predicted class of logit [n, outputs]: the largest of a multiclass head, class 1
    where a binary head's one logit is positive."""
    if task_type == "binary":
        return (logit[:, 0] > 0).astype(np.int64)
    return logit.argmax(axis=1)


def chosen_logit(logit: np.ndarray, chosen: np.ndarray, task_type: str) -> np.ndarray:
    """[n] the logit of each sample's `chosen` class (a binary head's logit, negated for class 0)."""
    if task_type == "binary":
        return np.where(chosen == 1, logit[:, 0], -logit[:, 0])
    return logit[np.arange(len(logit)), chosen]


def class_scores(contribution: np.ndarray, chosen: np.ndarray, task_type: str) -> np.ndarray:
    """[n, time]: the contribution [n, time, outputs] of each sample's `chosen` class."""
    if task_type == "binary":
        return np.where((chosen == 1)[:, None], contribution[:, :, 0], -contribution[:, :, 0])
    return np.take_along_axis(contribution, chosen[:, None, None], axis=2)[:, :, 0]


def predicted_contribution(outputs: dict[str, np.ndarray], task_type: str) -> np.ndarray | None:
    """[n, time]: each sample's contribution to its predicted class (for and against it:
    positive, negative; regression: to its prediction), from a model's outputs; None for a
    model without `contribution`."""
    if CONTRIBUTION_NAME not in outputs:
        return None
    if task_type == "regression":
        return outputs[CONTRIBUTION_NAME][:, :, 0]
    chosen = chosen_classes(outputs[LOGIT_NAME], task_type)
    return class_scores(outputs[CONTRIBUTION_NAME], chosen, task_type)


def logits_of_kept(model: Model, x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """[n, outputs]: the logits of each series x [n, time, channels] shortened to its `kept`
    [n, time] steps; series of one length go through the model as one batch."""
    lengths = kept.sum(axis=1)
    logits = None
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        batch = np.stack([x[i][kept[i]] for i in rows])  # [rows, length, channels]
        out = model(batch)[LOGIT_NAME]
        logits = np.zeros((len(x), out.shape[1]), np.float64) if logits is None else logits
        logits[rows] = out
    return logits


def aopc(model: Model, x: np.ndarray, scores: np.ndarray, task_type: str, tie_break: np.ndarray) -> np.ndarray:
    """[n] the AOPC of the module docstring of explanation `scores` [n, time] on x [n, time,
    channels]; equal scores are ordered by `tie_break` [n, time] (ascending)."""
    valid = valid_positions(x)
    intact = model(x)[LOGIT_NAME]
    chosen = chosen_classes(intact, task_type)
    before = chosen_logit(intact, chosen, task_type)
    order = ranks(scores, valid, tie_break=tie_break)  # 0: the most relevant valid step
    lengths = valid.sum(axis=1)
    drops = np.zeros(len(x), np.float64)
    for share in REMOVED_SHARES:
        removed = order < np.floor(share * lengths + 1e-9).astype(np.int64)[:, None]
        drops += before - chosen_logit(logits_of_kept(model, x, valid & ~removed), chosen, task_type)
    return drops / (len(REMOVED_SHARES) + 1)


def aopcr(
    model: Model, x: np.ndarray, explanations: dict[str, np.ndarray], task_type: str, seed: int
) -> tuple[dict[str, float], float]:
    """({name: mean AOPCR over the series} of each explanation [n, time] in `explanations`, the
    mean AOPC of the random orders). Every explanation is compared with the same RANDOM_ORDERS
    random orders of the same series x [n, time, channels]."""
    rng = np.random.default_rng(seed)
    shape = x.shape[:2]
    tie_break = rng.random(shape)
    random_aopc = np.mean(
        [aopc(model, x, rng.random(shape), task_type, tie_break) for _ in range(RANDOM_ORDERS)], axis=0
    )
    gains = {
        name: float(np.mean(aopc(model, x, scores, task_type, tie_break) - random_aopc))
        for name, scores in explanations.items()
    }
    return gains, float(random_aopc.mean())


def ndcg_at_n(scores: np.ndarray, target_positions: np.ndarray, valid: np.ndarray) -> float:
    """Mean over samples of NDCG@n: the n = k true positions of each sample (target_positions
    [n, k]) against the n highest-scored valid steps of scores [n, time], each hit at rank r
    (from 0) worth 1 / log2(r + 2), normalised by the sum for n hits. nan for k = 0."""
    k = target_positions.shape[1]
    if k == 0:
        return float("nan")
    top = np.argsort(-np.where(valid, scores, -np.inf), axis=1, kind="stable")[:, :k]  # [n, k]
    hits = (top[:, :, None] == target_positions[:, None, :]).any(axis=2)  # [n, k]
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    return float(((hits * discounts).sum(axis=1) / discounts.sum()).mean())


def occlusion_scores(model: Model, x: np.ndarray, task_type: str, windows: int) -> np.ndarray:
    """[n, time]: the post-hoc peer of a model's own explanations: each of `windows` equal
    windows of a series' valid steps removed alone, every step of a window scored by the drop of
    the predicted class's logit (0 on padding). Costs `windows` model calls per series."""
    valid = valid_positions(x)
    intact = model(x)[LOGIT_NAME]
    chosen = chosen_classes(intact, task_type)
    before = chosen_logit(intact, chosen, task_type)
    lengths = valid.sum(axis=1)
    rank = np.cumsum(valid, axis=1) - 1  # each valid step's index among the valid steps
    window_of = np.where(valid, rank * np.minimum(windows, lengths)[:, None] // lengths[:, None], -1)
    scores = np.zeros(valid.shape, np.float64)
    for window in range(windows):
        inside = window_of == window
        present = inside.any(axis=1)
        if not present.any():
            break
        drop = before - chosen_logit(logits_of_kept(model, x, valid & ~inside), chosen, task_type)
        scores += np.where(inside & present[:, None], drop[:, None], 0.0)
    return scores


def explanation_metrics(
    model: Model, x: np.ndarray, target_positions: np.ndarray, task_type: str, *, windows: int, seed: int
) -> dict[str, float]:
    """faithfulness/aopcr_<explanation> for the model's `attention`, its `contribution` (where it
    has one) and occlusion over `windows` windows, against the same random orders of the same
    series x [n, time, channels]; faithfulness/aopc_random, the random orders' own AOPC;
    faithfulness/occlusion_calls, the model calls per series occlusion costs; and where the task
    has true positions (target_positions [n, k], k > 0), faithfulness/ndcg_<explanation> and
    faithfulness/contribution_mass_at_target, the share of the predicted class's positive
    contribution that lies on them."""
    out = model(x)
    chosen = chosen_classes(out[LOGIT_NAME], task_type)
    explanations = {"attention": out["attention"]}
    if "contribution" in out:
        explanations["contribution"] = class_scores(out["contribution"], chosen, task_type)
    explanations["occlusion"] = occlusion_scores(model, x, task_type, windows)
    gains, random_aopc = aopcr(model, x, explanations, task_type, seed)
    metrics = {f"faithfulness/aopcr_{name}": gain for name, gain in gains.items()}
    metrics["faithfulness/aopc_random"] = random_aopc
    metrics["faithfulness/occlusion_calls"] = float(windows)
    if target_positions.shape[1]:
        valid = valid_positions(x)
        for name, scores in explanations.items():
            metrics[f"faithfulness/ndcg_{name}"] = ndcg_at_n(scores, target_positions, valid)
        if "contribution" in explanations:
            positive = np.maximum(explanations["contribution"], 0.0)
            on_target = np.take_along_axis(positive, target_positions, axis=1).sum(axis=1)
            total = positive.sum(axis=1)
            shares = np.divide(on_target, total, out=np.zeros_like(total), where=total > 0)
            metrics["faithfulness/contribution_mass_at_target"] = float(shares.mean())
    return metrics


def measure_explanations(cfg, meta: dict, model, test) -> dict[str, float]:
    """explanation_metrics of an OnnxModel `model` on the first `evaluate.samples` series of the
    `test` split, as the evaluate stage measures them (`evaluate.occlusion_segments` windows, the
    run's seed). A regression model, a fixed-length one or one without a `logit` output has no
    AOPCR; where its task has true positions it gets faithfulness/ndcg_attention alone."""
    samples = cfg.evaluate.samples
    x, target_positions = test.x[:samples], test.target_positions[:samples]
    if meta["task_type"] == "regression" or not model.takes_any_length or LOGIT_NAME not in model.output_names:
        if not target_positions.shape[1]:
            return {}
        attention = model.run(x)["attention"]
        return {"faithfulness/ndcg_attention": ndcg_at_n(attention, target_positions, valid_positions(x))}
    return explanation_metrics(
        model.run, x, target_positions, meta["task_type"], windows=cfg.evaluate.occlusion_segments, seed=cfg.seed
    )
