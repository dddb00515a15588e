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
import hashlib
import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from pipeline import tracking
from pipeline.core import stage
from pipeline.core.config import Config, MiniRocketModel, TrainConfig, flatten, load_config
from pipeline.core.errors import ConfigError, StageFailed, run_command
from pipeline.data.splits import load_split
from pipeline.models import TaskSpec, build_model
from pipeline.training import EpochBatches, make_deterministic

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": keras.optimizers.SGD,
}


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs each epoch's loss and accuracy (train and val) to the active MLflow run."""

    def on_epoch_end(self, epoch, logs=None):
        tracking.log_metrics({f"epoch/{k}": v for k, v in (logs or {}).items()}, step=epoch)


# Loss and reported metric of each task type, as Keras's compile names them.
OBJECTIVES = {
    "binary": ("binary_crossentropy", "accuracy"),
    "regression": ("mse", "mae"),
    "multiclass": ("sparse_categorical_crossentropy", "accuracy"),
}
# The same loss and metric per sample, (y_true, y_pred) -> [batch], for the training loop
# written out for several workers (fit_across_workers).
PER_SAMPLE_OBJECTIVES = {
    "binary": (keras.losses.binary_crossentropy, keras.metrics.binary_accuracy),
    "regression": (keras.losses.mean_squared_error, keras.metrics.mean_absolute_error),
    "multiclass": (keras.losses.sparse_categorical_crossentropy, keras.metrics.sparse_categorical_accuracy),
}


def monitored_loss(val) -> str:
    """ "val_loss" where the data has a validation split, else "loss" (the training loss)."""
    return "val_loss" if len(val) else "loss"


def stopping_callbacks(cfg: TrainConfig, monitor: str, epochs: int) -> list[keras.callbacks.Callback]:
    """The learning-rate schedule of train.lr_schedule over `epochs` epochs (the epoch limit) and
    early stopping (train.early_stopping_patience epochs without a fall of train.min_delta);
    `BestWeights` restores the best epoch's weights either way."""
    callbacks = []
    if cfg.lr_schedule == "cosine":
        callbacks.append(
            keras.callbacks.LearningRateScheduler(lambda epoch, _: cosine_learning_rate(cfg, epoch, epochs))
        )
    elif cfg.lr_decay_patience:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor,
                factor=0.5,
                patience=cfg.lr_decay_patience,
                min_lr=cfg.min_learning_rate,
            )
        )  # a plateau: no fall of 1e-4 (Keras's min_delta)
    if cfg.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor, patience=cfg.early_stopping_patience, min_delta=cfg.min_delta)
        )
    return callbacks


def cosine_learning_rate(cfg: TrainConfig, epoch: int, epochs: int) -> float:
    """train.learning_rate at the first epoch, falling along half a cosine to
    train.min_learning_rate at the last of `epochs`."""
    progress = epoch / max(epochs - 1, 1)
    return cfg.min_learning_rate + (cfg.learning_rate - cfg.min_learning_rate) * (1 + math.cos(math.pi * progress)) / 2


def batch_size_for(requested: int, n_series: int) -> int:
    """The batch size used: `requested`, but at most a tenth of the training series and at
    least 2 (Fawaz et al. 2019), so that a small training set still takes ten steps an epoch."""
    return max(2, min(requested, n_series // 10))


def epochs_for(cfg: TrainConfig, train) -> int:
    """The epochs to train: train.epochs, or fewer where train.max_series_steps ends training
    first; train.x [series, time, features] (or [series, features]: one step). At least one."""
    if cfg.max_series_steps is None:
        return cfg.epochs
    series_steps = len(train) * int(np.prod(train.x.shape[1:-1]))
    return max(1, min(cfg.epochs, cfg.max_series_steps // series_steps))


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the lowest `monitor` and, with `restore`, puts them
    back when training ends, whether it stopped early or ran all its epochs (without, the model
    keeps the weights training ended with: the moving average of train.ema_momentum). The best
    weights and their epoch live in `folder` (the training backup), so a resumed training still
    knows them."""

    def __init__(self, monitor: str, folder, restore: bool = True):
        super().__init__()
        self.monitor = monitor
        self.restore = restore
        self.weights_file = folder / "best.weights.h5"
        self.record_file = folder / "best.json"
        record = json.loads(self.record_file.read_text()) if self.record_file.exists() else {}
        self.best_epoch = record.get("epoch", -1)
        self.best = record.get("value", float("inf"))

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {})[self.monitor])
        if value < self.best:
            self.best, self.best_epoch = value, epoch
            partial = self.weights_file.with_name("best.partial.weights.h5")
            self.model.save_weights(str(partial))
            os.replace(partial, self.weights_file)
            stage.write_json(self.record_file, {"epoch": epoch, "value": value, "monitor": self.monitor})

    def on_train_end(self, logs=None):
        if self.restore and self.weights_file.exists():
            self.model.load_weights(str(self.weights_file))


def distribution_strategy(cfg: TrainConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy of train.strategy. Call before TensorFlow runs any op: the
    logical CPU devices of `mirrored` without GPUs must be set up first, and `multi_worker`
    connects to the other workers that TF_CONFIG names (it waits for them)."""
    if cfg.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cfg.strategy == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cfg.cpu_replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cfg.cpu_replicas)])
    return tf.distribute.get_strategy()  # the default: no distribution


def worker_of(strategy: tf.distribute.Strategy) -> tuple[int, int] | None:
    """(this worker's index, the number of workers) under MultiWorkerMirroredStrategy, else None."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = strategy.cluster_resolver
    return resolver.task_id, max(1, len(resolver.cluster_spec().as_dict().get("worker", [])))


def fit(
    cfg: Config,
    model: keras.Model,
    task: TaskSpec,
    train,
    val,
    callbacks=(),
    strategy: tf.distribute.Strategy | None = None,
) -> keras.callbacks.History:
    """Train the model's `prediction` head (cross-entropy, or mean squared error for regression
    tasks) on the training split, watching the validation split if there is one (`val` may be
    empty); the attention is learned only through the head. `callbacks` come after the batches
    and the learning-rate and stopping rules. Under a distribution strategy, `model` must have
    been built in its scope."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        trainer = keras.Model(model.input, model.output["prediction"], name=f"{model.name}_trainer")
        loss, metric = OBJECTIVES[task.task_type]
        averaging = {} if cfg.train.ema_momentum is None else {"use_ema": True, "ema_momentum": cfg.train.ema_momentum}
        trainer.compile(
            optimizer=OPTIMIZERS[cfg.train.optimizer](learning_rate=cfg.train.learning_rate, **averaging),
            loss=loss,
            metrics=[metric],
        )
    batch_size = batch_size_for(cfg.train.batch_size, len(train))
    if batch_size < strategy.num_replicas_in_sync:
        raise ConfigError(
            f"train.batch_size: a batch of {batch_size} series cannot be split over "
            f"{strategy.num_replicas_in_sync} replicas; train with fewer replicas or more data"
        )
    if cfg.train.window_slice and train.x.ndim != 3:
        raise ConfigError(
            f"train.window_slice={cfg.train.window_slice}: slices series [n, time, channels]; "
            f"this data's x is {list(train.x.shape)}, with no time axis; set it to null"
        )
    batches = EpochBatches(train.x, train.y, batch_size, cfg.seed, cfg.train.window_slice, task.padded)
    validation = None
    if len(val):
        validation = tf.data.Dataset.from_tensor_slices((val.x, val.y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    epochs = epochs_for(cfg.train, train)
    callbacks = [batches, *stopping_callbacks(cfg.train, monitored_loss(val), epochs), *callbacks]
    if worker_of(strategy):
        return fit_across_workers(trainer, task, batches, validation, epochs, callbacks, strategy)
    return trainer.fit(
        batches.dataset(),
        validation_data=validation,
        epochs=epochs,
        shuffle=False,  # EpochBatches shuffles, by (seed, epoch)
        callbacks=callbacks,
        verbose=2,
    )


def fit_across_workers(
    trainer: keras.Model,
    task: TaskSpec,
    batches: EpochBatches,
    validation: tf.data.Dataset | None,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
    strategy: tf.distribute.MultiWorkerMirroredStrategy,
) -> keras.callbacks.History:
    """Keras's `fit` written out for MultiWorkerMirroredStrategy, where Keras 3's own fails
    (keras-team/keras#20585). Each of the epoch's batches is split over the replicas of all
    workers; each replica's loss is its share of the batch's mean loss, so the optimizer's
    all-reduce of the gradients gives the whole batch's gradient. The epoch's loss and metric are
    summed over the workers; the validation split is scored on each worker's copy of the model
    (the copies are equal). `trainer` was compiled in the strategy's scope; the callbacks see the
    epochs and logs that fit would give them, so every worker takes the same decisions."""
    per_sample_loss, per_sample_metric = PER_SAMPLE_OBJECTIVES[task.task_type]
    _, metric_name = OBJECTIVES[task.task_type]
    optimizer = trainer.optimizer
    with strategy.scope():
        optimizer.build(trainer.trainable_variables)

    def sums(x, y, training: bool):
        """One part of a batch, x [part, ...], y [part, ...]: (the sum of its per-sample losses,
        the model's regularization loss, the sum of its per-sample metric, its size)."""
        prediction = trainer(x, training=training)
        if task.task_type != "multiclass":  # targets shaped as the predictions, [part, outputs]
            y = tf.reshape(tf.cast(y, prediction.dtype), tf.shape(prediction))
        penalty = tf.add_n(trainer.losses) if trainer.losses else tf.constant(0.0, prediction.dtype)
        metric = tf.cast(per_sample_metric(y, prediction), prediction.dtype)
        count = tf.cast(tf.shape(x)[0], prediction.dtype)
        return tf.reduce_sum(per_sample_loss(y, prediction)), penalty, tf.reduce_sum(metric), count

    def replica_step(x, y, batch_size):
        with tf.GradientTape() as tape:
            data_loss, penalty, metric, count = sums(x, y, training=True)
            replicas = tf.cast(strategy.num_replicas_in_sync, data_loss.dtype)
            share = data_loss / tf.cast(batch_size, data_loss.dtype) + penalty / replicas
        gradients = tape.gradient(share, trainer.trainable_variables)
        optimizer.apply_gradients(zip(gradients, trainer.trainable_variables))
        return tf.stack([data_loss + penalty * count, metric, count])

    @tf.function
    def train_step(part):
        return strategy.reduce("SUM", strategy.run(replica_step, args=part), axis=None)

    @tf.function
    def validation_step(x, y):
        data_loss, penalty, metric, count = sums(x, y, training=False)
        return tf.stack([data_loss + penalty * count, metric, count])

    def mean_logs(totals, prefix: str = "") -> dict[str, float]:
        loss, metric, count = (float(v) for v in totals)
        return {f"{prefix}loss": loss / count, f"{prefix}{metric_name}": metric / count}

    data = strategy.distribute_datasets_from_function(batches.replica_dataset)
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=True, verbose=2, epochs=epochs, steps=len(batches.bounds())
    )
    callback_list.set_model(trainer)
    trainer.stop_training = False
    callback_list.on_train_begin()
    logs: dict[str, float] = {}
    first_epoch = epoch_all_workers_resume_from(trainer, strategy, callbacks)
    for epoch in range(first_epoch, epochs):
        callback_list.on_epoch_begin(epoch)  # before the iterator: EpochBatches draws the epoch's order
        totals = np.zeros(3)
        for step, part in enumerate(data):
            callback_list.on_train_batch_begin(step)
            totals += train_step(part).numpy()
            callback_list.on_train_batch_end(step, mean_logs(totals))
        logs = mean_logs(totals)
        if validation is not None:
            logs |= mean_logs(sum(validation_step(x, y).numpy() for x, y in validation), prefix="val_")
        callback_list.on_epoch_end(epoch, logs)
        if trainer.stop_training:
            break
    optimizer.finalize_variable_values(trainer.trainable_variables)  # the moving average, as fit does
    callback_list.on_train_end(logs)
    return trainer.history


def epoch_all_workers_resume_from(
    trainer: keras.Model, strategy: tf.distribute.MultiWorkerMirroredStrategy, callbacks: list
) -> int:
    """The epoch every worker starts from, once each has restored its own backup (BackupAndRestore
    sets `_initial_epoch`, which fit reads too). A worker killed between the workers' saves of a
    backup is one backup (train.backup_every epochs) behind the others: those go back to their
    previous backup to meet it. Workers further apart cannot meet, and are refused."""
    backup = next(callback for callback in callbacks if isinstance(callback, TrainingBackup))
    own = getattr(trainer, "_initial_epoch", None) or 0
    values = strategy.experimental_distribute_values_from_function(lambda _: tf.constant([own], tf.int64))
    epochs = sorted(set(strategy.gather(values, axis=0).numpy().tolist()))
    if epochs[-1] - epochs[0] > backup.keras_backup.every:
        raise StageFailed(
            f"the workers' training backups are at epochs {epochs} and cannot resume together: "
            f"delete {stage.TRAIN_BACKUP_DIR} on every worker to train again from the start"
        )
    if own > epochs[0]:
        backup.step_back_to(trainer, epochs[0])
    return epochs[0]


def training_digest(cfg: Config) -> str:
    """sha256 of everything that decides the trained weights: seed, the data, model and train
    sections, and the prepared splits. A backup is resumed only by a run with the same digest."""
    digest = hashlib.sha256(
        json.dumps(
            {k: cfg.section(k) for k in ("data", "model", "train")} | {"seed": cfg.seed},
            sort_keys=True,
        ).encode()
    )
    for split in stage.SPLITS:
        digest.update(stage.split_file(split).read_bytes())
    return digest.hexdigest()


class PeriodicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras BackupAndRestore saving at the end of every `every`-th epoch only (epochs every,
    2 every, ...): the same epochs on every worker, so workers killed together are at most one
    backup apart."""

    def __init__(self, every: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.every = every

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            super().on_epoch_end(epoch, logs)


class TrainingBackup(keras.callbacks.Callback):
    """.checkpoints/train/ of an unfinished training: Keras BackupAndRestore's weights, optimizer
    state and epoch count, plus the per-epoch history and the MLflow run so far, so that a killed
    training resumes where it stopped. A backup made with another config or data (another
    `digest`) is discarded. Put it before the callbacks that log an epoch, and `keras_backup`
    after them."""

    def __init__(self, digest: str, every: int = 1):
        super().__init__()
        self.folder = stage.TRAIN_BACKUP_DIR
        owner = self.folder / "digest.txt"
        if self.folder.exists() and (not owner.exists() or owner.read_text() != digest):
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        owner.write_text(digest)
        self.keras_backup = PeriodicBackupAndRestore(
            every, str(self.folder), save_freq="epoch", delete_checkpoint=False, double_checkpoint=True
        )
        self.history: dict[str, list[float]] = self._read("history.json") or {}
        self.mlflow_run: dict | None = self._read("mlflow_run.json")

    def _read(self, name: str) -> dict | None:
        path = self.folder / name
        return json.loads(path.read_text()) if path.exists() else None

    def record_mlflow_run(self, run: dict) -> None:
        stage.write_json(self.folder / "mlflow_run.json", run)

    def on_train_begin(self, logs=None):
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch and epoch:
            print(f"resumed from {self.folder}: {epoch} of {self.params['epochs']} epochs were done")
        self._first_epoch = False
        self.history = {k: v[:epoch] for k, v in self.history.items()}  # epochs after the backup redo

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        stage.write_json(self.folder / "history.json", self.history)

    def step_back_to(self, model: keras.Model, epoch: int) -> None:
        """Go back to the previous backup, which BackupAndRestore keeps as *.bkp
        (double_checkpoint) and which must be of `epoch`: for a worker that saved an epoch the
        other workers did not. The later epoch's history and logs are redone."""
        previous = self._read("training_metadata.json.bkp") or {}
        if previous.get("epoch") != epoch:
            raise StageFailed(
                f"{self.folder}: the other workers resume from epoch {epoch}, and this worker has no "
                f"backup of it: delete {self.folder} on every worker to train again from the start"
            )
        for name in ("latest.weights.h5", "training_metadata.json"):
            shutil.copyfile(self.folder / f"{name}.bkp", self.folder / name)
        model.load_weights(str(self.folder / "latest.weights.h5"))
        model._initial_epoch = epoch
        print(f"{self.folder}: back to the backup of epoch {epoch}, where the other workers resume")

    def finish(self) -> None:
        """Training is complete and its outputs written: the next run starts from scratch."""
        shutil.rmtree(self.folder, ignore_errors=True)


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
    backup = TrainingBackup(training_digest(cfg), cfg.train.backup_every)
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
