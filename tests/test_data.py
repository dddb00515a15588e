"""Task generators and the prepare stage: planted positions, shapes, determinism, splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import data
from pipeline.core import stage
from pipeline.core.contract import PAD_VALUE
from pipeline.data import splits
from tests.conftest import run_stage, tiny_config


def test_planted_feature_puts_the_target_at_its_index():
    ds = data.planted_feature(500, 32, 1, np.random.default_rng(0))
    assert ds.x.shape == (500, 32) and ds.x.dtype == np.float32
    assert ds.y.shape == (500, 1) and set(np.unique(ds.y)) == {0.0, 1.0}
    np.testing.assert_array_equal(ds.x[:, 1], ds.y[:, 0])
    assert (ds.target_positions == 1).all() and ds.target_positions.shape == (500, 1)
    others = np.delete(ds.x, 1, axis=1)
    assert abs(others.mean()) < 0.05 and abs(others.std() - 1) < 0.05  # standard normal noise


def test_planted_step_puts_the_target_on_every_feature_of_its_step():
    ds = data.planted_step(400, 20, 2, 10, np.random.default_rng(0))
    assert ds.x.shape == (400, 20, 2)
    np.testing.assert_array_equal(ds.x[:, 10, :], np.repeat(ds.y, 2, axis=1))
    assert (ds.target_positions == 10).all()
    noise = np.delete(ds.x, 10, axis=1)
    # no other step is a copy of the target
    assert not np.any(np.all(noise == ds.y[:, None, :], axis=2).all(axis=0))


def test_find_max_targets_the_maximum_at_its_argmax():
    ds = data.find_max(300, 20, np.random.default_rng(0))
    assert ds.x.shape == (300, 20, 1) and ds.y.shape == (300, 1)
    np.testing.assert_array_equal(ds.y[:, 0], ds.x[:, :, 0].max(axis=1))
    np.testing.assert_array_equal(ds.target_positions[:, 0], ds.x[:, :, 0].argmax(axis=1))
    assert np.median(ds.x) < 0.05, "Beta(1/T, 1) is mostly near zero"


def test_add_two_numbers_targets_the_mean_after_the_two_delimiters():
    ds = data.add_two_numbers(500, 20, np.random.default_rng(0))
    values = ds.x[:, :, 0]
    assert ds.target_positions.shape == (500, 2)
    delimiters = np.argwhere(values == 0.0)
    assert len(delimiters) == 1000, "exactly two delimiters per sequence"
    np.testing.assert_array_equal(delimiters[:, 1].reshape(500, 2) + 1, ds.target_positions)
    after = np.take_along_axis(values, ds.target_positions, axis=1)
    assert (after > 0).all(), "a delimiter never follows a delimiter"
    np.testing.assert_allclose(ds.y[:, 0], after.mean(axis=1), rtol=1e-6)
    assert ds.target_positions.max() <= 19 and ds.target_positions.min() >= 1


@pytest.mark.parametrize("generator", [data.find_max, data.add_two_numbers])
def test_variable_length_tasks_pad_after_the_end_and_target_valid_steps(generator):
    ds = generator(400, 20, np.random.default_rng(0), 6)
    lengths = data.sequence_lengths(ds.x)
    assert lengths.min() == 6 and lengths.max() == 20
    steps = np.arange(20)[None, :]
    assert (ds.x[steps >= lengths[:, None]] == PAD_VALUE).all()
    assert (ds.x[steps < lengths[:, None]] != PAD_VALUE).all()
    assert (ds.target_positions < lengths[:, None]).all()
    values = np.take_along_axis(ds.x[:, :, 0], ds.target_positions, axis=1)
    np.testing.assert_allclose(ds.y[:, 0], values.mean(axis=1), rtol=1e-6)  # max is a mean of 1


def test_find_max_ignores_padding():
    ds = data.find_max(300, 20, np.random.default_rng(1), 2)
    valid = ds.x[:, :, 0] != PAD_VALUE
    np.testing.assert_array_equal(ds.y[:, 0], np.where(valid, ds.x[:, :, 0], -np.inf).max(axis=1))


def test_generators_are_deterministic_for_a_seed():
    a = data.planted_step(50, 20, 2, 10, np.random.default_rng(7))
    b = data.planted_step(50, 20, 2, 10, np.random.default_rng(7))
    c = data.planted_step(50, 20, 2, 10, np.random.default_rng(8))
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)


def test_split_sizes_are_disjoint_and_complete():
    ds = data.planted_feature(1000, 8, 3, np.random.default_rng(0))
    parts = data.split(ds, 0.1, 0.2, np.random.default_rng(1))
    assert {k: len(v) for k, v in parts.items()} == {"test": 200, "val": 100, "train": 700}
    rows = np.concatenate([p.x for p in parts.values()])
    assert len(np.unique(rows, axis=0)) == 1000


@pytest.mark.parametrize(
    "override, shape, axis, targets, task_type",
    [
        ("experiment=lstm_attention", [20, 2], "time", [10], "binary"),
        ("experiment=dense_attention", [32], "features", [1], "binary"),
        ("data=find_max", [20, 1], "time", None, "regression"),
        ("data=add_two_numbers", [20, 1], "time", None, "regression"),
    ],
)
def test_prepare_stage_writes_splits_and_meta(stage_dir, override, shape, axis, targets, task_type):
    stage_dir.write_params(override, "data.n_samples=300")
    run_stage("prepare")
    meta = json.loads(stage.META_FILE.read_text())
    assert meta["input_shape"] == shape and meta["attention_axis"] == axis
    assert meta["task_type"] == task_type
    if targets:
        assert meta["target_positions"] == targets
    assert meta["splits"] == {"test": 30, "val": 30, "train": 240}
    test = splits.load_split("test")
    assert list(test.x.shape[1:]) == shape and len(test) == 30
    first = stage.split_file("train").read_bytes()
    run_stage("prepare")
    assert stage.split_file("train").read_bytes() == first, "same seed, same bytes"


def test_load_split_refuses_pickles_and_names_the_file(stage_dir):
    path = stage.split_file("test")
    path.parent.mkdir(parents=True)
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1), target_positions=np.zeros(1))
    with pytest.raises(stage.StageFailed, match="data/prepared/test.npz: not a prepared split"):
        splits.load_split("test")
    with pytest.raises(stage.StageFailed, match="val.npz: not found"):
        splits.load_split("val")


def test_config_tasks_generate_their_shapes():
    cfg = tiny_config()
    ds = data.generate(cfg.data, np.random.default_rng(0))
    assert ds.x.shape == (300, 20, 2)
