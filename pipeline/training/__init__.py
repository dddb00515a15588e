"""Training, the library the train stage runs: deterministic inputs (inputs), the callbacks
(callbacks) and fitting in one process or across workers (fitting)."""

from pipeline.training.callbacks import (
    BestWeights,
    MlflowEpochLogger,
    PeriodicBackupAndRestore,
    TrainingBackup,
    cosine_learning_rate,
    stopping_callbacks,
)
from pipeline.training.fitting import (
    batch_size_for,
    distribution_strategy,
    epochs_for,
    fit,
    fit_across_workers,
    monitored_loss,
    worker_of,
)
from pipeline.training.inputs import EpochBatches, make_deterministic, window_slices

__all__ = [
    "BestWeights",
    "EpochBatches",
    "MlflowEpochLogger",
    "PeriodicBackupAndRestore",
    "TrainingBackup",
    "batch_size_for",
    "cosine_learning_rate",
    "distribution_strategy",
    "epochs_for",
    "fit",
    "fit_across_workers",
    "make_deterministic",
    "monitored_loss",
    "stopping_callbacks",
    "window_slices",
    "worker_of",
]
