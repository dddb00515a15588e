"""Do seeds of one config attend alike? faithfulness/seed_spearman: per run, the mean over the
other seeds' runs of the same cell (data set and model) of Spearman's rank correlation between
their attention rows on the same test series, averaged over the series (Wiegreffe and Pinter
2019: attention that changes from seed to seed explains little). Each run's attention comes
from its own ONNX model as logged to MLflow, on the test split its config prepares (the TEST
file of real data: the same series for every seed). NumPy, ONNX Runtime and MLflow only.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from pipeline.core.contract import valid_positions
from pipeline.core.faithfulness import distinct_weights

METRIC = "faithfulness/seed_spearman"


def rank_agreement(first: np.ndarray, second: np.ndarray, valid: np.ndarray) -> float:
    """Mean over rows of Spearman's rho between two attention matrices [n, positions] over each
    row's valid positions; rows where either is constant (to WEIGHT_DECIMALS) are left out (nan
    if all are)."""
    from scipy.stats import spearmanr

    rhos = []
    for a, b, keep in zip(distinct_weights(first), distinct_weights(second), valid):
        a, b = a[keep], b[keep]
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            rhos.append(spearmanr(a, b).statistic)
    return float(np.mean(rhos)) if rhos else float("nan")


def seed_agreement(attention_by_run: dict[str, np.ndarray], valid: np.ndarray) -> dict[str, float]:
    """For each run, its mean rank agreement with every other run (nan where undefined)."""
    pairs: dict[str, list[float]] = {run: [] for run in attention_by_run}
    for first, second in combinations(attention_by_run, 2):
        rho = rank_agreement(attention_by_run[first], attention_by_run[second], valid)
        pairs[first].append(rho)
        pairs[second].append(rho)
    return {
        run: float(np.nanmean(rhos)) if not np.isnan(rhos).all() else float("nan")
        for run, rhos in pairs.items()
        if rhos
    }


def logged_onnx_attention(tracking_uri: str, run, x: np.ndarray) -> np.ndarray | None:
    """The attention [n, positions] on x of the ONNX model that `run` of the store logged; None
    if it logged none."""
    from pipeline.serving.inference import OnnxModel
    from pipeline.tracking import logged_onnx_file

    path = logged_onnx_file(tracking_uri, run)
    return None if path is None else OnnxModel(path).run(x)["attention"]


def test_inputs(overrides: list[str]) -> np.ndarray:
    """The test split's inputs of the config composed from conf/ with `overrides`."""
    from pipeline.data.splits import prepared_for

    return prepared_for(overrides)[1]["test"].x


def cell_agreement(tracking_uri: str, runs_by_id: dict[str, object], x: np.ndarray) -> dict[str, float]:
    """seed_spearman of each run of one cell (same config but the seed, same test inputs x) of
    the store `tracking_uri`."""
    attention = {run_id: logged_onnx_attention(tracking_uri, run, x) for run_id, run in runs_by_id.items()}
    attention = {run_id: rows for run_id, rows in attention.items() if rows is not None}
    return seed_agreement(attention, valid_positions(x)) if len(attention) > 1 else {}
