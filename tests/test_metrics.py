"""Attention and task metrics on arrays whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.metrics import attention_metrics, binary_task_metrics, regression_task_metrics


def test_attention_metrics_on_known_rows():
    attention = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1]])
    targets = np.array([[0], [2]])
    got = attention_metrics(attention, targets)
    assert got["attention/mass_at_target"] == pytest.approx((0.7 + 0.2) / 2)
    assert got["attention/argmax_hit"] == pytest.approx(0.5)
    assert got["attention/lift"] == pytest.approx(0.45 / 0.25)


def test_uniform_attention_has_lift_one_and_the_largest_entropy():
    attention = np.full((5, 20), 0.05)
    got = attention_metrics(attention, np.full((5, 1), 10))
    assert got["attention/lift"] == pytest.approx(1.0)
    assert got["attention/entropy"] == pytest.approx(np.log(20))


def test_one_hot_attention_has_zero_entropy():
    attention = np.eye(4)[[1, 2]]
    got = attention_metrics(attention, np.array([[1], [0]]))
    assert got["attention/entropy"] == pytest.approx(0.0, abs=1e-5)
    assert got["attention/argmax_hit"] == pytest.approx(0.5)


def test_two_true_positions_share_the_uniform_baseline():
    attention = np.array([[0.5, 0.5, 0.0, 0.0]])
    got = attention_metrics(attention, np.array([[0, 1]]))
    assert got["attention/mass_at_target"] == pytest.approx(1.0)
    assert got["attention/lift"] == pytest.approx(2.0)


def test_binary_task_metrics():
    prediction = np.array([[0.9], [0.2], [0.6], [0.4]])
    y = np.array([[1.0], [0.0], [0.0], [0.0]])
    got = binary_task_metrics(prediction, y)
    assert got["test/accuracy"] == pytest.approx(0.75)
    expected_loss = -np.mean(np.log([0.9, 0.8, 0.4, 0.6]))
    assert got["test/loss"] == pytest.approx(expected_loss)


def test_regression_task_metrics():
    got = regression_task_metrics(np.array([[0.5], [1.0]]), np.array([[0.0], [1.5]]))
    assert got == {"test/mae": pytest.approx(0.5), "test/loss": pytest.approx(0.25)}


def test_lift_uses_each_sequence_length():
    attention = np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    got = attention_metrics(attention, np.array([[0], [0]]), lengths=np.array([2, 4]))
    assert got["attention/lift"] == pytest.approx(1.0)  # both uniform over their valid steps


def test_top_k_and_above_uniform_precision_and_recall_of_a_region():
    # sample 1: the top 2 are {1, 2}, one inside the region {2, 3}; above 1/4: positions 1, 2
    # sample 2: the top 2 are {0, 1} = the region; above 1/4: position 0 only
    attention = np.array([[0.1, 0.4, 0.3, 0.2], [0.7, 0.2, 0.05, 0.05]])
    got = attention_metrics(attention, np.array([[2, 3], [0, 1]]))
    assert got["attention/topk_precision"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["attention/above_uniform_precision"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["attention/above_uniform_recall"] == pytest.approx((0.5 + 0.5) / 2)


def test_planted_region_boxes_are_the_true_positions():
    from pipeline.data import planted_region

    data = planted_region(200, 30, 2, 4, 3.0, np.random.default_rng(0))
    assert data.target_positions.shape == (200, 4)
    assert (np.diff(data.target_positions, axis=1) == 1).all() and data.target_positions.max() < 30
    inside = np.take_along_axis(data.x[:, :, 0], data.target_positions, axis=1).mean(axis=1)
    sign = np.where(data.y[:, 0] == 1, 1, -1)
    assert (inside * sign > 1.0).mean() > 0.95  # the box carries the label: +3 or -3 over unit noise
    assert len(np.unique(data.target_positions[:, 0])) > 10  # the box moves
