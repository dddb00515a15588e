"""Models on real series: preprocessing carried inside the model (and so inside the ONNX graph),
multiclass heads, masked convolutions, and the stages on a bundled UCR/UEA data set."""

from __future__ import annotations

import csv
import json

import keras
import mlflow
import numpy as np
import pytest

from pipeline.core import stage
from pipeline.core.contract import PAD_VALUE
from pipeline.data.splits import prepared
from pipeline.models import TaskSpec, build_model
from pipeline.models.layers import Standardize
from pipeline.onnx.conversion import to_onnx
from pipeline.serving.inference import OnnxModel
from tests.conftest import parity, tiny_config

SMALL_CONV = ("model=conv_attention", "model.filters=[8,8]", "model.kernel_sizes=[5,3]")


@pytest.mark.numeric
def test_standardize_per_series_uses_valid_steps_only_and_zeroes_padding():
    x = np.array([[[1.0], [3.0], [PAD_VALUE]], [[2.0], [2.0], [2.0]]], dtype="float32")
    mask = np.array([[True, True, False], [True, True, True]])
    out = np.asarray(Standardize("per_series")(x, mask=mask))
    np.testing.assert_allclose(out[0, :, 0], [-1.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)  # a constant series maps to 0, not NaN


@pytest.mark.numeric
def test_standardize_per_channel_applies_the_fitted_statistics():
    x = np.random.default_rng(0).normal(5.0, 2.0, size=(4, 6, 2)).astype("float32")
    out = np.asarray(Standardize("per_channel", mean=[5.0, 1.0], std=[2.0, 4.0])(x))
    np.testing.assert_allclose(out, (x - [5.0, 1.0]) / [2.0, 4.0], rtol=1e-5, atol=1e-6)


def test_standardize_refuses_inconsistent_arguments():
    with pytest.raises(ValueError, match="per_channel"):
        Standardize("per_series", mean=[0.0], std=[1.0])
    with pytest.raises(ValueError, match="positive std"):
        Standardize("per_channel", mean=[0.0], std=[0.0])
    with pytest.raises(ValueError, match="mode must be one of"):
        Standardize("minmax")


@pytest.fixture(scope="module")
def japanese_vowels_model():
    """A small conv_attention model on JapaneseVowels (12 channels, 7 to 29 steps, 9 classes),
    per-channel normalization fitted on the training split, untrained."""
    cfg = tiny_config("data=ucr", "data.name=JapaneseVowels", "data.normalization=per_channel", *SMALL_CONV)
    splits, meta = prepared(cfg)
    keras.utils.set_random_seed(7)
    model = build_model(cfg.model, TaskSpec.from_meta(meta))
    return model, to_onnx(model, 17), splits["test"].x[:40], meta


@pytest.mark.numeric
def test_onnx_on_raw_series_matches_keras_on_raw_series(japanese_vowels_model):
    model, onnx_model, x, meta = japanese_vowels_model
    assert meta["padded"] and meta["normalization"]["mode"] == "per_channel"
    assert x.max() > 1.5, "the inputs are raw, not normalised"
    assert max(parity(model, OnnxModel(onnx_model.SerializeToString()), x).values()) <= 1e-5
    outputs = OnnxModel(onnx_model.SerializeToString()).run(x)
    assert outputs["prediction"].shape == (40, 9)
    np.testing.assert_allclose(outputs["prediction"].sum(axis=1), 1.0, atol=1e-5)
    assert (outputs["attention"][(x == PAD_VALUE).all(axis=2)] == 0).all()


@pytest.mark.numeric
def test_extra_padding_changes_nothing(japanese_vowels_model):
    _model, onnx_model, x, _ = japanese_vowels_model
    longer = np.concatenate([x, np.full((len(x), 11, x.shape[2]), PAD_VALUE, "float32")], axis=1)
    runtime = OnnxModel(onnx_model.SerializeToString())
    short_out, long_out = runtime.run(x), runtime.run(longer)
    np.testing.assert_allclose(long_out["prediction"], short_out["prediction"], atol=1e-6)
    np.testing.assert_allclose(long_out["attention"][:, : x.shape[1]], short_out["attention"], atol=1e-6)


def test_the_normalization_is_inside_the_model(japanese_vowels_model):
    """The statistics fitted on the training split live in the model's own first layer."""
    model, _, _x, meta = japanese_vowels_model
    layer = model.get_layer("standardize")
    assert layer.mode == "per_channel" and layer.mean == pytest.approx(meta["normalization"]["mean"])


@pytest.fixture
def ucr_pipeline_run(trained_runs, tmp_path):
    """prepare, train, export, evaluate on BasicMotions (6 channels, 4 named classes)."""
    return trained_runs.copy(
        tmp_path,
        "data=ucr",
        "data.name=BasicMotions",
        "data.normalization=per_channel",
        *SMALL_CONV,
        "train.epochs=3",
        "train.early_stopping_patience=2",
    )


@pytest.mark.integration
def test_ucr_stages_carry_labels_and_preprocessing_to_onnx_and_mlflow(ucr_pipeline_run, monkeypatch):
    monkeypatch.chdir(ucr_pipeline_run)
    labels = ["Badminton", "Running", "Standing", "Walking"]
    metadata = OnnxModel(stage.ONNX_MODEL).metadata
    assert json.loads(metadata["labels"]) == labels and metadata["task_type"] == "multiclass"
    preprocessing = json.loads(metadata["preprocessing"])
    assert preprocessing["mode"] == "per_channel" and len(preprocessing["mean"]) == 6
    metrics = json.loads(stage.METRICS_FILE.read_text())
    assert {"test/accuracy", "test/balanced_accuracy", "test/loss", "attention/entropy"} <= set(metrics)
    assert "attention/lift" not in metrics, "no true positions in real data"
    with open(stage.PREDICTIONS_CSV) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and {r["actual"] for r in rows} == set(labels)
    assert {r["predicted"] for r in rows} <= set(labels)
    run_id = json.loads(stage.MLFLOW_RUN_FILE.read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{ucr_pipeline_run / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert run.data.tags["labels"] == ",".join(labels)
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/labels.json") == {"labels": labels}
    assert run.data.params["data.name"] == "BasicMotions"


@pytest.mark.integration
def test_a_small_set_trains_on_every_series_and_keeps_its_lowest_training_loss(ucr_pipeline_run, monkeypatch):
    """BasicMotions has 40 training series (< data.val_min_series): no validation split, the
    training loss decides, and the batch is a tenth of the series."""
    monkeypatch.chdir(ucr_pipeline_run)
    with open(stage.HISTORY_CSV) as handle:
        history = list(csv.DictReader(handle))
    report = json.loads(stage.TRAIN_REPORT.read_text())
    assert 1 <= report["train/epochs"] <= 3 and len(history) == report["train/epochs"]
    assert "val_loss" not in history[0] and "train/best_val_loss" not in report
    losses = [float(r["loss"]) for r in history]
    assert report["train/best_epoch"] == losses.index(min(losses))
    assert report["train/best_loss"] == pytest.approx(min(losses), rel=1e-4)
    assert report["train/batch_size"] == 4
    assert json.loads(stage.META_FILE.read_text())["splits"] == {"train": 40, "val": 0, "test": 40}
