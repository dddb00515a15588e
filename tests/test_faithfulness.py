"""Faithfulness metrics on hand-built ONNX models whose answers are known, and the masking baselines."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.contract import PAD_VALUE, valid_positions
from pipeline.core.faithfulness import (
    baseline_values,
    delete,
    distinct_weights,
    faithfulness_metrics,
    ranks,
)
from pipeline.serving.inference import OnnxModel

STEPS, USED = 6, 2


def _model(attended: int) -> OnnxModel:
    return OnnxModel(known_onnx(attended).SerializeToString())


def known_onnx(attended: int | None):
    """x [batch, 6, 1] -> prediction sigmoid(5 x[:, 2, 0]) [batch, 1] (only step 2 decides) and
    attention one-hot on step `attended` for every sample (None: 1/6 on every step)."""
    row = np.full(STEPS, 1 / STEPS, np.float32) if attended is None else np.eye(STEPS, dtype=np.float32)[attended]
    nodes = [
        helper.make_node("Gather", ["x", "used"], ["step"], axis=1),  # [batch, 1]
        helper.make_node("Mul", ["step", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prediction"]),
        helper.make_node("Mul", ["x", "zero"], ["nothing"]),
        helper.make_node("ReduceSum", ["nothing", "last_axis"], ["zeros"], keepdims=0),  # [batch, 6]
        helper.make_node("Add", ["zeros", "row"], ["attention"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(USED, np.int64), "used"),
        numpy_helper.from_array(np.array(5, np.float32), "gain"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array([2], np.int64), "last_axis"),
        numpy_helper.from_array(row, "row"),
    ]
    graph = helper.make_graph(
        nodes,
        "known",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", STEPS, 1])],
        [
            helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["batch", STEPS]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _data(n: int = 40):
    """Step 2 holds +2 or -2 (the label: 1 if +2), the other steps noise in (0.1, 0.9); nothing
    equals PAD_VALUE."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 0.9, (n, STEPS, 1)).astype(np.float32)
    sign = np.where(np.arange(n) % 2 == 0, 2.0, -2.0)
    x[:, USED, 0] = sign
    return x, (sign > 0).astype(np.float32)[:, None]


def _metrics(attended: int):
    x, y = _data()
    return faithfulness_metrics(
        _model(attended).run,
        "binary",
        x,
        y,
        np.zeros(1, np.float32),
        fractions=[0.5],
        random_draws=20,
        segments=64,
        occlusion_samples=40,
        seed=0,
    )


def test_attention_on_the_deciding_step_is_faithful():
    metrics, rows = _metrics(attended=USED)
    # deleting step 2 leaves sigmoid(0) = 0.5, which reads as class 1: half the samples right
    assert metrics["faithfulness/deletion_top1"] == pytest.approx(0.5)
    assert metrics["faithfulness/sufficiency_top1"] == pytest.approx(1.0)
    # one random step of six hits step 2 with probability 1/6: accuracy about 1 - 0.5/6
    assert 0.85 < metrics["faithfulness/deletion_random1"] < 0.99
    lost = 1 / (1 + np.exp(-10.0)) - 0.5  # the chosen class's probability falls to 0.5
    assert metrics["faithfulness/deletion_aopc"] == pytest.approx(lost, rel=1e-5)
    assert metrics["faithfulness/deletion_aopc_gain"] > 0.2
    assert metrics["faithfulness/occlusion_spearman"] == pytest.approx(1.0)
    assert [r["size"] for r in rows] == ["1", "50pct"]


def test_attention_beside_the_deciding_step_is_found_out():
    metrics, rows = _metrics(attended=4)
    assert metrics["faithfulness/deletion_top1"] == pytest.approx(1.0)
    assert metrics["faithfulness/sufficiency_top1"] == pytest.approx(0.5)
    assert rows[0]["attended_drop"] == pytest.approx(0.0, abs=1e-6)  # step 4 alone: nothing lost
    # beyond step 4 the weights are equal, so the other two of the top half are random steps
    assert rows[1]["attended_drop"] == pytest.approx(rows[1]["random_drop"], abs=0.1)
    assert metrics["faithfulness/deletion_aopc_gain"] < 0
    assert metrics["faithfulness/occlusion_spearman"] == pytest.approx(-0.2)


def test_uniform_attention_orders_nothing():
    """Equal weights break ties at random: deleting the "top" position is deleting a random one."""
    metrics, _ = _metrics(attended=None)
    assert metrics["faithfulness/deletion_top1"] == pytest.approx(metrics["faithfulness/deletion_random1"], abs=0.1)
    assert abs(metrics["faithfulness/deletion_aopc_gain"]) < 0.05
    assert "faithfulness/occlusion_spearman" not in metrics  # undefined for constant attention


def test_uniform_attention_is_not_occluded_at_all():
    """Occlusion serves a rank correlation that constant attention cannot have: no occluded input
    reaches the model (MiniRocket on a long series spent minutes on them)."""
    from pipeline.core.faithfulness import Task, occlusion_spearman

    x, y = _data(8)
    batches = []

    def counted(inputs):
        batches.append(len(inputs))
        return _model(None).run(inputs)

    attention = distinct_weights(_model(None).run(x)["attention"])
    assert np.isnan(occlusion_spearman(counted, Task("binary", y), x, attention, np.zeros(1, np.float32), 64))
    assert batches == [8]  # the intact inputs only


def test_uniform_attention_over_windows_of_unequal_size_has_no_rank_correlation():
    """156 steps in 64 windows of 2 or 3 steps: float32 means of the same weight 1/156 over them
    differ in the last bits, which must not pass for an order that correlates with occlusion."""
    from pipeline.core.faithfulness import Task, occlusion_spearman

    steps = 156
    x = np.random.default_rng(0).uniform(0.1, 0.9, (4, steps, 1)).astype(np.float32)
    x[:, USED, 0] = [2.0, -2.0, 2.0, -2.0]

    def uniform(inputs):  # only step USED decides; attention 1/156 everywhere
        logit = 5 * inputs[:, USED, 0]
        return {
            "prediction": (1 / (1 + np.exp(-logit)))[:, None].astype(np.float32),
            "attention": np.full((len(inputs), steps), 1 / steps, np.float32),
        }

    attention = distinct_weights(uniform(x)["attention"])
    y = np.array([[1.0], [0.0], [1.0], [0.0]], np.float32)
    assert np.isnan(occlusion_spearman(uniform, Task("binary", y), x, attention, np.zeros(1, np.float32), 64))


def test_ranks_break_ties_by_the_tie_break_and_put_padding_last():
    scores = np.array([[0.5, 0.2, 0.5, 0.9]])
    valid = np.array([[True, True, True, False]])
    assert ranks(scores, valid).tolist() == [[0, 2, 1, 3]]
    assert ranks(scores, valid, tie_break=np.array([[0.9, 0.0, 0.1, 0.0]])).tolist() == [[1, 2, 0, 3]]


def test_random_deletions_are_reproducible_by_seed():
    first, _ = _metrics(attended=USED)
    again, _ = _metrics(attended=USED)
    assert first == again


def test_baselines_and_deletion_skip_padding():
    train = np.array(
        [
            [[1.0, 10.0], [3.0, 30.0], [PAD_VALUE, PAD_VALUE]],
            [[5.0, 50.0], [PAD_VALUE, PAD_VALUE], [PAD_VALUE, PAD_VALUE]],
        ],
        np.float32,
    )
    assert baseline_values("mean", train).tolist() == [3.0, 30.0]  # padded steps left out
    assert baseline_values("zero", train).tolist() == [0.0, 0.0]
    assert baseline_values("pad", train).tolist() == [PAD_VALUE, PAD_VALUE]
    assert baseline_values("mean", np.array([[1.0, 2.0], [3.0, 6.0]])).tolist() == [2.0, 4.0]
    with pytest.raises(ValueError, match="baseline must be one of"):
        baseline_values("median", train)
    assert valid_positions(train).tolist() == [[True, True, False], [True, False, False]]
    deleted = delete(train, np.array([[True, False, False], [False, False, False]]), np.array([7.0, 8.0]))
    assert deleted[0, 0].tolist() == [7.0, 8.0] and deleted[0, 1].tolist() == [3.0, 30.0]
    assert np.array_equal(deleted[1], train[1])


def test_deletions_never_touch_padded_steps():
    """On padded inputs the curve deletes only valid steps: keeping every valid step but the top
    ones leaves padding as it was."""
    x, y = _data(8)
    x[:, 4:] = PAD_VALUE
    calls = []

    def model(batch):
        calls.append(batch.copy())
        return _model(USED).run(batch)

    faithfulness_metrics(
        model,
        "binary",
        x,
        y,
        np.zeros(1, np.float32),
        fractions=[0.5],
        random_draws=2,
        segments=64,
        occlusion_samples=8,
        seed=0,
    )
    for batch in calls:
        assert (batch[:, 4:] == PAD_VALUE).all()


def test_pad_baseline_needs_variable_length_data():
    from pipeline.core.config import ConfigError
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError, match="evaluate.baseline=pad .*fixed-length"):
        tiny_config("evaluate.baseline=pad")
    assert tiny_config("evaluate.baseline=pad", "data=find_max", "data.min_length=5").evaluate.baseline == "pad"


@pytest.mark.integration
def test_a_trained_planted_task_model_fails_without_its_top_attended_position(tmp_path):
    """Feature attention trained briefly on planted_feature: deleting each sample's most
    attended feature leaves about chance, deleting a random one barely matters, and uniform
    attention loses most of the accuracy (the metrics as evaluate writes them, on the exported
    model)."""
    import json

    from pipeline.core import stage
    from tests.conftest import stages_run

    with stages_run(
        tmp_path,
        "experiment=dense_attention",
        "data.n_samples=12000",
        "train.epochs=10",
        "evaluate.occlusion_samples=20",
    ):
        metrics = json.loads(stage.METRICS_FILE.read_text())
    assert metrics["test/accuracy"] > 0.95 and metrics["attention/argmax_hit"] > 0.9, metrics
    assert metrics["faithfulness/deletion_top1"] < 0.65
    assert metrics["faithfulness/deletion_random1"] > 0.9
    assert metrics["faithfulness/deletion_aopc_gain"] > 0.2
    assert metrics["faithfulness/uniform_drop"] > 0.2


def test_float32_noise_on_uniform_weights_orders_nothing():
    rng = np.random.default_rng(1)
    uniform = np.full((4, 427), 1 / 427, np.float32) * (1 + rng.normal(0, 1e-7, (4, 427))).astype(np.float32)
    assert np.ptp(uniform) > 0 and np.ptp(distinct_weights(uniform)) == 0
