"""The convergence rule of training: the stopping and decay callbacks follow the train config."""

from __future__ import annotations

import keras
import pytest

from pipeline.config import ConfigError
from pipeline.train import stopping_callbacks
from tests.conftest import tiny_config


def test_the_default_recipe_stops_on_converged_validation_loss():
    callbacks = stopping_callbacks(tiny_config().train, "val_loss")
    stop = next(c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping))
    decay = next(c for c in callbacks if isinstance(c, keras.callbacks.ReduceLROnPlateau))
    assert (stop.monitor, stop.patience, stop.min_delta) == ("val_loss", 8, 1e-4)
    assert (decay.patience, decay.min_lr) == (4, 1e-5)


def test_the_real_data_recipe_counts_any_fall_of_the_training_loss():
    callbacks = stopping_callbacks(tiny_config("train=ucr").train, "loss")
    stop = next(c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping))
    assert (stop.monitor, stop.patience, stop.min_delta) == ("loss", 100, 0.0)


def test_stopping_off_with_patience_zero_and_a_negative_delta_refused():
    assert stopping_callbacks(tiny_config("train.early_stopping_patience=0",
                                          "train.lr_decay_patience=0").train, "val_loss") == []
    with pytest.raises(ConfigError, match="min_delta"):
        tiny_config("train.min_delta=-0.1")


def test_a_series_step_budget_trains_long_or_large_sets_fewer_epochs():
    import numpy as np

    from pipeline.data.synthetic import Dataset
    from pipeline.train import epochs_for

    def split(series, steps):
        return Dataset(np.zeros((series, steps, 1), np.float32), np.zeros((series, 1), np.float32),
                       np.zeros((series, 0), np.int64))

    cfg = tiny_config("train.epochs=1000", "train.max_series_steps=1000000").train
    assert epochs_for(cfg, split(50, 150)) == 133  # 1e6 // (50 * 150)
    assert epochs_for(cfg, split(5, 10)) == 1000  # the budget would allow more: train.epochs
    assert epochs_for(cfg, split(1000, 2000)) == 1  # never no epoch
    assert epochs_for(tiny_config("train.epochs=7").train, split(1000, 2000)) == 7  # no budget
    with pytest.raises(ConfigError, match="max_series_steps"):
        tiny_config("train.max_series_steps=0")

