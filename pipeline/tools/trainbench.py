"""Training throughput of the series recipe's input pipelines, side by side in one run:

    python -m pipeline.tools.trainbench      # part of `make bench`; writes reports/trainbench.json

The attention model of `experiment=ucr` trains, with the training stage's determinism (seeded,
deterministic ops), on random series of OSULeaf's size (200 x 427, six classes) in batches of
16, fed by (a) EpochBatches.dataset(), the pipeline's input (the epoch's samples drawn at its
start into variables that TensorFlow cuts into batches), (b) tf.data's from_generator over the
same batches (the several-worker loop's input), and (c) a plain from_tensor_slices().batch()
with no per-epoch permutation, the floor. Each input trains in a process of its own (one input
can slow a process down for the rest of its life); the inputs take turns for ROUNDS rounds, and
the figure per input is the median of its epochs after each process's first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from pipeline.core import stage
from pipeline.core.errors import run_command

REPORT = stage.REPORTS / "trainbench.json"
SERIES, STEPS, CLASSES, BATCH = 200, 427, 6, 16
INPUTS = ("epoch_batches", "from_generator", "unshuffled_slices")
ROUNDS, EPOCHS = 3, 8


def epoch_seconds(input_name: str) -> list[float]:
    """Seconds of each epoch after the first, training on `input_name` in this process."""
    import keras
    import tensorflow as tf

    from pipeline.core.config import compose_defaults, validate
    from pipeline.models import TaskSpec, build_model
    from pipeline.training import EpochBatches, make_deterministic

    make_deterministic(1)
    cfg = validate(compose_defaults(overrides=["experiment=ucr"]), "conf/ (experiment=ucr)")
    task = TaskSpec((STEPS, 1), "multiclass", n_classes=CLASSES, normalization={"mode": "per_series"})
    draws = np.random.default_rng(0)
    x = draws.normal(size=(SERIES, STEPS, 1)).astype("float32")
    y = draws.integers(0, CLASSES, size=(SERIES, 1))
    model = build_model(cfg.model, task)
    trainer = keras.Model(model.input, model.output["prediction"])
    trainer.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    batches = EpochBatches(x, y, BATCH, seed=1)
    if input_name == "epoch_batches":
        dataset = batches.dataset()
    elif input_name == "from_generator":
        dataset = (
            tf.data.Dataset.from_generator(batches._batches, output_signature=batches._signature())
            .apply(tf.data.experimental.assert_cardinality(len(batches.bounds())))
            .prefetch(tf.data.AUTOTUNE)
        )
    else:
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).prefetch(tf.data.AUTOTUNE)
    seconds: list[float] = []
    clock = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seconds.append(-time.perf_counter()),
        on_epoch_end=lambda epoch, logs: seconds.__setitem__(-1, seconds[-1] + time.perf_counter()),
    )
    trainer.fit(dataset, epochs=EPOCHS, shuffle=False, callbacks=[batches, clock], verbose=0)
    return seconds[1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", choices=INPUTS, help="train on this input alone and print its epoch seconds")
    args = parser.parse_args(argv)
    if args.input:
        print(json.dumps(epoch_seconds(args.input)))
        return
    seconds = {name: [] for name in INPUTS}
    for _ in range(ROUNDS):
        for name in INPUTS:
            command = [sys.executable, "-m", "pipeline.tools.trainbench", "--input", name]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            seconds[name] += json.loads(output.strip().splitlines()[-1])
    per_epoch = {name: round(float(np.median(s)), 4) for name, s in seconds.items()}
    report = {
        "seconds_per_epoch": per_epoch,
        "epoch_batches_vs_from_generator": round(per_epoch["from_generator"] / per_epoch["epoch_batches"], 3),
        "series": SERIES,
        "steps": STEPS,
        "batch": BATCH,
        "rounds": ROUNDS,
        "epochs_per_process": EPOCHS,
    }
    stage.write_json(REPORT, report)
    for name, value in per_epoch.items():
        print(f"{name:20s} {value:8.3f} s/epoch")
    print(f"speed-up of epoch_batches over from_generator: {report['epoch_batches_vs_from_generator']:.2f}")
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    run_command(main)
