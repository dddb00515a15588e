"""The callbacks of training: MLflow's per-epoch log, the learning-rate and stopping rules, the
best epoch's weights, and the backup that lets a killed training resume where it stopped."""

from __future__ import annotations

import json
import math
import os
import shutil

import keras

from pipeline import tracking
from pipeline.core import stage
from pipeline.core.config import TrainConfig
from pipeline.core.errors import StageFailed


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs each epoch's loss and accuracy (train and val) to the active MLflow run."""

    def on_epoch_end(self, epoch, logs=None):
        tracking.log_metrics({f"epoch/{k}": v for k, v in (logs or {}).items()}, step=epoch)


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
