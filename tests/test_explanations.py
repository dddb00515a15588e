"""AOPCR and NDCG@n (pipeline/core/explanations.py) on a hand-built ONNX model whose answer is known."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.core.contract import PAD_VALUE
from pipeline.core.explanations import (
    REMOVED_SHARES,
    aopcr,
    chosen_classes,
    class_scores,
    explanation_metrics,
    measure_explanations,
    ndcg_at_n,
    occlusion_scores,
    predicted_contribution,
)
from pipeline.serving.inference import OnnxModel


def _summing_model() -> OnnxModel:
    """x [batch, time, 1] -> logit [s, -s] with s = Σ_t x_t over the valid steps (padded steps, -1,
    count 0); contribution [batch, time, 2] = [x_t, -x_t] (0 on padding); attention softmax of x."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 1])
    outputs = [
        helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 2]),
        helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["batch", "time"]),
        helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 2]),
        helper.make_tensor_value_info("contribution", TensorProto.FLOAT, ["batch", "time", 2]),
    ]
    constants = [
        helper.make_tensor("pad", TensorProto.FLOAT, [], [PAD_VALUE]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("time_axis", TensorProto.INT64, [1], [1]),
        helper.make_tensor("last_axis", TensorProto.INT64, [1], [2]),
    ]
    nodes = [
        helper.make_node("Equal", ["x", "pad"], ["is_pad"]),
        helper.make_node("Where", ["is_pad", "zero", "x"], ["values"]),  # [batch, time, 1]
        helper.make_node("Neg", ["values"], ["negated"]),
        helper.make_node("Concat", ["values", "negated"], ["contribution"], axis=2),
        helper.make_node("ReduceSum", ["contribution", "time_axis"], ["logit"], keepdims=0),
        helper.make_node("Softmax", ["logit"], ["prediction"], axis=1),
        helper.make_node("Squeeze", ["values", "last_axis"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["attention"], axis=1),
    ]
    graph = helper.make_graph(nodes, "summing", [x], outputs, initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return OnnxModel(model.SerializeToString())


def _series(n: int = 200, time: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).exponential(1.0, (n, time, 1)).astype(np.float32)


def _expected_aopc(x: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[n]: removing the top steps of a summing model's predicted class (all x > 0: class 0, whose
    logit is the sum) drops the logit by exactly the sum of the removed values."""
    values = x[:, :, 0].astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    drops = [ordered[:, : int(np.floor(share * x.shape[1] + 1e-9))].sum(axis=1) for share in REMOVED_SHARES]
    return np.sum(drops, axis=0) / (len(REMOVED_SHARES) + 1)


def test_aopcr_of_the_exact_contribution_is_the_known_drop_minus_the_random_orders():
    model = _summing_model()
    x = _series()
    out = model.run(x)
    chosen = chosen_classes(out["logit"], "multiclass")
    assert (chosen == 0).all()
    contribution = class_scores(out["contribution"], chosen, "multiclass")
    np.testing.assert_allclose(contribution, x[:, :, 0])
    gains, random_aopc = aopcr(model.run, x, {"contribution": contribution}, "multiclass", seed=0)
    expected = _expected_aopc(x, contribution).mean()
    np.testing.assert_allclose(gains["contribution"] + random_aopc, expected, rtol=1e-5)
    # a random order removes the mean value per step: Σ over the points of k × mean / 11
    steps = sum(int(np.floor(share * 40 + 1e-9)) for share in REMOVED_SHARES)
    assert random_aopc == pytest.approx(steps * float(x.mean()) / 11, rel=0.05)
    assert gains["contribution"] > 1.0


def test_a_random_explanation_scores_aopcr_near_zero_and_the_reversed_one_below():
    model = _summing_model()
    x = _series(seed=1)
    contribution = x[:, :, 0]
    noise = np.random.default_rng(5).random(contribution.shape)
    gains, random_aopc = aopcr(
        model.run, x, {"random": noise, "reversed": -contribution, "exact": contribution}, "multiclass", seed=1
    )
    assert abs(gains["random"]) < 0.05 * random_aopc
    assert gains["reversed"] < 0 < gains["exact"]


def test_aopcr_removes_steps_of_variable_length_series_and_reads_the_binary_class():
    """Padded series are shortened over their valid steps only; a binary model's one logit is
    negated where it predicts class 0, and so is its contribution."""
    model = _summing_model()
    x = _series(n=50, time=30, seed=2)
    x[:25, 20:] = PAD_VALUE
    out = model.run(x)
    assert (out["contribution"][:25, 20:] == 0).all()
    gains, _ = aopcr(model.run, x, {"exact": x[:, :, 0]}, "multiclass", seed=2)
    assert gains["exact"] > 0
    logit = np.array([[2.0], [-1.0]])
    chosen = chosen_classes(logit, "binary")
    np.testing.assert_array_equal(chosen, [1, 0])
    contribution = np.array([[[1.0], [-3.0]], [[1.0], [-3.0]]])
    np.testing.assert_array_equal(class_scores(contribution, chosen, "binary"), [[1.0, -3.0], [-1.0, 3.0]])


def test_ndcg_at_n_counts_hits_by_rank():
    valid = np.ones((3, 6), dtype=bool)
    targets = np.array([[1, 4], [1, 4], [1, 4]])
    scores = np.array(
        [
            [0, 9, 0, 0, 8, 0],  # both targets on top: 1
            [0, 9, 0, 0, 0, 8],  # one hit at rank 0: 1 / (1 + 1/log2(3))
            [0, 0, 9, 8, 0, 0],  # none: 0
        ],
        dtype=float,
    )
    best = 1 + 1 / np.log2(3)
    assert ndcg_at_n(scores, targets, valid) == pytest.approx((1 + 1 / best + 0) / 3)
    valid[0, 1] = False  # a padded step cannot be ranked
    assert ndcg_at_n(scores, targets, valid) < (1 + 1 / best) / 3
    assert np.isnan(ndcg_at_n(scores, np.zeros((3, 0), dtype=int), valid))


def test_occlusion_of_single_steps_finds_what_the_exact_contribution_finds():
    """With one window per step, removing a step of the summing model drops its logit by the
    step's value: occlusion scores equal the contribution, and so do their AOPCR; the metrics
    name every explanation and report NDCG on true positions."""
    model = _summing_model()
    x = _series(n=40, time=20, seed=3)
    occlusion = occlusion_scores(model.run, x, "multiclass", windows=20)
    np.testing.assert_allclose(occlusion, x[:, :, 0], atol=1e-5)  # differences of float32 sums
    targets = np.argsort(-x[:, :, 0], axis=1)[:, :2]  # the two largest values: what the logit rests on
    metrics = explanation_metrics(model.run, x, targets, "multiclass", windows=20, seed=0)
    assert metrics["faithfulness/aopcr_occlusion"] == pytest.approx(metrics["faithfulness/aopcr_contribution"])
    assert metrics["faithfulness/ndcg_contribution"] == pytest.approx(1.0)
    assert metrics["faithfulness/contribution_mass_at_target"] == pytest.approx(
        (np.sort(x[:, :, 0], axis=1)[:, -2:].sum(axis=1) / x[:, :, 0].sum(axis=1)).mean(), rel=1e-5
    )
    coarse = occlusion_scores(model.run, x, "multiclass", windows=4)
    assert len(np.unique(coarse[0])) == 4, "four windows of five steps, each one score"


def test_a_model_without_aopcr_gets_the_ndcg_of_its_attention_on_a_planted_task():
    """Regression has no predicted class to remove steps for: of the explanation metrics only the
    attention's NDCG@n on the true positions remains, and none where the task has no true
    positions."""
    model = _summing_model()
    x = _series(n=30, time=12, seed=4)
    largest = np.argsort(-x[:, :, 0], axis=1)[:, :2]  # the softmax of x puts its top two there
    cfg = SimpleNamespace(evaluate=SimpleNamespace(samples=20, occlusion_segments=4), seed=0)
    planted = SimpleNamespace(x=x, target_positions=largest)
    metrics = measure_explanations(cfg, {"task_type": "regression"}, model, planted)
    assert metrics == {"faithfulness/ndcg_attention": pytest.approx(1.0)}
    wrong = SimpleNamespace(x=x, target_positions=np.argsort(x[:, :, 0], axis=1)[:, :2])
    assert measure_explanations(cfg, {"task_type": "regression"}, model, wrong)["faithfulness/ndcg_attention"] == 0.0
    unplanted = SimpleNamespace(x=x, target_positions=np.zeros((30, 0), dtype=np.int64))
    assert measure_explanations(cfg, {"task_type": "regression"}, model, unplanted) == {}


def test_the_picture_draws_the_contribution_to_the_predicted_class():
    """Multiclass: the column of the largest logit; binary: the one column, negated where the
    prediction is class 0 (positive always means for the predicted class); none without it."""
    contribution = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    logit = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    drawn = predicted_contribution({"logit": logit, "contribution": contribution}, "multiclass")
    np.testing.assert_array_equal(drawn, [[1, 4], [6, 9]])
    binary = {"logit": np.array([[1.5], [-0.5]]), "contribution": np.array([[[1.0], [-2.0]], [[1.0], [-2.0]]])}
    np.testing.assert_array_equal(predicted_contribution(binary, "binary"), [[1, -2], [-1, 2]])
    assert predicted_contribution({"logit": logit}, "multiclass") is None
