"""The convergence rule of training: the stopping and decay callbacks follow the train config."""

from __future__ import annotations

import itertools

import keras
import pytest

from pipeline.core.config import ConfigError
from pipeline.training import cosine_learning_rate, stopping_callbacks
from tests.conftest import tiny_config


def test_the_default_recipe_stops_on_converged_validation_loss():
    callbacks = stopping_callbacks(tiny_config().train, "val_loss", 100)
    stop = next(c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping))
    decay = next(c for c in callbacks if isinstance(c, keras.callbacks.ReduceLROnPlateau))
    assert (stop.monitor, stop.patience, stop.min_delta) == ("val_loss", 8, 1e-4)
    assert (decay.patience, decay.min_lr) == (4, 1e-5)


def test_the_real_data_recipe_counts_any_fall_of_the_training_loss():
    callbacks = stopping_callbacks(tiny_config("train=ucr").train, "loss", 1000)
    stop = next(c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping))
    assert (stop.monitor, stop.patience, stop.min_delta) == ("loss", 100, 0.0)


def test_stopping_off_with_patience_zero_and_a_negative_delta_refused():
    assert (
        stopping_callbacks(
            tiny_config("train.early_stopping_patience=0", "train.lr_decay_patience=0").train, "val_loss", 100
        )
        == []
    )
    with pytest.raises(ConfigError, match="min_delta"):
        tiny_config("train.min_delta=-0.1")


def test_a_series_step_budget_trains_long_or_large_sets_fewer_epochs():
    import numpy as np

    from pipeline.data.synthetic import Dataset
    from pipeline.training import epochs_for

    def split(series, steps):
        return Dataset(
            np.zeros((series, steps, 1), np.float32), np.zeros((series, 1), np.float32), np.zeros((series, 0), np.int64)
        )

    cfg = tiny_config("train.epochs=1000", "train.max_series_steps=1000000").train
    assert epochs_for(cfg, split(50, 150)) == 133  # 1e6 // (50 * 150)
    assert epochs_for(cfg, split(5, 10)) == 1000  # the budget would allow more: train.epochs
    assert epochs_for(cfg, split(1000, 2000)) == 1  # never no epoch
    assert epochs_for(tiny_config("train.epochs=7").train, split(1000, 2000)) == 7  # no budget
    with pytest.raises(ConfigError, match="max_series_steps"):
        tiny_config("train.max_series_steps=0")


def test_the_cosine_schedule_ends_at_the_least_rate_on_the_last_epoch_the_run_may_train():
    cfg = tiny_config(
        "train.lr_schedule=cosine",
        "train.lr_decay_patience=0",
        "train.learning_rate=0.001",
        "train.min_learning_rate=0.0001",
    ).train
    rates = [cosine_learning_rate(cfg, epoch, 205) for epoch in range(205)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)
    assert rates[102] == pytest.approx(5.5e-4)  # halfway: the mean of the two
    assert all(a > b for a, b in itertools.pairwise(rates))
    (scheduler,) = (c for c in stopping_callbacks(cfg, "loss", 205) if not isinstance(c, keras.callbacks.EarlyStopping))
    assert isinstance(scheduler, keras.callbacks.LearningRateScheduler)
    assert scheduler.schedule(204, 1e-3) == pytest.approx(1e-4)
    assert cosine_learning_rate(cfg, 0, 1) == pytest.approx(1e-3)  # one epoch: the starting rate


def test_cosine_with_a_plateau_patience_is_refused():
    with pytest.raises(ConfigError, match="lr_decay_patience=4 .* lr_schedule=cosine set it to 0"):
        tiny_config("train.lr_schedule=cosine")


@pytest.mark.integration
def test_with_an_ema_momentum_the_model_keeps_the_moving_average_of_its_weights(tmp_path):
    """A momentum near 1 holds the average at the weights of the first step: the kept weights
    stay by the initial ones, while plain training keeps its best epoch's, far from them."""
    import numpy as np

    from pipeline.data.synthetic import Dataset
    from pipeline.models import TaskSpec, build_model
    from pipeline.training import BestWeights, fit, make_deterministic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 20, 2)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1, keepdims=True) > 0).astype(np.float32)
    train, val = Dataset(x, y, np.zeros((40, 0), np.int64)), Dataset(x[:0], y[:0], np.zeros((0, 0), np.int64))
    task = TaskSpec((20, 2), "binary")

    def distance_from_start(*overrides):
        cfg = tiny_config("train.epochs=4", "train.learning_rate=0.05", *overrides)
        make_deterministic(cfg.seed)
        model = build_model(cfg.model, task)
        start = [w.copy() for w in model.get_weights()]
        best = BestWeights("loss", tmp_path / "-".join(overrides or ("plain",)), restore=cfg.train.ema_momentum is None)
        best.weights_file.parent.mkdir()
        fit(cfg, model, task, train, val, callbacks=[best])
        assert best.weights_file.exists()  # the best epoch was recorded either way
        return max(float(np.abs(a - b).max()) for a, b in zip(start, model.get_weights()))

    plain, averaged = distance_from_start(), distance_from_start("train.ema_momentum=0.999999")
    assert averaged < 0.2 * plain, (averaged, plain)
    with pytest.raises(ConfigError, match="ema_momentum"):
        tiny_config("train.ema_momentum=1")
