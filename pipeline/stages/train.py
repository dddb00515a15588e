"""Stage `train`: fit the configured attention model, deterministically for a fixed seed on CPU.

    python -m pipeline.stages.train          # reads params.yaml: seed, data, model, train, mlflow

Outputs: models/model.keras, reports/train.json, reports/history.csv, reports/mlflow_run.json.
Opens the pipeline's MLflow run: config params, per-epoch metrics, the Keras model.

The monitored loss is the validation loss, or the training loss where the data has no
validation split (a small training file); the learning rate halves on its plateaus, training
stops early on it, and the weights of its best epoch are kept. MiniRocket is fitted instead
(pipeline/models/minirocket.py).

Resumable: after every train.backup_every epochs the weights, the optimizer state and the epoch
number are backed up in .checkpoints/train/ (Keras BackupAndRestore), and the best epoch's weights
whenever it changes. A training process that is killed resumes from its last backup on the next
run with the same config and data,
and ends with the same result as an uninterrupted run: the order of each epoch's batches is drawn from (seed, epoch)
alone. Its outputs are written only at the end, so DVC never records a partial model.
"""

from __future__ import annotations

import csv
import time

import keras
import numpy as np
import tensorflow as tf

from pipeline import tracking
from pipeline.core import stage
from pipeline.core.config import Config, MiniRocketModel, flatten, load_config
from pipeline.core.digests import training_inputs_digest
from pipeline.core.errors import run_command
from pipeline.data.splits import load_split
from pipeline.models import TaskSpec, build_model
from pipeline.training import (
    BestWeights,
    MlflowEpochLogger,
    TrainingBackup,
    batch_size_for,
    distribution_strategy,
    epochs_for,
    fit,
    make_deterministic,
    monitored_loss,
    worker_of,
)


def write_history(history: dict[str, list[float]], path=stage.HISTORY_CSV) -> None:
    """reports/history.csv: one row per epoch, the columns DVC plots."""
    keys = sorted(history)
    with stage.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for epoch in range(len(history[keys[0]])):
            writer.writerow([epoch, *(f"{history[k][epoch]:.6f}" for k in keys)])


def train_by_gradient(
    cfg: Config, task: TaskSpec, train, val, backup: TrainingBackup, strategy: tf.distribute.Strategy
) -> tuple[keras.Model, dict, dict]:
    """Fit a Keras model of the config: (model, report, per-epoch history)."""
    with strategy.scope():
        model = build_model(cfg.model, task)
    tracking.log_params({"param_count": model.count_params()})
    best = BestWeights(monitored_loss(val), backup.folder, restore=cfg.train.ema_momentum is None)
    started = time.perf_counter()
    fit(
        cfg,
        model,
        task,
        train,
        val,
        strategy=strategy,
        callbacks=[backup, MlflowEpochLogger(), best, backup.keras_backup],
    )
    history = backup.history
    report = {
        "train/seconds": round(time.perf_counter() - started, 3),
        "train/param_count": model.count_params(),
        "train/epochs": len(history["loss"]),
        "train/epoch_limit": epochs_for(cfg.train, train),
        "train/batch_size": batch_size_for(cfg.train.batch_size, len(train)),
        "train/replicas": strategy.num_replicas_in_sync,
        **{f"train/final_{k}": v[-1] for k, v in history.items()},
        "train/best_epoch": best.best_epoch,
        f"train/best_{best.monitor}": best.best,
    }
    return model, report, history


def train_minirocket(cfg: Config, task: TaskSpec, train, val) -> tuple[keras.Model, dict, dict]:
    """Fit MiniRocket on the training and validation splits together (its ridge chooses its
    regularisation by cross-validation): (model, report, a one-row history)."""
    from pipeline.models.minirocket import fit_minirocket

    x, y = np.concatenate([train.x, val.x]), np.concatenate([train.y, val.y])
    started = time.perf_counter()
    model, fitted = fit_minirocket(cfg.model, task, x, y, cfg.seed)
    report = {
        "train/seconds": round(time.perf_counter() - started, 3),
        "train/param_count": model.get_layer("prediction").count_params(),
        "train/epochs": 0,
        **fitted,
    }
    return model, report, {"accuracy": [fitted["train/final_accuracy"]]}


def main() -> None:
    cfg = load_config()
    strategy = distribution_strategy(cfg.train)
    train, val = load_split("train"), load_split("val")
    meta = stage.read_json(stage.META_FILE)
    task = TaskSpec.from_meta(meta)
    make_deterministic(cfg.seed)
    backup = TrainingBackup(
        training_inputs_digest(cfg, [stage.split_file(s) for s in stage.SPLITS]), cfg.train.backup_every
    )
    with tracking.start_pipeline_run(cfg, run_name=cfg.model.name, resume=backup.mlflow_run):
        backup.record_mlflow_run(tracking.current_run())
        tracking.log_params(flatten({k: cfg.section(k) for k in ("data", "model", "train")}))
        tracking.log_params({"seed": cfg.seed})
        worker = worker_of(strategy)
        if worker:  # every worker records its run; the chief's (worker 0) is the one to keep
            tracking.set_tags({"train.worker": f"{worker[0]} of {worker[1]}"})
        tracking.log_prepared_data([stage.split_file(s) for s in stage.SPLITS], cfg.data.name)
        if meta.get("labels"):
            tracking.log_labels(meta["labels"])
        if isinstance(cfg.model, MiniRocketModel):
            model, report, history = train_minirocket(cfg, task, train, val)
        else:
            model, report, history = train_by_gradient(cfg, task, train, val, backup, strategy)
        with stage.atomic_path(stage.KERAS_MODEL) as tmp_model:
            model.save(tmp_model)
        write_history(history)
        stage.write_json(stage.TRAIN_REPORT, report)
        tracking.log_metrics(report)
        tracking.log_artifacts([stage.KERAS_MODEL], artifact_path="keras_model")
        tracking.log_artifacts([stage.HISTORY_CSV], artifact_path="reports")
    backup.finish()
    finals = ", ".join(
        f"{k.removeprefix('train/final_')} {v:.4g}"
        for k, v in report.items()
        if k.startswith("train/final_") and k != "train/final_learning_rate"
    )
    epochs = (
        f", {report['train/epochs']} of {report['train/epoch_limit']} epochs" if "train/epoch_limit" in report else ""
    )  # MiniRocket trains no epochs
    print(
        f"trained {cfg.model.name} in {report['train/seconds']:.1f}s{epochs}: {finals} "
        f"({stage.TRAIN_REPORT} has the rest)"
    )


if __name__ == "__main__":
    run_command(main)
