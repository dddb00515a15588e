"""Fitting a model of the pipeline: the optimizer and loss of its task, the batches and epochs of
the recipe, one process or several workers under a tf.distribute strategy."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.core import stage
from pipeline.core.config import Config, TrainConfig
from pipeline.core.contract import TASK_TYPES
from pipeline.core.errors import ConfigError, StageFailed
from pipeline.models import TaskSpec
from pipeline.training.callbacks import TrainingBackup, stopping_callbacks
from pipeline.training.inputs import EpochBatches

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": keras.optimizers.SGD,
}


def monitored_loss(val) -> str:
    """ "val_loss" where the data has a validation split, else "loss" (the training loss)."""
    return "val_loss" if len(val) else "loss"


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
        objective = TASK_TYPES[task.task_type]
        loss, metric = objective.loss, objective.metric
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
    objective = TASK_TYPES[task.task_type]  # per sample, (y_true, y_pred) -> [batch]
    per_sample_loss = getattr(keras.losses, objective.loss)  # the functions, not the Loss classes
    per_sample_metric = getattr(keras.metrics, objective.per_sample_metric)
    metric_name = objective.metric
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
