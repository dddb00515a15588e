"""Stage `train`: fit the configured attention model, deterministically for a fixed seed on CPU.

    python -m pipeline.train          # reads params.yaml: seed, data, model, train, mlflow

Outputs: models/model.keras, reports/train.json, reports/history.csv, reports/mlflow_run.json.
Opens the pipeline's MLflow run: config params, per-epoch metrics, the Keras model.
"""

from __future__ import annotations

import csv
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline import stage, tracking  # noqa: E402
from pipeline.config import Config, flatten, load_config  # noqa: E402
from pipeline.models import TaskSpec, build_model  # noqa: E402
from pipeline.prepare import load_split  # noqa: E402

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": keras.optimizers.SGD,
}


def make_deterministic(seed: int) -> None:
    """Same seed, same numbers on CPU: seeded Python/NumPy/TF RNGs and deterministic TF ops."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs each epoch's loss and accuracy (train and val) to the active MLflow run."""

    def on_epoch_end(self, epoch, logs=None):
        tracking.log_metrics({f"epoch/{k}": v for k, v in (logs or {}).items()}, step=epoch)


# Loss and reported metric of each task type.
OBJECTIVES = {
    "binary": ("binary_crossentropy", "accuracy"),
    "regression": ("mse", "mae"),
    "multiclass": ("sparse_categorical_crossentropy", "accuracy"),
}
MIN_LEARNING_RATE_SHARE = 0.01  # learning-rate decay stops at this share of train.learning_rate


def validation_callbacks(cfg: Config) -> list[keras.callbacks.Callback]:
    """Early stopping on the validation loss (best weights restored) and learning-rate decay on
    its plateaus, as train.early_stopping_patience and train.lr_decay_patience ask."""
    callbacks = []
    if cfg.train.lr_decay_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            "val_loss", factor=0.5, patience=cfg.train.lr_decay_patience,
            min_lr=cfg.train.learning_rate * MIN_LEARNING_RATE_SHARE,
        ))
    if cfg.train.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            "val_loss", patience=cfg.train.early_stopping_patience, restore_best_weights=True,
        ))
    return callbacks


def fit(
    cfg: Config, model: keras.Model, task: TaskSpec, train, val, callbacks=()
) -> keras.callbacks.History:
    """Train the model's `prediction` head (cross-entropy, or mean squared error for regression
    tasks) on the training split, watching the validation split; the attention is learned only
    through the head."""
    trainer = keras.Model(model.input, model.output["prediction"], name=f"{model.name}_trainer")
    loss, metric = OBJECTIVES[task.task_type]
    trainer.compile(
        optimizer=OPTIMIZERS[cfg.train.optimizer](learning_rate=cfg.train.learning_rate),
        loss=loss,
        metrics=[metric],
    )
    return trainer.fit(
        train.x,
        train.y,
        validation_data=(val.x, val.y),
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        callbacks=[*validation_callbacks(cfg), *callbacks],
        verbose=2,
    )


def best_epoch(history: keras.callbacks.History) -> dict[str, float]:
    """The epoch of the lowest validation loss (the weights kept under early stopping)."""
    val_loss = history.history["val_loss"]
    best = min(range(len(val_loss)), key=val_loss.__getitem__)
    return {"train/best_epoch": best, "train/best_val_loss": float(val_loss[best])}


def write_history(history: keras.callbacks.History, path=stage.HISTORY_CSV) -> None:
    """reports/history.csv: one row per epoch, the columns DVC plots."""
    keys = sorted(history.history)
    with stage.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for epoch in range(len(history.epoch)):
            writer.writerow([epoch, *(f"{history.history[k][epoch]:.6f}" for k in keys)])


def main() -> None:
    cfg = load_config()
    train, val = load_split("train"), load_split("val")
    meta = stage.read_json(stage.META_FILE)
    task = TaskSpec.from_meta(meta)
    make_deterministic(cfg.seed)
    model = build_model(cfg.model, task)
    with tracking.start_pipeline_run(cfg, run_name=cfg.model.name):
        tracking.log_params(flatten({k: cfg.section(k) for k in ("data", "model", "train")}))
        tracking.log_params({"seed": cfg.seed, "param_count": model.count_params()})
        tracking.log_prepared_data([stage.split_file(s) for s in stage.SPLITS], cfg.data.name)
        if meta.get("labels"):
            tracking.log_labels(meta["labels"])
        started = time.perf_counter()
        history = fit(cfg, model, task, train, val, callbacks=[MlflowEpochLogger()])
        train_seconds = time.perf_counter() - started
        report = {
            "train/seconds": round(train_seconds, 3),
            "train/param_count": model.count_params(),
            "train/epochs": len(history.epoch),
            **{f"train/final_{k}": float(v[-1]) for k, v in history.history.items()},
            **best_epoch(history),
        }
        with stage.atomic_path(stage.KERAS_MODEL) as tmp_model:
            model.save(tmp_model)
        write_history(history)
        stage.write_json(stage.TRAIN_REPORT, report)
        tracking.log_metrics(report)
        tracking.log_artifacts([stage.KERAS_MODEL], artifact_path="keras_model")
        tracking.log_artifacts([stage.HISTORY_CSV], artifact_path="reports")
    print(f"trained {cfg.model.name} in {train_seconds:.1f}s: {report}")


if __name__ == "__main__":
    stage.run_stage(main)
